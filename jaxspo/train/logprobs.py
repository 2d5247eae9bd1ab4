"""Per-token and per-sequence log-probabilities of given tokens under a model, and the full-vocabulary KL."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def positions_from_valid(valid: jax.Array) -> jax.Array:
    """Positions ``[B, T]`` counting only valid tokens, so left or right padding both give 0, 1, …"""
    return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1, 0)


def forward_logits(graphdef: nnx.GraphDef, params: nnx.State, tokens: jax.Array, valid: jax.Array) -> jax.Array:
    """Logits ``[B, T, V]`` float32 for tokens ``[B, T]`` with validity mask ``[B, T]``."""
    model = nnx.merge(graphdef, params)
    return model(tokens, positions_from_valid(valid), valid)


def token_logps(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """log p(tokens[:, t] | tokens[:, <t]) for t ≥ 1: ``[B, T-1]`` (no second [B, T, V] buffer)."""
    logits = logits[:, :-1]  # [B, T-1, V] predicting tokens[:, 1:]
    picked = jnp.take_along_axis(logits, tokens[:, 1:, None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def target_logps(model: nnx.Module, features: jax.Array, targets: jax.Array) -> jax.Array:
    """log softmax(model.logits(features))[targets]: features ``[B, N, D]``, targets ``[B, N]`` → ``[B, N]`` float32
    (:func:`head_outputs`)."""
    return head_outputs(model, features, targets)[0]


def head_outputs(
    model: nnx.Module, features: jax.Array, targets: jax.Array, square_mass: bool = False
) -> tuple[jax.Array, ...]:
    """(log p(targets) ``[B, N]``,) from the LM head on features ``[B, N, D]``, and with ``square_mass`` also
    log Σ_v p(v)² ``[B, N]`` (no gradient; WPO's weights) from the same logits. All float32.

    With ``model.logprob_chunk = c > 0`` the N positions go through the LM head ``c`` at a time
    (``lax.map`` over chunks, each rematerialised), so at most ``[B, c, V]`` float32 logits exist at once,
    in the forward and in the backward pass; the result equals the all-at-once computation.
    """

    def one(x: jax.Array, t: jax.Array) -> tuple[jax.Array, ...]:
        logits = model.logits(x)  # [B, n, V] float32
        log_z = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0] - log_z
        if not square_mass:
            return (picked,)
        return picked, jax.lax.stop_gradient(jax.nn.logsumexp(2.0 * logits, axis=-1) - 2.0 * log_z)

    chunk, (b, n) = model.logprob_chunk, targets.shape
    if not chunk or chunk >= n:
        return one(features, targets)
    extra = (-n) % chunk
    x = (
        jnp.pad(features, ((0, 0), (0, extra), (0, 0))).reshape(b, -1, chunk, features.shape[-1]).swapaxes(0, 1)
    )  # [n/c, B, c, D]
    t = jnp.pad(targets, ((0, 0), (0, extra))).reshape(b, -1, chunk).swapaxes(0, 1)  # [n/c, B, c]
    outs = jax.lax.map(jax.checkpoint(lambda xt: one(*xt), prevent_cse=False), (x, t))  # each [n/c, B, c]
    return tuple(out.swapaxes(0, 1).reshape(b, -1)[:, :n] for out in outs)


def aligned_mean(logps: jax.Array, square_mass: jax.Array, mask: jax.Array) -> jax.Array:
    """WPO's mean over a row's masked tokens of log p(y_t) − log Σ_v p(v)², ``[B]`` from ``[B, N]`` each (no
    gradient; 0 for a row without tokens). exp of a pair's two means is its weight (Zhou et al., arXiv 2406.11827)."""
    total = ((logps - square_mass) * mask).sum(-1)
    return jax.lax.stop_gradient(total / jnp.maximum(mask.sum(-1), 1.0))


def sequence_logps(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    tokens: jax.Array,
    valid: jax.Array,
    loss_mask: jax.Array,
    token_weight: jax.Array | None = None,
    aligned: bool = False,
) -> tuple[jax.Array, ...]:
    """Sum of log-probs over the masked tokens and their count, each ``[B]`` float32; with ``aligned`` also the
    rows' :func:`aligned_mean` ``[B]`` (WPO).

    ``loss_mask[:, t]`` marks token t as a response token (never t = 0). ``token_weight`` ``[B, T]`` (token t's
    weight, 0 off the response) makes the sum a weighted one; the count and the aligned mean stay unweighted.
    """
    model = nnx.merge(graphdef, params)
    features = model.features(tokens, positions_from_valid(valid), valid)  # [B, T, D]: slot t predicts token t + 1
    # the last slot predicts nothing (a masked dummy target), so the time axis keeps its width T and its split over
    # context
    outs = head_outputs(model, features, _shift_left(tokens), aligned)  # [B, T] each
    mask = _shift_left(loss_mask).astype(jnp.float32)
    weight = mask if token_weight is None else _shift_left(token_weight).astype(jnp.float32)
    sums = ((outs[0] * weight).sum(-1), mask.sum(-1))
    return sums + ((aligned_mean(outs[0], outs[1], mask),) if aligned else ())


def _shift_left(x: jax.Array) -> jax.Array:
    """``x[:, 1:]`` padded back to ``[B, T]`` with a zero (False) last column."""
    return jnp.pad(x[:, 1:], ((0, 0), (0, 1)))


def full_vocab_kl(policy_logits: jax.Array, reference_logits: jax.Array) -> jax.Array:
    """Σ_v πθ(v)(log πθ(v) − log π_ref(v)) over the last axis: ``[..., V]`` logits → ``[...]`` nats."""
    policy = jax.nn.log_softmax(policy_logits)
    return (jnp.exp(policy) * (policy - jax.nn.log_softmax(reference_logits))).sum(-1)


def sequence_kl(
    policy: tuple[nnx.GraphDef, nnx.State],
    reference: tuple[nnx.GraphDef, nnx.State],
    tokens: jax.Array,
    valid: jax.Array,
    response: jax.Array,
) -> jax.Array:
    """Σ over response positions of the full-vocabulary KL(πθ ‖ π_ref) of the next-token distribution, ``[N]`` nats.

    ``response[:, t]`` marks token t as generated; position t−1's distribution produced it. The tokens
    are data (no gradient through them); the gradient w.r.t. the policy's params flows through πθ's
    distributions. ``policy`` and ``reference`` are (graph, params) pairs (a LoRA policy's graph differs).
    """
    policy_logits = forward_logits(*policy, tokens, valid)[:, :-1]  # [N, T-1, V]
    reference_logits = forward_logits(*reference, tokens, valid)[:, :-1]
    return (full_vocab_kl(policy_logits, reference_logits) * response[:, 1:]).sum(-1)
