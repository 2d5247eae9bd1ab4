"""WPO (``loss.wpo_weighting``): per-pair weights against TRL 1.16's ``use_weighting``, and the step's weights from
the LM head.

TRL's ``DPOTrainer._compute_loss`` runs on random per-token log-probs and log Σ_v p(v)² (its fused LM head's
``log_probs`` and ``log_sum_sq_probs``); ours feeds the same per-token values to :func:`aligned_mean` and
:func:`preference_objective`. Then the step's objective on a tiny model is checked against weights computed by hand
from its full logits, in the padded and packed layouts and with the LM head in chunks.
"""

from __future__ import annotations

import dataclasses
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_length_desensitise import PAIRS, per_token_batch
from tests.trl_stand_ins import FixedLogpsModel, torch, trl_trainer
from tests.test_train_step import TINY, build, random_pairs, tiny_config

from jaxspo.config import ConfigError, LossConfig, load_config
from jaxspo.data.layout import pack_pairs
from jaxspo.losses import PairLogps, preference_objective
from jaxspo.lora.views import as_model
from jaxspo.objectives import PackedPairBatch, PairBatch, build_objective
from jaxspo.train.length_desensitise import desensitising_weights
from jaxspo.train.logprobs import aligned_mean, forward_logits, token_logps
from jaxspo.train.state import abstract_model

TOL = 1e-12
# TRL losses whose weighted loss TRL cannot differentiate (``per_sequence_loss *= weights`` on a relu output):
# their loss is compared, their gradient only on our side (each pair's gradient scaled by its weight, below)
INPLACE_BUG = {"hinge"}
# our term → (TRL loss_type, LossConfig overrides)
TERMS = {
    "dpo": ("sigmoid", {}),
    "hinge": ("hinge", {}),
    "ipo_norm": ("ipo", {}),
    "sigmoid_norm": ("sigmoid_norm", {}),
    "robust": ("robust", {"label_smoothing": 0.1}),
    "discopop": ("discopop", {}),
    "sft": ("sft", {}),
}


class SquareMassModel(FixedLogpsModel):
    """Fixed per-token log-probs and log Σ_v p(v)² (TRL's fused LM head with ``log_sum_sq_probs``)."""

    def __init__(self, per_token_logps: torch.Tensor, square_mass: torch.Tensor):
        super().__init__(per_token_logps)
        self.square_mass = square_mass

    def __call__(self, **kwargs):
        return types.SimpleNamespace(**vars(super().__call__(**kwargs)), log_sum_sq_probs=self.square_mass)


def square_mass_of(policy: np.ndarray, seed: int) -> np.ndarray:
    """A log Σ_v p(v)² per token, between 2·log p(y_t) and 0 as for a real distribution."""
    return policy * np.random.default_rng(seed).uniform(0.2, 2.0, policy.shape)


