"""Self-supervised preference-degree losses (selfsup; Li et al., arXiv 2409.17791, EMNLP 2024 Findings).

L = L_align + λ·L_degree (docs/methods/selfsup.md). From each response y the data pipeline makes copies
ỹ^(1) … ỹ^(K) with more and more key content removed (:mod:`jaxspo.data.degrade`); ỹ^(0) = y.
The degree losses here are pure functions of per-level values ``[..., K + 1]`` with a validity mask
(level 0 always valid; a level that removes nothing more than the one before is invalid) [I]:

- ``ranking`` / ``plackett_luce``: −(1/|terms|) Σ_k [r_k − logsumexp_{j ≥ k} r_j] over valid levels k that
  have a valid level after them — the Plackett–Luce likelihood of the order ỹ^(0) ≻ … ≻ ỹ^(K);
- ``ranking`` / ``pairwise``: mean over valid pairs i < j of −log σ(r_i − r_j);
- ``classify``: cross-entropy of a head's level logits ``[..., K + 1, K + 1]`` against the level k.

The rewards r are the base loss's implicit reward of each copy (:func:`level_rewards`):
β·log πθ/π_ref (``log_ratio``), β·log πθ/|y| (``mean_logp``, SimPO's) or β·log πθ (``logp``, CPO's).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# callers import the settings from here too
from jaxspo.losses.selfsup_config import DEGRADE_SIDES, SelfsupConfig  # noqa: F401


def level_rewards(
    kind: str, beta: float, policy: jax.Array, reference: jax.Array | None, lengths: jax.Array
) -> jax.Array:
    """Implicit reward of sequences from their summed log-probs (any shape; ``reference`` None = π_ref ≡ 1)."""
    if kind == "log_ratio":
        return beta * (policy if reference is None else policy - reference)
    if kind == "mean_logp":
        return beta * policy / jnp.maximum(lengths, 1.0)
    if kind == "logp":
        return beta * policy
    raise ValueError(f"unknown selfsup reward '{kind}'")


def _masked_mean(values: jax.Array, mask: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    mask = mask.astype(values.dtype)
    return jnp.where(mask > 0, values, 0.0).sum(axes) / jnp.maximum(mask.sum(axes), 1.0)


def plackett_luce_loss(rewards: jax.Array, valid: jax.Array) -> jax.Array:
    """−mean_k log P_PL(level k first among the valid levels ≥ k), ``rewards``/``valid`` ``[..., L]`` → ``[...]``.

    Terms: valid k with a valid level after it; 0 where there is none.
    """
    masked = jnp.where(valid, rewards, -1e30)  # finite: no NaN gradients through the cumulative logsumexp
    tail = jax.lax.cumlogsumexp(masked, axis=masked.ndim - 1, reverse=True)  # logsumexp over valid j ≥ k
    later = jnp.flip(jnp.cumsum(jnp.flip(valid.astype(jnp.int32), -1), -1), -1) - valid  # valid levels after k
    term = valid & (later > 0)
    log_prob = jnp.where(term, rewards - jnp.where(term, tail, 0.0), 0.0)
    return -_masked_mean(log_prob, term, (-1,))


def pairwise_loss(rewards: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean over valid level pairs i < j of −log σ(r_i − r_j), ``[..., L]`` → ``[...]`` (0 without pairs)."""
    levels = rewards.shape[-1]
    upper = jnp.triu(jnp.ones((levels, levels), bool), k=1)
    pairs = upper & valid[..., :, None] & valid[..., None, :]
    diff = rewards[..., :, None] - rewards[..., None, :]
    return _masked_mean(-jax.nn.log_sigmoid(diff), pairs, (-2, -1))


def pairwise_accuracy(rewards: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(number of valid pairs i < j with r_i > r_j, number of valid pairs), each ``[...]``."""
    levels = rewards.shape[-1]
    pairs = jnp.triu(jnp.ones((levels, levels), bool), k=1) & valid[..., :, None] & valid[..., None, :]
    right = pairs & (rewards[..., :, None] > rewards[..., None, :])
    return right.sum((-2, -1)).astype(jnp.float32), pairs.sum((-2, -1)).astype(jnp.float32)


def classify_loss(logits: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean over valid levels k of −log softmax(logits[..., k, :])[k], ``[..., L, L]`` → ``[...]``.

    Rows with only level 0 valid count too (a single-level response still teaches "undegraded").
    """
    picked = jnp.diagonal(jax.nn.log_softmax(logits, axis=-1), axis1=-2, axis2=-1)  # [..., L]: log p(level k | copy k)
    return -_masked_mean(picked, valid, (-1,))


def ranking_degree_loss(rewards: jax.Array, valid: jax.Array, form: str) -> jax.Array:
    """``plackett_luce`` or ``pairwise`` degree loss per source ``[B, S]``, averaged over sources → ``[B]``."""
    fn = plackett_luce_loss if form == "plackett_luce" else pairwise_loss
    return fn(rewards, valid).mean(-1)
