"""Parity with TRL 1.16: TRL's own installed loss code runs on the same log-probs as ours.

TRL computes its DPO losses inside ``DPOTrainer._compute_loss(model, inputs)``, which runs a forward
pass. We call that method unbound with a stand-in ``self`` (the attributes it reads) and a stand-in
model whose per-token log-probs sum to our sequence log-probs, with ``precompute_ref_log_probs`` on
so the reference log-probs come straight from the inputs. CPO/SimPO and ORPO have pure functions
(``CPOTrainer.cpo_loss``, ``ORPOTrainer.odds_ratio_loss``) called the same way. Everything runs in
float64 so the comparison measures the maths, not rounding.
"""

from __future__ import annotations

import dataclasses
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.trl_stand_ins import FixedLogpsModel, StandInAccelerator, torch, trl_trainer

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
from trl.experimental.cpo.cpo_trainer import CPOTrainer  # noqa: E402
from trl.experimental.orpo.orpo_trainer import ORPOTrainer  # noqa: E402
from trl.trainer.dpo_trainer import DPOTrainer  # noqa: E402

from jaxspo.config import LossConfig  # noqa: E402
from jaxspo.losses import PairLogps, get_loss, preference_objective  # noqa: E402
from jaxspo.losses.reference_free import CpoParams, OrpoParams, SftParams, SimpoParams  # noqa: E402

TOL = 1e-12  # float64 on both sides
ORPO_TOL = 1e-5  # TRL computes the odds ratio in float32
BETA = 0.5
# our name → (TRL DPOTrainer loss_type, LossConfig overrides); label_smoothing is TRL's too.
PER_PAIR = {
    "dpo": ("sigmoid", {}),
    "hinge": ("hinge", {}),
    "ipo_norm": ("ipo", {}),
    "exo_pair": ("exo_pair", {"label_smoothing": 1e-3}),
    "nca_pair": ("nca_pair", {}),
    "robust": ("robust", {"label_smoothing": 0.1}),
    "bco_pair": ("bco_pair", {}),
    "sppo_hard": ("sppo_hard", {}),
    "apo_zero": ("apo_zero", {}),
    "apo_down": ("apo_down", {}),
    "discopop": ("discopop", {}),
    "sigmoid_norm": ("sigmoid_norm", {}),
}
# Losses whose per-pair entries depend on the whole batch in TRL: compared on the batch loss and on
# the gradient with respect to every pair's log-probs.
BATCH_COUPLED = {
    "aot": ("aot", {"label_smoothing": 0.1}),
    "aot_unpaired": ("aot_unpaired", {"label_smoothing": 0.1}),
    "sft": ("sft", {}),
}
REWARD_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)
PROMPT = 3  # prompt tokens before each completion in the stand-in batch


def random_pairs(batch: int, seed: int, equal_lengths: bool = False, gap: float = 3.0) -> dict[str, np.ndarray]:
    """Sequence log-probs ≈ −2 per token with policy–reference gaps of ``gap`` nats (standard deviation)."""
    rng = np.random.default_rng(seed)
    lengths = {
        side: np.full(batch, 6) if equal_lengths else rng.integers(2, 12, size=batch) for side in ("chosen", "rejected")
    }
    out = {}
    for side, length in lengths.items():
        out[f"policy_{side}"] = -2.0 * length + rng.normal(0.0, 3.0, size=batch)
        out[f"reference_{side}"] = out[f"policy_{side}"] + rng.normal(0.0, gap, size=batch)
        out[f"{side}_length"] = length.astype(np.float64)
    return out


def ours(arrays: dict[str, np.ndarray], dtype=jnp.float64) -> PairLogps:
    a = {k: jnp.asarray(v, dtype) for k, v in arrays.items()}
    return PairLogps(
        a["policy_chosen"],
        a["policy_rejected"],
        a["reference_chosen"],
        a["reference_rejected"],
        a["chosen_length"],
        a["rejected_length"],
        jnp.ones_like(a["policy_chosen"]),
    )