def trl_weighted(loss_type: str, cfg: LossConfig, completion, policy, square, reference, ld_alpha=None):
    """TRL's batch loss with ``use_weighting`` and d loss / d per-token policy log-probs."""
    per_token = torch.tensor(policy, requires_grad=True)
    model = SquareMassModel(per_token, torch.tensor(square))
    trainer = trl_trainer(model, loss_type, cfg, ld_alpha=ld_alpha, use_weighting=True)
    sums = torch.tensor(reference.sum(-1))
    inputs = {
        "input_ids": torch.ones(completion.shape, dtype=torch.long),
        "attention_mask": torch.ones(completion.shape, dtype=torch.long),
        "completion_mask": torch.from_numpy(completion),
        "ref_chosen_logps": sums[: len(sums) // 2],
        "ref_rejected_logps": sums[len(sums) // 2 :],
    }
    from trl.trainer.dpo_trainer import DPOTrainer

    loss = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    try:
        loss.backward()
    except RuntimeError as err:  # TRL 1.16 scales hinge's relu output in place, which its backward needs
        assert loss_type in INPLACE_BUG and "modified by an inplace operation" in str(err), err
        return loss.item(), None
    return loss.item(), per_token.grad.numpy()


def our_weighted(name: str, cfg: LossConfig, completion, policy, square, reference, ld_alpha=1.0):
    """Our mean weighted loss and its gradient w.r.t. the per-token policy log-probs (float64)."""
    half = len(completion) // 2
    mask = jnp.asarray(completion[:, 1:], jnp.float64)  # slot t−1 predicts token t
    weights = desensitising_weights(jnp.asarray(completion[:half]), jnp.asarray(completion[half:]), ld_alpha)[:, 1:]
    lengths = jnp.asarray(completion.sum(-1), jnp.float64)
    reference_sums = jnp.asarray(reference.sum(-1))

    def mean_loss(per_token):
        sums = (per_token * weights).sum(-1)
        aligned = aligned_mean(per_token, jnp.asarray(square), mask)
        logps = PairLogps(
            sums[:half],
            sums[half:],
            reference_sums[:half],
            reference_sums[half:],
            lengths[:half],
            lengths[half:],
            jnp.ones(half, jnp.float64),
        )
        total, _ = preference_objective(
            logps, cfg, jnp.ones(half, jnp.float64), jnp.exp(aligned[:half] + aligned[half:])
        )
        return total / half

    return jax.value_and_grad(mean_loss)(jnp.asarray(policy))


def _compare(loss_type, name, cfg, rows, ld_alpha=None):
    completion, policy, reference = rows
    square = square_mass_of(policy, seed=7)
    theirs, their_grad = trl_weighted(loss_type, cfg, completion, policy, square, reference, ld_alpha)
    with jax.enable_x64(True):
        mine, my_grad = (
            np.asarray(x)
            for x in our_weighted(
                name, cfg, completion, policy, square, reference, 1.0 if ld_alpha is None else ld_alpha
            )
        )
    response = completion[:, 1:].astype(bool)
    assert abs(mine - theirs) <= TOL * max(1.0, abs(theirs)), (mine, theirs)
    if their_grad is None:
        return abs(mine - theirs), None
    np.testing.assert_allclose(my_grad[response], their_grad[response], atol=TOL, rtol=0)
    assert np.abs(my_grad).max() > 1e-4
    return abs(mine - theirs), np.abs(my_grad[response] - their_grad[response]).max()


def _single_pair(rows, i):
    """Pair ``i`` of ``rows`` as a batch of one, at the batch's width (every pair of a batch: one set of shapes)."""
    completion, policy, reference = rows
    index = [i, PAIRS + i]
    return completion[index], policy[index], reference[index]


@pytest.mark.parametrize("name", sorted(TERMS))
def test_weighted_losses_match_trl_on_loss_and_gradient(name):
    loss_type, overrides = TERMS[name]
    cfg = LossConfig(terms={name: 1.0}, beta=0.5, **overrides)
    for seed in (1, 2):
        rows = per_token_batch(seed)
        if name == "sft":  # TRL's sft is one token mean over the batch: a batch of one pair is that pair's loss
            for i in range(PAIRS):
                _compare(loss_type, name, cfg, _single_pair(rows, i))
        else:
            _compare(loss_type, name, cfg, rows)


def test_weights_use_the_unweighted_token_mean_with_ld_alpha():
    """TRL's weights read the raw per-token log-probs when ``ld_alpha`` weighs the sums; ours too."""
    _compare("sigmoid", "dpo", LossConfig(terms={"dpo": 1.0}, beta=0.5), per_token_batch(3), ld_alpha=0.4)


@functools.partial(jax.jit, static_argnums=0)
def _hand_weights(graphdef, params, batch: PairBatch) -> jax.Array:
    """exp(mean_t log p(y_t) − log Σ_v p(v)²) of chosen × rejected, from the full logits ``[2B, T, V]``."""
    tokens = jnp.concatenate([batch.chosen_tokens, batch.rejected_tokens])
    valid = jnp.concatenate([batch.chosen_valid, batch.rejected_valid])
    mask = jnp.concatenate([batch.chosen_loss_mask, batch.rejected_loss_mask])[:, 1:]
    logits = forward_logits(graphdef, params, tokens, valid)
    square = jax.nn.logsumexp(2.0 * jax.nn.log_softmax(logits[:, :-1]), axis=-1)  # [2B, T−1]
    per_token = token_logps(logits, tokens)
    means = ((per_token - square) * mask).sum(-1) / mask.sum(-1)
    half = batch.chosen_tokens.shape[0]
    return jnp.exp(means[:half] + means[half:])


@pytest.fixture(scope="module")
def tiny():
    """(config, graph, policy params, reference params) of the tiny model on an 8-device data mesh."""
    cfg = tiny_config()
    _, graphdef, _, state, reference, _ = build(cfg, {"data": 8}, 8)
    return cfg, graphdef, state.params, reference


def _objective_value_and_grad(cfg, graphdef, params, reference, batch):
    loss = build_objective(cfg).loss
    return jax.jit(jax.value_and_grad(lambda p: loss(as_model(graphdef), p, reference, batch), has_aux=True))(params)


@pytest.mark.parametrize("layout,chunk", [("padded", 0), ("padded", 5), ("packed", 0)])
def test_step_objective_weighs_each_pair_by_its_policy_probabilities(tiny, layout, chunk):
    cfg, graphdef, params, reference = tiny
    host = random_pairs(8, seed=4)
    padded = PairBatch.from_fields({k: jnp.asarray(v) for k, v in host.items()})
    expected_weights = np.asarray(_hand_weights(graphdef, params, padded))
    weighted = dataclasses.replace(
        cfg,
        loss=dataclasses.replace(cfg.loss, wpo_weighting=True),
        data=dataclasses.replace(cfg.data, layout=layout),
    )
    batch = PackedPairBatch.from_fields(host | pack_pairs(host)) if layout == "packed" else padded
    chunked = abstract_model(dataclasses.replace(TINY, logprob_chunk=chunk))[0]
    (total, metrics), grads = _objective_value_and_grad(weighted, chunked, params, reference, batch)
    np.testing.assert_allclose(metrics["wpo/weight"][0], expected_weights.sum(), rtol=1e-5)
    assert np.ptp(expected_weights) > 0.1 * expected_weights.mean()  # the weights differ between pairs
    np.testing.assert_allclose(metrics["loss"][0], total, rtol=1e-6)  # the weighted loss is the one optimised
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_weighted_gradient_is_the_plain_gradient_scaled_per_pair(tiny):
    """No gradient flows through the weights: one pair's weighted gradient is its weight × its plain gradient."""
    cfg, graphdef, params, reference = tiny
    host = {k: v[:1] for k, v in random_pairs(8, seed=5).items()}
    batch = PairBatch.from_fields({k: jnp.asarray(v) for k, v in host.items()})
    weighted = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, wpo_weighting=True))
    weight = float(_hand_weights(graphdef, params, batch)[0])
    (_, metrics), grads = _objective_value_and_grad(weighted, graphdef, params, reference, batch)
    (_, _), plain = _objective_value_and_grad(cfg, graphdef, params, reference, batch)
    np.testing.assert_allclose(metrics["wpo/weight"][0], weight, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(plain), strict=True):
        scale = weight * np.abs(np.asarray(b)).max()  # float32 rounding near zero entries: relative to the leaf
        np.testing.assert_allclose(np.asarray(a), weight * np.asarray(b), rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["loss.terms={aot: 1.0}"], "loss.wpo_weighting cannot weigh aot: it sorts the batch's margins"),
        (["loss.terms={soft_spo_ranked: 1.0}"], "loss.wpo_weighting weighs pairs; it cannot be combined with list"),
        (["loss.terms={sft: 1.0}", "loss.params.sft.token_mean=batch"], "set loss.params.sft.token_mean: pair"),
    ],
)
def test_bad_wpo_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["loss.wpo_weighting=true", *overrides])
    assert message in str(err.value) and "\n" not in str(err.value)


if __name__ == "__main__":  # PYTHONPATH=. python -m tests.test_wpo_weighting: the figures in the docs
    import json

    loss_errors, gradient_errors = [], []
    for term, (trl_type, settings) in sorted(TERMS.items()):
        cfg = LossConfig(terms={term: 1.0}, beta=0.5, **settings)
        for seed in (1, 2):
            rows = per_token_batch(seed)
            cases = [_single_pair(rows, i) for i in range(PAIRS)] if term == "sft" else [rows]
            for case in cases:
                loss_error, gradient_error = _compare(trl_type, term, cfg, case)
                loss_errors.append(loss_error)
                gradient_errors += [] if gradient_error is None else [gradient_error]
    print(json.dumps({"cases": len(loss_errors), "loss": max(loss_errors), "gradient": max(gradient_errors)}))
