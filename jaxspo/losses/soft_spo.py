"""Soft Preference Optimization (Sharifnassab et al., arXiv 2405.00747): the preference terms
(docs/methods/soft-spo.md).

All terms are reference-free and read α = ``loss.params.<term>.alpha`` (:class:`SoftSpoParams`); s = α·log πθ(y)
(sequence log-probs). Each term is a cross-entropy −(1/α) Σ_j q_j log softmax(s)_j between a winner distribution q
and the model's choice among the items:

- ``soft_spo`` (pairs): q = (p̂, 1 − p̂) over (y_w, y_l), p̂ = the pair's ``soft_label`` (1 where the data has none):
  −(1/α)[p̂ log σ(α d) + (1 − p̂) log σ(−α d)], d = log πθ(y_w) − log πθ(y_l) — the Bradley–Terry expectation over
  both orders (the paper's population loss). p̂ = 1 is the hard-label loss −(1/α) log σ(α d), bit for bit.
- ``soft_spo_best_of_n`` (lists): −(1/α) Σ_j q_j log( πθ(y_j)^α / Σ_i πθ(y_i)^α ), q = one-hot at the best response,
  or, for a row with response scores c_j, the soft winners q = softmax(c/τ),
  τ = ``loss.params.<term>.score_temperature``.
- ``soft_spo_ranked`` (lists ranked y_1 ≻ … ≻ y_n, Plackett–Luce): Σ over stages k of the same cross-entropy among
  the items j ≥ k: q⁽ᵏ⁾ = one-hot at y_k, or for a row with scores softmax(c_{j≥k}/τ) [I: soft winners per stage].

A pair is the list [y_w, y_l], so the three agree at n = 2. Under Bradley–Terry / Plackett–Luce data with rewards r
(hard winners drawn from it, or soft winners softmax(r/τ) with τ = 1), the tabular minimiser of each is
softmax(r/α), whatever π_ref is.

Optional weighting μ (γ = ``loss.params.<term>.gamma``, 0 = off). The paper has a weight that down-weights
lists the model itself finds unlikely; its exact form is our design [I]:
log μ = (γ/α)·logsumexp_j α log πθ(y_j), i.e. μ ∝ (Σ_j πθ(y_j)^α)^(γ/α), minus its mean over the
(micro-)batch, under stop-gradient. Under gradient accumulation the mean is per micro-batch.

The global KL regulariser (β_KL, ``loss.kl``) needs on-policy samples; it lives in :mod:`jaxspo.objectives.kl`.

List layout (:class:`ListLogps`): ``policy [B, n]`` sequence log-probs with each row ordered best
first, ``mask [B, n]`` (True where a response exists; lists of different sizes are padded, the
valid entries first) and ``scores [B, n]`` (the responses' scores, NaN on a row without scores).
Every list needs a valid entry 0 (its best response).
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
    """``loss.params.soft_spo``; the list terms' sections have these fields and ``score_temperature``."""

    alpha: float = hyperparameter(1.0, gt=0.0)  # α > 0: softness; the tabular optimum is softmax(r/α)
    gamma: float = 0.0  # γ of the μ weighting [I]; 0 = off


@dataclasses.dataclass(frozen=True)
class SoftSpoListParams(SoftSpoParams):
    """``loss.params.<term>`` of ``soft_spo_best_of_n`` and ``soft_spo_ranked`` (each term has its own section)."""

    score_temperature: float = hyperparameter(1.0, gt=0.0)  # τ > 0: rows with scores c have soft winners softmax(c/τ)


@struct.dataclass
class ListLogps:
    """Per-list sequence log-probs, rows best first. ``policy``, ``lengths`` ``[B, n]`` float; ``mask`` ``[B, n]`` bool;
    ``scores`` ``[B, n]`` float response scores (NaN on a row without scores; None: no row has scores)."""

    policy: jax.Array
    mask: jax.Array
    lengths: jax.Array
    scores: jax.Array | None = None


def _scores(logps: jax.Array, mask: jax.Array, alpha: float) -> jax.Array:
    """α·log πθ ``[B, n]`` with missing entries at a far-negative finite value."""
    return jnp.where(mask, alpha * logps, _FAR)