def _trl_batch(
    arrays: dict[str, np.ndarray], dtype: torch.dtype = torch.float64
) -> tuple[dict[str, torch.Tensor], torch.Tensor, np.ndarray]:
    """(inputs, per-token policy log-probs [2B, T-1] requiring grad, completion lengths [2B])."""
    lengths = np.concatenate([arrays["chosen_length"], arrays["rejected_length"]]).astype(int)
    totals = np.concatenate([arrays["policy_chosen"], arrays["policy_rejected"]])
    width = PROMPT + lengths.max() + 1
    completion = np.zeros((len(lengths), width), np.int64)
    attention = np.zeros_like(completion)
    per_token = np.zeros((len(lengths), width - 1))
    for row, (n, total) in enumerate(zip(lengths, totals)):
        completion[row, PROMPT : PROMPT + n] = 1
        attention[row, : PROMPT + n] = 1
        per_token[row, PROMPT - 1 : PROMPT - 1 + n] = total / n  # position t-1 predicts token t
    inputs = {
        "input_ids": torch.ones(completion.shape, dtype=torch.long),
        "attention_mask": torch.from_numpy(attention),
        "completion_mask": torch.from_numpy(completion),
        "ref_chosen_logps": torch.from_numpy(arrays["reference_chosen"]).to(dtype),
        "ref_rejected_logps": torch.from_numpy(arrays["reference_rejected"]).to(dtype),
    }
    return inputs, torch.tensor(per_token, dtype=dtype, requires_grad=True), lengths


def trl_dpo(
    loss_type: str,
    cfg: LossConfig,
    arrays: dict[str, np.ndarray],
    divergence: str = "reverse_kl",
    divergence_alpha: float = 0.5,
    dtype: torch.dtype = torch.float64,
) -> tuple[float, dict[str, float], np.ndarray]:
    """TRL's batch loss, its logged metrics and d loss / d sequence log-prob per row ``[2B]`` (``divergence``: TRL's
    ``f_divergence_type``, ``divergence_alpha`` its ``f_alpha_divergence_coef``)."""
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # TRL makes some constants (exo_pair's ε) with torch.tensor(float)
    try:
        return _run_trl_dpo(loss_type, cfg, arrays, divergence, divergence_alpha, dtype)
    finally:
        torch.set_default_dtype(default_dtype)


def _run_trl_dpo(
    loss_type: str, cfg: LossConfig, arrays: dict[str, np.ndarray], divergence: str, divergence_alpha: float, dtype
) -> tuple[float, dict[str, float], np.ndarray]:
    inputs, per_token, lengths = _trl_batch(arrays, dtype)
    model = FixedLogpsModel(per_token)
    trainer = trl_trainer(model, loss_type, cfg, divergence=divergence, divergence_alpha=divergence_alpha)
    loss = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    loss.backward()
    loss = loss.detach()
    grad_per_row = per_token.grad[np.arange(len(lengths)), PROMPT - 1].numpy()  # same for every token of a row
    metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}
    return loss.item(), metrics, grad_per_row


