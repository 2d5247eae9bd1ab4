"""selfsup in the train step: λ = 0 is the base loss exactly, λ > 0 adds λ·degree, the classify head trains."""

import dataclasses
import types

import jax
import numpy as np
import pytest

from jaxspo.checkpoint import PhaseCheckpoints
from jaxspo.config import CheckpointConfig
from jaxspo.data.degrade import Degrader, degraded_arrays, response_ids
from jaxspo.losses.selfsup import SelfsupConfig
from jaxspo.objectives import build_objective, selfsup
from jaxspo.train.initialise import initialise
from jaxspo.lora.views import as_model
from jaxspo.train.state import abstract_model
from tests.test_train_step import random_pairs, tiny_config, tiny_model

MESH = {"data": 2, "fsdp": 2, "tensor": 2}
TOKENS = types.SimpleNamespace(eos_token_id=2, pad_token_id=0)  # random_pairs' responses carry no EOS


def pairs_with_copies(batch: int, sides=("chosen",), seed: int = 0) -> dict[str, np.ndarray]:
    host = random_pairs(batch, seed=seed)
    corpus = response_ids(host["chosen_tokens"], host["chosen_loss_mask"], 2)
    degrader = Degrader(TOKENS, "token", "tfidf", levels=3, fraction=0.2, seed=0).fit(corpus)
    return host | degraded_arrays(degrader, host, sides, host["chosen_tokens"].shape[1])


def config(terms: dict, weight: float, **selfsup_fields):
    cfg = tiny_config()
    reference = "none" if "simpo" in terms else "resident"
    loss = dataclasses.replace(
        cfg.loss, terms=terms, reference=reference, selfsup=SelfsupConfig(weight=weight, **selfsup_fields)
    )
    return dataclasses.replace(cfg, loss=loss)


@pytest.fixture(scope="module")
def model():
    """The tiny policy and reference on :data:`MESH`, shared by the tests below."""
    return tiny_model(tiny_config(), MESH)


def loss_and_grads(model, cfg, host):
    objective = build_objective(cfg)
    view = as_model(model.graphdef)
    fn = jax.jit(jax.value_and_grad(lambda p, r, b: objective.loss(view, p, r, b), has_aux=True))
    (loss_sum, metrics), grads = fn(model.state.params, model.reference, objective.batch(host))
    return jax.device_get((loss_sum, metrics, grads))


@pytest.mark.slow
@pytest.mark.parametrize("terms", [{"dpo": 1.0}, {"ipo": 1.0}, {"simpo": 1.0}, {"gdpo": 1.0}])
def test_weight_zero_is_the_base_loss_exactly_and_weight_positive_adds_the_degree_term(model, terms):
    host = pairs_with_copies(8)
    host["soft_label"] = np.linspace(0.6, 1.0, 8).astype(np.float32)
    base = loss_and_grads(model, config(terms, 0.0), host)
    off = config(terms, 0.0, mode="classify", levels=2, degrade="both")  # every other selfsup setting changed
    assert not any(f.startswith("selfsup") for f in build_objective(off).fields)  # no extra data or forward
    zero = loss_and_grads(model, off, host)
    assert float(zero[0]) == float(base[0])
    for a, b in zip(jax.tree.leaves(zero[2]), jax.tree.leaves(base[2])):
        np.testing.assert_array_equal(a, b)
    on = loss_and_grads(model, config(terms, 0.5), host)
    degree = float(on[1]["selfsup/loss"][0])
    assert degree > 0
    np.testing.assert_allclose(float(on[0]), float(base[0]) + 0.5 * degree, rtol=1e-5)
    np.testing.assert_allclose(float(on[1]["loss"][0]), float(on[0]), rtol=1e-6)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(on[2]), jax.tree.leaves(base[2])))


def test_reward_auto_follows_the_first_term():
    assert selfsup.reward_kind(config({"dpo": 1.0}, 1.0).loss) == "log_ratio"
    assert selfsup.reward_kind(config({"simpo": 1.0}, 1.0).loss) == "mean_logp"
    assert selfsup.needs_reference(config({"dpo": 1.0}, 1.0).loss)
    assert not selfsup.needs_reference(config({"simpo": 1.0}, 1.0).loss)


@pytest.mark.slow
def test_classify_head_trains_in_the_state_is_checkpointed_and_kept_out_of_the_policy(model, tmp_path):
    cfg = config({"dpo": 1.0}, 1.0, mode="classify", degrade="both")
    host = pairs_with_copies(8, sides=("chosen", "rejected"))
    graphdef, reference = model.graphdef, model.reference
    policy = jax.tree.map(jax.numpy.copy, model.state.params)  # the steps below donate the state built on it
    abstract = abstract_model(cfg.model)[1]
    # the loop's own initialisation: the objective's auxiliary state (the head) joins the train state
    objective = build_objective(cfg)
    state, step = initialise(cfg, model.mesh, graphdef, abstract, model.shardings, policy, objective, 10, 1e-2, 8)
    assert state.head["params"]["kernel"].shape == (cfg.model.hidden_size, 4)
    batch = step.place(host)
    before = jax.device_get(state.head["params"])
    for _ in range(2):  # the warm-up learning rate is 0 at step 0
        state, metrics = step.fn(state, reference, batch)
    after = jax.device_get(state.head["params"])
    assert np.abs(after["kernel"] - before["kernel"]).max() > 0 and np.abs(after["bias"]).max() > 0
    assert np.isfinite(float(metrics["selfsup/loss"])) and "selfsup/accuracy" in metrics
    assert len(jax.tree.leaves(state.params)) == len(
        jax.tree.leaves(abstract_model(cfg.model)[1])
    )  # the head is not a policy param
    checkpoints = PhaseCheckpoints(tmp_path / "preference", CheckpointConfig(async_save=False))
    checkpoints.save(1, state, {"step": 1})
    _, restored, _ = checkpoints.restore_latest(state)
    checkpoints.close()
    np.testing.assert_array_equal(jax.device_get(restored.head["params"]["kernel"]), after["kernel"])
