"""LD-DPO (``loss.ld_alpha``): the token weights against TRL 1.16's ``ld_alpha``, and the step's objective using them.

TRL's ``DPOTrainer._compute_loss`` (policy) and ``compute_ref_log_probs`` (reference) run on random per-token
log-probs; ours weighs the same per-token values with :func:`desensitising_weights` and feeds the sums to the loss.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_losses_trl import PROMPT
from tests.trl_stand_ins import FixedLogpsModel, torch, trl_trainer
from tests.test_train_step import build, random_pairs, tiny_config

from jaxspo.config import ConfigError, LossConfig, load_config
from jaxspo.losses import PairLogps, get_loss
from jaxspo.train.length_desensitise import desensitising_weights
from jaxspo.train.logprobs import forward_logits, token_logps
from jaxspo.lora.views import as_model
from jaxspo.objectives import PairBatch, build_objective

TOL = 1e-12
PAIRS = 6


def per_token_batch(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(completion mask [2B, W] int, policy and reference per-token log-probs [2B, W−1]: slot t−1 predicts token t)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 10, size=2 * PAIRS)
    width = PROMPT + lengths.max() + 1
    completion = np.zeros((2 * PAIRS, width), np.int64)
    for row, n in enumerate(lengths):
        completion[row, PROMPT : PROMPT + n] = 1
    shifted = completion[:, 1:].astype(bool)
    policy = np.where(shifted, -rng.exponential(2.0, shifted.shape), 0.0)
    reference = np.where(shifted, -rng.exponential(2.0, shifted.shape), 0.0)
    return completion, policy, reference


def trl_loss(loss_type: str, alpha: float, completion, policy, reference) -> tuple[float, np.ndarray, np.ndarray]:
    """TRL's batch loss, d loss / d per-token policy log-probs, and its LD-weighted reference sums ``[2B]``."""
    per_token = torch.tensor(policy, requires_grad=True)
    model, ref_model = FixedLogpsModel(per_token), FixedLogpsModel(torch.tensor(reference))
    trainer = trl_trainer(model, loss_type, LossConfig(beta=0.5), ld_alpha=alpha)
    inputs = {
        "input_ids": torch.ones(completion.shape, dtype=torch.long),
        "attention_mask": torch.ones(completion.shape, dtype=torch.long),
        "completion_mask": torch.from_numpy(completion),
    }
    from trl.trainer.dpo_trainer import DPOTrainer

    ref_chosen, ref_rejected = DPOTrainer.compute_ref_log_probs(trainer, ref_model, inputs)
    inputs |= {"ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    loss = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    loss.backward()
    return loss.item(), per_token.grad.numpy(), torch.cat([ref_chosen, ref_rejected]).numpy()


def our_loss(name: str, alpha: float, completion, policy, reference) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Our batch loss, its gradient w.r.t. the per-token policy log-probs, and our weighted reference sums ``[2B]``."""
    weights = desensitising_weights(jnp.asarray(completion[:PAIRS]), jnp.asarray(completion[PAIRS:]), alpha)[:, 1:]
    lengths = jnp.asarray(completion.sum(-1), jnp.float64)
    reference_sums = (jnp.asarray(reference) * weights).sum(-1)
    cfg = LossConfig(terms={name: 1.0}, beta=0.5)

    def mean_loss(per_token):
        sums = (per_token * weights).sum(-1)
        logps = PairLogps(
            sums[:PAIRS],
            sums[PAIRS:],
            reference_sums[:PAIRS],
            reference_sums[PAIRS:],
            lengths[:PAIRS],
            lengths[PAIRS:],
            jnp.ones(PAIRS, jnp.float64),
        )
        return get_loss(name).apply(logps, cfg).mean()

    loss, grad = jax.value_and_grad(mean_loss)(jnp.asarray(policy))
    return loss, grad, reference_sums


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("name,loss_type", [("dpo", "sigmoid"), ("sigmoid_norm", "sigmoid_norm"), ("ipo_norm", "ipo")])
def test_ld_weights_match_trl_on_loss_gradient_and_reference_sums(name, loss_type, alpha):
    for seed in (1, 2):
        completion, policy, reference = per_token_batch(seed)
        theirs, their_grad, their_reference = trl_loss(loss_type, alpha, completion, policy, reference)
        with jax.enable_x64(True):
            mine, my_grad, my_reference = (np.asarray(x) for x in our_loss(name, alpha, completion, policy, reference))
        assert abs(mine - theirs) <= TOL, (mine, theirs)
        # TRL's fused LM head gives padding slots log-prob 0 with no gradient; its LD masks count them, our weights
        # do not
        response = completion[:, 1:].astype(bool)
        np.testing.assert_allclose(my_grad[response], their_grad[response], atol=TOL, rtol=0)
        assert not my_grad[~response].any()
        np.testing.assert_allclose(my_reference, their_reference, atol=TOL, rtol=0)
        assert np.abs(my_grad).max() > 1e-3


def test_weights_count_the_shared_length_fully_and_the_rest_by_alpha():
    chosen = jnp.array([[0, 1, 1, 1, 1, 0], [0, 0, 1, 0, 0, 0]])  # lengths 4 and 1
    rejected = jnp.array([[0, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 0]])  # lengths 2 and 3
    weights = np.asarray(desensitising_weights(chosen, rejected, 0.25))
    np.testing.assert_array_equal(weights[0], [0, 1, 1, 0.25, 0.25, 0])  # chosen: 2 shared tokens, 2 beyond
    np.testing.assert_array_equal(weights[3], [0, 0, 1, 0.25, 0.25, 0])  # rejected of pair 2: 1 shared
    np.testing.assert_array_equal(weights[1], [0, 0, 1, 0, 0, 0])  # the shorter response is all shared


def test_the_step_objective_sums_weighted_token_logps_and_keeps_token_counts():
    cfg = tiny_config()
    alpha = 0.4
    batch = PairBatch.from_fields({k: jnp.asarray(v) for k, v in random_pairs(8, seed=3).items()})
    _, graphdef, _, state, reference, _ = build(cfg, {"data": 8}, 8)
    weighted = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, ld_alpha=alpha))

    @jax.jit  # one program (as in a step), not op by op
    def objective_and_by_hand(policy, reference, batch):
        metrics = build_objective(weighted).loss(as_model(graphdef), policy, reference, batch)[1]
        plain = build_objective(cfg).loss(as_model(graphdef), policy, reference, batch)[1]
        weights = desensitising_weights(batch.chosen_loss_mask, batch.rejected_loss_mask, alpha)
        tokens = jnp.concatenate([batch.chosen_tokens, batch.rejected_tokens])
        valid = jnp.concatenate([batch.chosen_valid, batch.rejected_valid])
        rows = [  # [2B]: Σ_t w_t log π(token t) under each model
            (token_logps(forward_logits(graphdef, params, tokens, valid), tokens) * weights[:, 1:]).sum(-1)
            for params in (policy, reference)
        ]
        return metrics, plain, *rows

    metrics, plain, policy_rows, reference_rows = objective_and_by_hand(state.params, reference, batch)
    margin = (policy_rows[:8] - reference_rows[:8]) - (policy_rows[8:] - reference_rows[8:])
    expected = -jax.nn.log_sigmoid(cfg.loss.beta * margin).sum()
    np.testing.assert_allclose(metrics["loss"][0], expected, rtol=2e-5)
    np.testing.assert_allclose(metrics["logps/chosen"][0], policy_rows[:8].sum(), rtol=2e-5)
    assert abs(float(plain["loss"][0]) - float(expected)) > 1e-3  # α < 1 changes the loss on unequal lengths


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["loss.ld_alpha=1.5"], "loss.ld_alpha must be in [0, 1], got 1.5"),
        (["loss.ld_alpha=0.5", "loss.reference=precomputed"], "loss.ld_alpha < 1 weighs the reference's tokens"),
        (["loss.ld_alpha=0.5", "data.layout=packed"], "loss.ld_alpha < 1 needs data.layout: padded"),
    ],
)
def test_bad_ld_alpha_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)
