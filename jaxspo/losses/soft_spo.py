"""Soft Preference Optimization (Sharifnassab et al., arXiv 2405.00747): the preference terms (docs/methods/soft-spo.md).

All terms are reference-free and read α = ``loss.params.<term>.alpha`` (:class:`SoftSpoParams`); s = α·log πθ(y) (sequence log-probs):

- ``soft_spo`` (pairs): −(1/α) log σ(α[log πθ(y_w) − log πθ(y_l)])
- ``soft_spo_best_of_n`` (lists): −(1/α) log( πθ(y_best)^α / Σ_j πθ(y_j)^α )
- ``soft_spo_ranked`` (lists ranked y_1 ≻ … ≻ y_n, Plackett–Luce):
  −(1/α) Σ_k [α log πθ(y_k) − logsumexp_{j≥k} α log πθ(y_j)]

A pair is the list [y_w, y_l], so the three agree at n = 2. Under Bradley–Terry / Plackett–Luce data
with rewards r, the tabular minimiser of each is softmax(r/α), whatever π_ref is.

Optional weighting μ (γ = ``loss.params.<term>.gamma``, 0 = off). The paper has a weight that down-weights
lists the model itself finds unlikely; its exact form is our design [I]:
log μ = (γ/α)·logsumexp_j α log πθ(y_j), i.e. μ ∝ (Σ_j πθ(y_j)^α)^(γ/α), minus its mean over the
(micro-)batch, under stop-gradient. Under gradient accumulation the mean is per micro-batch.

The global KL regulariser (β_KL, ``loss.kl``) needs on-policy samples; it lives in :mod:`jaxspo.objectives.kl`.

List layout (:class:`ListLogps`): ``policy [B, n]`` sequence log-probs with each row ordered best
first and ``mask [B, n]`` (True where a response exists; lists of different sizes are padded, the
valid entries first). Every list needs a valid entry 0 (its best response).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from jaxspo.losses.registry import PairLogps, PairMetrics, hyperparameter, register_loss

_FAR = -1e30  # score of a missing list entry: exp(_FAR − x) = 0, and finite gradients (no −inf − −inf)


@dataclasses.dataclass(frozen=True)
class SoftSpoParams:
    """``loss.params.<term>`` of ``soft_spo``, ``soft_spo_best_of_n`` and ``soft_spo_ranked`` (each term has its own section)."""

    alpha: float = hyperparameter(1.0, gt=0.0)  # α > 0: softness; the tabular optimum is softmax(r/α)
    gamma: float = 0.0  # γ of the μ weighting [I]; 0 = off


@struct.dataclass
class ListLogps:
    """Per-list sequence log-probs, rows best first. ``policy``, ``lengths`` ``[B, n]`` float; ``mask`` ``[B, n]`` bool."""

    policy: jax.Array
    mask: jax.Array
    lengths: jax.Array


def _scores(logps: jax.Array, mask: jax.Array, alpha: float) -> jax.Array:
    """α·log πθ ``[B, n]`` with missing entries at a far-negative finite value."""
    return jnp.where(mask, alpha * logps, _FAR)


def best_of_n_loss(logps: jax.Array, mask: jax.Array, alpha: float) -> jax.Array:
    """−(1/α) log softmax(α·logps)[best], the best being entry 0 of each row; ``[B, n]`` → ``[B]``."""
    scores = _scores(logps, mask, alpha)
    return -(scores[:, 0] - jax.nn.logsumexp(scores, axis=-1)) / alpha


def plackett_luce_loss(logps: jax.Array, mask: jax.Array, alpha: float) -> jax.Array:
    """−(1/α) Σ_k [s_k − logsumexp_{j≥k} s_j] over valid k, s = α·logps, rows best first; ``[B, n]`` → ``[B]``."""
    scores = _scores(logps, mask, alpha)
    suffix = jax.lax.cumlogsumexp(scores, axis=scores.ndim - 1, reverse=True)  # [B, n]: logsumexp_{j≥k} s_j
    return -jnp.where(mask, scores - suffix, 0.0).sum(-1) / alpha


def mu_weights(logps: jax.Array, mask: jax.Array, alpha: float, gamma: float) -> jax.Array:
    """μ ``[B]`` [I]: exp((γ/α)·logsumexp_j α·logps − its batch mean), stop-gradient; ones when γ = 0."""
    if gamma == 0:
        return jnp.ones(logps.shape[:1], logps.dtype)
    log_mu = (gamma / alpha) * jax.nn.logsumexp(_scores(logps, mask, alpha), axis=-1)
    return jax.lax.stop_gradient(jnp.exp(log_mu - log_mu.mean()))


def _list_metrics(logps: jax.Array, mask: jax.Array, alpha: float, mu: jax.Array) -> PairMetrics:
    scores = jax.lax.stop_gradient(_scores(logps, mask, alpha))
    metrics = {"list/top1_accuracy": (jnp.argmax(scores, axis=-1) == 0).astype(jnp.float32)}
    return metrics | ({"soft_spo/mu": mu} if mu is not None else {})


@register_loss("soft_spo", needs_reference=False, params=SoftSpoParams)
def soft_spo(logps: PairLogps, cfg, params: SoftSpoParams) -> tuple[jax.Array, PairMetrics]:
    """−(1/α) log σ(α[log πθ(y_w) − log πθ(y_l)]) · μ; SPO, Sharifnassab et al., arXiv 2405.00747.

    α = ``params.alpha``, μ from ``params.gamma`` (:func:`mu_weights`). Rewards are α·log πθ.
    """
    pair = jnp.stack([logps.policy_chosen, logps.policy_rejected], axis=-1)  # [B, 2]
    mask = jnp.ones(pair.shape, bool)
    mu = mu_weights(pair, mask, params.alpha, params.gamma)
    rewards = jax.lax.stop_gradient(params.alpha * pair)
    metrics = {"rewards/chosen": rewards[:, 0], "rewards/rejected": rewards[:, 1]}
    return mu * best_of_n_loss(pair, mask, params.alpha), metrics | ({"soft_spo/mu": mu} if params.gamma else {})


def _weighted_list_term(term, logps: ListLogps, params: SoftSpoParams) -> tuple[jax.Array, PairMetrics]:
    """μ · term(policy [B, n], mask [B, n], α) per list, with the list metrics."""
    mu = mu_weights(logps.policy, logps.mask, params.alpha, params.gamma)
    loss = mu * term(logps.policy, logps.mask, params.alpha)
    return loss, _list_metrics(logps.policy, logps.mask, params.alpha, mu if params.gamma else None)


@register_loss("soft_spo_best_of_n", needs_reference=False, layout="list", params=SoftSpoParams)
def soft_spo_best_of_n(logps: ListLogps, cfg, params: SoftSpoParams) -> tuple[jax.Array, PairMetrics]:
    """−(1/α) log(πθ(y_best)^α / Σ_j πθ(y_j)^α) · μ on lists; SPO, Sharifnassab et al., arXiv 2405.00747."""
    return _weighted_list_term(best_of_n_loss, logps, params)


@register_loss("soft_spo_ranked", needs_reference=False, layout="list", params=SoftSpoParams)
def soft_spo_ranked(logps: ListLogps, cfg, params: SoftSpoParams) -> tuple[jax.Array, PairMetrics]:
    """Plackett–Luce −(1/α) Σ_k log softmax(α log πθ(y_k..n))[0] · μ; SPO, Sharifnassab et al., arXiv 2405.00747."""
    return _weighted_list_term(plackett_luce_loss, logps, params)