def our_loss_and_grad(
    name: str, cfg: LossConfig, arrays: dict[str, np.ndarray], dtype=jnp.float64
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair loss ``[B]`` and d mean-loss / d policy log-probs ``[2B]`` (chosen rows then rejected)."""
    logps = ours(arrays, dtype)

    def mean_loss(chosen, rejected):
        return (
            get_loss(name).apply(dataclasses.replace(logps, policy_chosen=chosen, policy_rejected=rejected), cfg).mean()
        )

    grads = jax.grad(mean_loss, argnums=(0, 1))(logps.policy_chosen, logps.policy_rejected)
    return np.asarray(get_loss(name).apply(logps, cfg)), np.concatenate([np.asarray(g) for g in grads])


def single_pair(arrays: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    return {k: v[i : i + 1] for k, v in arrays.items()}


@pytest.mark.parametrize("name", sorted(PER_PAIR))
def test_per_pair_losses_and_rewards_match_trl(name):
    loss_type, overrides = PER_PAIR[name]
    cfg = LossConfig(terms={name: 1.0}, beta=BETA, **overrides)
    arrays = random_pairs(8, seed=1)
    with jax.enable_x64(True):
        per_pair, grads = our_loss_and_grad(name, cfg, arrays)
        _, metrics = preference_objective(ours(arrays), cfg, jnp.ones(8, jnp.float64))
        for i in range(8):  # TRL averages over its batch: a batch of one pair gives that pair's loss
            trl_loss, trl_metrics, _ = trl_dpo(loss_type, cfg, single_pair(arrays, i))
            assert abs(per_pair[i] - trl_loss) <= TOL, (name, i, per_pair[i], trl_loss)
            _, mine = preference_objective(ours(single_pair(arrays, i)), cfg, jnp.ones(1, jnp.float64))
            for metric in REWARD_METRICS:
                assert abs(float(mine[metric][0]) - trl_metrics[metric]) <= TOL, (name, i, metric)
        trl_loss, trl_metrics, trl_grads = trl_dpo(loss_type, cfg, arrays)
    assert abs(per_pair.mean() - trl_loss) <= TOL
    np.testing.assert_allclose(grads, trl_grads, atol=TOL, rtol=0, err_msg=f"{name}: gradient")
    for metric in REWARD_METRICS:
        assert abs(float(metrics[metric][0]) / 8 - trl_metrics[metric]) <= TOL, metric
    assert np.abs(grads).max() > 1e-3  # the gradient is not trivially zero


@pytest.mark.parametrize("name", sorted(BATCH_COUPLED))
def test_batch_coupled_losses_match_trl_on_loss_and_gradients(name):
    loss_type, overrides = BATCH_COUPLED[name]
    cfg = LossConfig(terms={name: 1.0}, beta=BETA, **overrides)
    arrays = random_pairs(8, seed=2, equal_lengths=name == "sft")  # TRL's sft is a batch token mean
    with jax.enable_x64(True):
        per_pair, grads = our_loss_and_grad(name, cfg, arrays)
        trl_loss, _, trl_grads = trl_dpo(loss_type, cfg, arrays)
    assert abs(per_pair.mean() - trl_loss) <= TOL, (per_pair.mean(), trl_loss)
    np.testing.assert_allclose(grads, trl_grads, atol=TOL, rtol=0, err_msg=f"{name}: gradient")
    assert np.abs(grads).max() > 1e-3


def test_sft_batch_token_mean_matches_trl_on_unequal_lengths_and_the_pair_mean_does_not():
    arrays = random_pairs(8, seed=8)  # chosen lengths 2..11
    assert len(set(arrays["chosen_length"])) > 1
    batch = LossConfig(terms={"sft": 1.0}, beta=BETA, params={"sft": SftParams(token_mean="batch")})
    with jax.enable_x64(True):
        per_pair, grads = our_loss_and_grad("sft", batch, arrays)
        pair_mean, _ = our_loss_and_grad("sft", LossConfig(terms={"sft": 1.0}, beta=BETA), arrays)
        trl_loss, _, trl_grads = trl_dpo("sft", batch, arrays)
    assert abs(per_pair.mean() - trl_loss) <= TOL, (per_pair.mean(), trl_loss)
    np.testing.assert_allclose(grads, trl_grads, atol=TOL, rtol=0)
    assert np.abs(grads[:8]).max() > 1e-3 and not grads[8:].any()  # only the chosen responses are trained
    assert abs(pair_mean.mean() - trl_loss) > 1e-3  # the default per-pair mean is another loss here


def test_aot_sorts_over_the_batch_so_its_value_depends_on_the_other_pairs():
    cfg = LossConfig(terms={"aot": 1.0}, beta=BETA)
    arrays = random_pairs(8, seed=3)
    for side in ("chosen", "rejected"):  # reference gaps ranked unlike the policy's, so sorting re-pairs
        arrays[f"reference_{side}"] = arrays[f"reference_{side}"][::-1].copy()
    with jax.enable_x64(True):
        whole = np.asarray(get_loss("aot").fn(ours(arrays), cfg)).mean()
        halves = [
            np.asarray(get_loss("aot").fn(ours({k: v[s] for k, v in arrays.items()}), cfg)).mean()
            for s in (slice(0, 4), slice(4, 8))
        ]
    assert abs(whole - np.mean(halves)) > 1e-4


# ---------------------------------------------------------------------------------------------
# CPOTrainer (cpo, simpo; and cdpo, which is its smoothed sigmoid applied to log-ratios) and ORPO
# ---------------------------------------------------------------------------------------------


def cpo_stand_in(loss_type: str, cfg: LossConfig) -> types.SimpleNamespace:
    gamma = get_loss("simpo").params_of(cfg).gamma
    return types.SimpleNamespace(
        alpha=0.0,
        loss_type=loss_type,
        beta=cfg.beta,
        simpo_gamma=gamma,
        label_smoothing=cfg.label_smoothing,
        accelerator=StandInAccelerator(),
    )


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.asarray(x), dtype=torch.float64)


def rewards_of(name: str, logps: PairLogps, cfg: LossConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair (rewards/chosen, rewards/rejected) as preference_objective logs them."""
    out = []
    for i in range(logps.policy_chosen.shape[0]):
        one = jax.tree.map(lambda x: x[i : i + 1], logps)
        _, metrics = preference_objective(one, cfg, jnp.ones(1, jnp.float64))
        out.append((float(metrics["rewards/chosen"][0]), float(metrics["rewards/rejected"][0])))
    return tuple(np.array(column) for column in zip(*out))


def test_simpo_matches_trl_cpo_trainer():
    cfg = LossConfig(terms={"simpo": 1.0}, beta=2.0, params={"simpo": SimpoParams(gamma=0.5)})
    arrays = random_pairs(8, seed=4)
    with jax.enable_x64(True):
        logps = ours(arrays)
        mean_chosen, mean_rejected = (np.asarray(x) for x in logps.mean_logps())
        losses, trl_chosen, trl_rejected = CPOTrainer.cpo_loss(
            cpo_stand_in("simpo", cfg), _t(mean_chosen), _t(mean_rejected)
        )
        per_pair = np.asarray(get_loss("simpo").apply(logps, cfg)[0])
        chosen, rejected = rewards_of("simpo", logps, cfg)
    np.testing.assert_allclose(per_pair, losses.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(chosen, trl_chosen.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(rejected, trl_rejected.numpy(), atol=TOL, rtol=0)


def test_cpo_matches_trl_cpo_trainer():
    """TRL's CPO loss is cpo_loss(...).mean() + cpo_alpha · (batch token-mean NLL); equal lengths make them agree."""
    nll_weight = 1.0
    cfg = LossConfig(terms={"cpo": 1.0}, beta=0.1, params={"cpo": CpoParams(nll_weight=nll_weight)})
    arrays = random_pairs(8, seed=5, equal_lengths=True)
    with jax.enable_x64(True):
        logps = ours(arrays)
        losses, trl_chosen, trl_rejected = CPOTrainer.cpo_loss(
            cpo_stand_in("sigmoid", cfg), _t(arrays["policy_chosen"]), _t(arrays["policy_rejected"])
        )
        nll = -arrays["policy_chosen"].sum() / arrays["chosen_length"].sum()
        per_pair, metrics = jax.tree.map(np.asarray, get_loss("cpo").apply(logps, cfg))
        chosen, rejected = rewards_of("cpo", logps, cfg)
    np.testing.assert_allclose(per_pair - nll_weight * metrics["nll_loss"], losses.numpy(), atol=TOL, rtol=0)
    assert abs(float(per_pair.mean()) - (float(losses.mean()) + nll_weight * nll)) <= TOL
    np.testing.assert_allclose(chosen, trl_chosen.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(rejected, trl_rejected.numpy(), atol=TOL, rtol=0)


def test_cdpo_matches_trl_label_smoothed_sigmoid():
    """TRL 1.16's DPO ``sigmoid`` has no label smoothing; CPOTrainer's smoothed sigmoid on log-ratios is cDPO."""
    cfg = LossConfig(terms={"cdpo": 1.0}, beta=BETA, label_smoothing=0.2)
    arrays = random_pairs(8, seed=6)
    with jax.enable_x64(True):
        chosen, rejected = (np.asarray(x) for x in ours(arrays).log_ratios())
        losses, _, _ = CPOTrainer.cpo_loss(cpo_stand_in("sigmoid", cfg), _t(chosen), _t(rejected))
        per_pair = np.asarray(get_loss("cdpo").fn(ours(arrays), cfg))
    np.testing.assert_allclose(per_pair, losses.numpy(), atol=TOL, rtol=0)


def test_orpo_odds_ratio_term_and_rewards_match_trl():
    """TRL's ORPO loss is nll − mean(odds_ratio_loss(...)[0]); its NLL also counts prompt tokens, ours does not."""
    odds_ratio_weight = 0.1
    cfg = LossConfig(terms={"orpo": 1.0}, beta=0.1, params={"orpo": OrpoParams(odds_ratio_weight=odds_ratio_weight)})
    arrays = random_pairs(8, seed=7)
    arrays["policy_chosen"][0] = -1e-3 * arrays["chosen_length"][0]  # a near-certain response: log1mexp's other branch
    with jax.enable_x64(True):
        logps = ours(arrays)
        mean_chosen, mean_rejected = (np.asarray(x) for x in logps.mean_logps())
        stand_in = types.SimpleNamespace(beta=odds_ratio_weight, accelerator=StandInAccelerator())
        losses, trl_chosen, trl_rejected, trl_ratio, trl_log_odds = ORPOTrainer.odds_ratio_loss(
            stand_in, _t(mean_chosen), _t(mean_rejected)
        )
        per_pair, metrics = jax.tree.map(np.asarray, get_loss("orpo").apply(logps, cfg))
        chosen, rejected = rewards_of("orpo", logps, cfg)
    odds_term = per_pair - metrics["nll_loss"]
    # TRL casts to float32 inside odds_ratio_loss
    np.testing.assert_allclose(odds_term, -losses.numpy(), atol=ORPO_TOL, rtol=0)
    assert abs(float(np.mean(metrics["log_odds_ratio"])) - float(trl_ratio)) <= ORPO_TOL
    assert abs(float(np.mean(metrics["log_odds_chosen"])) - float(trl_log_odds)) <= ORPO_TOL
    np.testing.assert_allclose(chosen, trl_chosen.numpy(), atol=ORPO_TOL, rtol=0)
    np.testing.assert_allclose(rejected, trl_rejected.numpy(), atol=ORPO_TOL, rtol=0)
