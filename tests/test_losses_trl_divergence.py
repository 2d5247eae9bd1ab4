"""Parity with TRL 1.16's ``f_divergence_type`` on every loss type TRL applies it to.

TRL's own ``DPOTrainer._compute_loss`` runs on the same log-probs as ours (the stand-ins of
:mod:`tests.test_losses_trl`), with ``loss.params.<term>.divergence`` (and ``divergence_alpha``) set to TRL's
``f_divergence_type`` (and ``f_alpha_divergence_coef``). Forward KL and Jensen–Shannon run in float64
(≤ 1e-12); TRL computes the α-divergence only in float16/bfloat16/float32 (its exponent cap has no float64
entry), so α cases run in float32 on both sides (≤ 1e-6). Errors are relative to the value's size once it
exceeds 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_losses_trl import BETA, our_loss_and_grad, random_pairs, single_pair, trl_dpo, torch

from jaxspo.config import LossConfig
from jaxspo.losses import get_loss
from jaxspo.losses.f_divergence import DIVERGENCES

# our name → (TRL loss_type, LossConfig overrides): every loss type TRL lets f_divergence_type change
# (its ``sft`` is also allowed but reads no scores)
DIVERGENCE_LOSSES = {
    "dpo": ("sigmoid", {}),
    "sigmoid_norm": ("sigmoid_norm", {}),
    "hinge": ("hinge", {}),
    "ipo_norm": ("ipo", {}),
    "exo_pair": ("exo_pair", {"label_smoothing": 1e-3}),
    "robust": ("robust", {"label_smoothing": 0.1}),
    "discopop": ("discopop", {}),
}
# (divergence, α, dtype, tolerance): α = 1 is the reverse-KL limit; α = 0 gives the forward KL's f'
CASES = [
    ("forward_kl", 0.5, "float64", 1e-12),
    ("js_divergence", 0.5, "float64", 1e-12),
    ("alpha_divergence", 0.25, "float32", 1e-6),
    ("alpha_divergence", 0.5, "float32", 1e-6),
    ("alpha_divergence", 1.0, "float32", 1e-6),
    ("alpha_divergence", 1.5, "float32", 1e-6),
    ("alpha_divergence", 0.0, "float32", 1e-6),
]
SEEDS = (11, 12, 13)
PAIRS = 8


def config(name: str, divergence: str, alpha: float) -> LossConfig:
    params_class = get_loss(name).params
    params = params_class(divergence=divergence, divergence_alpha=alpha)
    return LossConfig(terms={name: 1.0}, beta=BETA, params={name: params}, **DIVERGENCE_LOSSES[name][1])


def exactly_summable(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Log-probs on a 2⁻¹⁰ grid, so TRL's float32 sum over equal per-token shares rebuilds our float32 total
    exactly: both sides then start from the same numbers and only the loss maths is compared."""
    out = dict(arrays)
    for side in ("chosen", "rejected"):
        per_token = np.round(arrays[f"policy_{side}"] / arrays[f"{side}_length"] * 1024) / 1024
        out[f"policy_{side}"] = per_token * arrays[f"{side}_length"]
        out[f"reference_{side}"] = np.round(arrays[f"reference_{side}"] * 1024) / 1024
    return out


def close(ours: np.ndarray, theirs: np.ndarray, tol: float) -> float:
    """Largest error relative to max(1, |TRL's value|), asserted ≤ ``tol``; returned for the summary."""
    error = float(np.max(np.abs(np.asarray(ours) - np.asarray(theirs)) / np.maximum(1.0, np.abs(theirs))))
    assert error <= tol, error
    return error


def run_case(name: str, divergence: str, alpha: float, dtype: str, seed: int) -> tuple[float, float]:
    """Per-pair losses (TRL on batches of one) and the batch gradient: (largest loss error, largest gradient error)."""
    cfg = config(name, divergence, alpha)
    loss_type, _ = DIVERGENCE_LOSSES[name]
    torch_dtype = {"float64": torch.float64, "float32": torch.float32}[dtype]
    arrays = exactly_summable(random_pairs(PAIRS, seed=seed, gap=1.5))
    with jax.enable_x64(dtype == "float64"):
        per_pair, grads = our_loss_and_grad(name, cfg, arrays, jnp.dtype(dtype))
    trl_pairs = [
        trl_dpo(loss_type, cfg, single_pair(arrays, i), divergence, alpha, torch_dtype)[0] for i in range(PAIRS)
    ]
    trl_loss, _, trl_grads = trl_dpo(loss_type, cfg, arrays, divergence, alpha, torch_dtype)
    _, tol = next((d, t) for d, a, p, t in CASES if (d, a, p) == (divergence, alpha, dtype))
    loss_error = max(close(per_pair, np.array(trl_pairs), tol), close(per_pair.mean(), trl_loss, tol))
    assert np.abs(grads).max() > 1e-3  # the gradient is not trivially zero
    return loss_error, close(grads, trl_grads, tol)