def _stage_log_choices(values: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``[B, n, n]``: at stage k, log softmax of ``values`` over the valid entries j ≥ k (0 elsewhere), and that set."""
    n = values.shape[-1]
    values = jnp.where(mask, values, _FAR)
    suffix = jax.lax.cumlogsumexp(values, axis=values.ndim - 1, reverse=True)  # [B, n]: logsumexp_{j≥k}
    in_stage = (jnp.arange(n)[None, :] >= jnp.arange(n)[:, None]) & mask[:, None, :]  # [B, k, j]
    return jnp.where(in_stage, values[:, None, :] - suffix[:, :, None], 0.0), in_stage


def best_of_n_loss(logps: jax.Array, mask: jax.Array, alpha: float, winner: jax.Array | None = None) -> jax.Array:
    """−(1/α) Σ_j q_j log softmax(α·logps)_j over the valid entries; ``[B, n]`` → ``[B]``.

    ``winner`` q ``[B, n]``: a distribution over the valid entries; None = entry 0 (the best) with probability 1.
    """
    scores = _scores(logps, mask, alpha)
    log_choice = scores - jax.nn.logsumexp(scores, axis=-1, keepdims=True)
    if winner is None:
        return -log_choice[:, 0] / alpha
    return -(winner * jnp.where(mask, log_choice, 0.0)).sum(-1) / alpha


def plackett_luce_loss(logps: jax.Array, mask: jax.Array, alpha: float, winners: jax.Array | None = None) -> jax.Array:
    """−(1/α) Σ_k Σ_{j≥k} q⁽ᵏ⁾_j [s_j − logsumexp_{i≥k} s_i] over valid k, s = α·logps, rows best first;
    ``[B, n]`` → ``[B]``.

    ``winners`` ``[B, n, n]``: row k the distribution q⁽ᵏ⁾ over the entries j ≥ k; None = entry k at stage k.
    """
    scores = _scores(logps, mask, alpha)
    if winners is None:
        per_stage = scores - jax.lax.cumlogsumexp(scores, axis=scores.ndim - 1, reverse=True)
    else:
        per_stage = (winners * _stage_log_choices(scores, mask)[0]).sum(-1)
    return -jnp.where(mask, per_stage, 0.0).sum(-1) / alpha


def soft_winners(scores: jax.Array, mask: jax.Array, temperature: float) -> jax.Array:
    """Winner distributions ``[B, n, n]`` per stage k: softmax(c_j/τ) over the valid j ≥ k for a row with scores c,
    one-hot at k for a row whose scores are NaN (the hard ranking). Row 0 of each list is best-of-n's q."""
    scored = ~jnp.isnan(scores[:, :1, None])  # [B, 1, 1]
    log_q, in_stage = _stage_log_choices(jnp.where(scored[:, 0], scores, 0.0) / temperature, mask)
    soft = jnp.where(in_stage, jnp.exp(log_q), 0.0)
    return jax.lax.stop_gradient(jnp.where(scored, soft, jnp.eye(scores.shape[-1], dtype=soft.dtype)))


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
    """−(1/α)[p̂ log σ(α d) + (1 − p̂) log σ(−α d)] · μ, d = log πθ(y_w) − log πθ(y_l), p̂ = ``logps.soft_label``;
    SPO, Sharifnassab et al., arXiv 2405.00747.

    α = ``params.alpha``, μ from ``params.gamma`` (:func:`mu_weights`). Rewards are α·log πθ.
    """
    pair = jnp.stack([logps.policy_chosen, logps.policy_rejected], axis=-1)  # [B, 2]
    mask = jnp.ones(pair.shape, bool)
    label = logps.soft_label.astype(pair.dtype)
    winner = jnp.stack([label, 1.0 - label], axis=-1)  # [B, 2]: P(y_w wins), P(y_l wins)
    mu = mu_weights(pair, mask, params.alpha, params.gamma)
    rewards = jax.lax.stop_gradient(params.alpha * pair)
    metrics = {"rewards/chosen": rewards[:, 0], "rewards/rejected": rewards[:, 1]}
    loss = mu * best_of_n_loss(pair, mask, params.alpha, winner)
    return loss, metrics | ({"soft_spo/mu": mu} if params.gamma else {})


def _weighted_list_term(term, winners, logps: ListLogps, params: SoftSpoListParams) -> tuple[jax.Array, PairMetrics]:
    """μ · term(policy [B, n], mask [B, n], α, winners) per list, with the list metrics."""
    mu = mu_weights(logps.policy, logps.mask, params.alpha, params.gamma)
    loss = mu * term(logps.policy, logps.mask, params.alpha, winners)
    return loss, _list_metrics(logps.policy, logps.mask, params.alpha, mu if params.gamma else None)


def _winners(logps: ListLogps, params: SoftSpoListParams) -> jax.Array | None:
    """:func:`soft_winners` of the lists' scores at τ = ``params.score_temperature``; None when the lists have no
    scores."""
    return None if logps.scores is None else soft_winners(logps.scores, logps.mask, params.score_temperature)


@register_loss(
    "soft_spo_best_of_n", needs_reference=False, layout="list", needs_ranking=False, params=SoftSpoListParams
)
def soft_spo_best_of_n(logps: ListLogps, cfg, params: SoftSpoListParams) -> tuple[jax.Array, PairMetrics]:
    """−(1/α) Σ_j q_j log(πθ(y_j)^α / Σ_i πθ(y_i)^α) · μ on lists, q = the best one or softmax(score/τ);
    SPO, Sharifnassab et al., arXiv 2405.00747."""
    winners = _winners(logps, params)
    return _weighted_list_term(best_of_n_loss, None if winners is None else winners[:, 0], logps, params)


@register_loss("soft_spo_ranked", needs_reference=False, layout="list", params=SoftSpoListParams)
def soft_spo_ranked(logps: ListLogps, cfg, params: SoftSpoListParams) -> tuple[jax.Array, PairMetrics]:
    """Plackett–Luce −(1/α) Σ_k Σ_{j≥k} q⁽ᵏ⁾_j log softmax(α log πθ(y_k..n))_j · μ, q⁽ᵏ⁾ = y_k or softmax(score/τ);
    SPO, Sharifnassab et al., arXiv 2405.00747."""
    return _weighted_list_term(plackett_luce_loss, _winners(logps, params), logps, params)