@pytest.mark.parametrize("divergence,alpha,dtype,tol", CASES)
@pytest.mark.parametrize("name", sorted(DIVERGENCE_LOSSES))
def test_f_divergence_losses_and_gradients_match_trl(name, divergence, alpha, dtype, tol):
    for seed in SEEDS:
        run_case(name, divergence, alpha, dtype, seed)


@pytest.mark.parametrize("name", sorted(DIVERGENCE_LOSSES))
def test_reverse_kl_and_its_alpha_limit_are_the_default_loss(name):
    arrays = random_pairs(PAIRS, seed=14, gap=1.5)
    default = LossConfig(terms={name: 1.0}, beta=BETA, **DIVERGENCE_LOSSES[name][1])
    with jax.enable_x64(True):
        plain, _ = our_loss_and_grad(name, default, arrays)
        limit, _ = our_loss_and_grad(name, config(name, "alpha_divergence", 1.0), arrays)
        forward, _ = our_loss_and_grad(name, config(name, "forward_kl", 0.5), arrays)
    np.testing.assert_array_equal(limit, plain)
    assert np.abs(forward - plain).max() > 1e-3  # another divergence is another loss


def test_every_divergence_is_tested():
    assert {case[0] for case in CASES} | {"reverse_kl"} == set(DIVERGENCES)


@pytest.mark.parametrize("name", ["dpo", "hinge"])
def test_alpha_divergence_caps_its_exponent_where_trl_does(name):
    """Log-ratios below −80/(1−α) saturate e^{(α−1)r} at e^80 on both sides (finite in float32, zero gradient)."""
    cfg = config(name, "alpha_divergence", 0.25)
    arrays = exactly_summable(random_pairs(PAIRS, seed=15, gap=1.5))
    arrays["reference_chosen"][:3] += 120.0  # r_w = −120 + noise: (α−1)·r_w ≈ 90 > 80
    with jax.enable_x64(False):
        per_pair, grads = our_loss_and_grad(name, cfg, arrays, jnp.float32)
    trl_loss, _, trl_grads = trl_dpo(DIVERGENCE_LOSSES[name][0], cfg, arrays, "alpha_divergence", 0.25, torch.float32)
    assert np.isfinite(per_pair).all() and per_pair[:3].min() > 1e30  # the capped pairs' loss is e^80-sized
    close(per_pair.mean(), trl_loss, 1e-6)
    close(grads, trl_grads, 1e-6)
    assert (grads[:3] == 0).all()  # no gradient through the cap


def largest_errors() -> dict[str, dict[str, float]]:
    """{"<name> <divergence> <α> <dtype>": {"loss": …, "gradient": …}} over every case and seed
    (asserted as it goes)."""
    out = {}
    for name in sorted(DIVERGENCE_LOSSES):
        for divergence, alpha, dtype, _ in CASES:
            errors = [run_case(name, divergence, alpha, dtype, seed) for seed in SEEDS]
            out[f"{name} {divergence} {alpha} {dtype}"] = {
                "loss": max(e[0] for e in errors),
                "gradient": max(e[1] for e in errors),
            }
    return out


if __name__ == "__main__":  # PYTHONPATH=. python -m tests.test_losses_trl_divergence: the figures in the docs
    import json

    errors = largest_errors()
    summary = {
        dtype: {part: max(e[part] for key, e in errors.items() if key.endswith(dtype)) for part in ("loss", "gradient")}
        for dtype in ("float64", "float32")
    }
    print(json.dumps({"cases": len(errors) * len(SEEDS) * PAIRS, "largest": summary, "per_case": errors}, indent=1))
