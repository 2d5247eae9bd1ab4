"""Splash attention for packed pair rows: segment-id calls over disjoint key sets, merged through log-sum-exps.

Packed rows (:mod:`jaxspo.data.layout`) carry ``segment = 3·pair + role`` (role 0 prompt, 1 chosen, 2
rejected; one pair per row gives 0/1/2) and positions that restart per pair and, for the rejected half,
after the prompt. A query sees a valid, earlier key of its own segment or of its pair's prompt. Splash
segment ids can only say "same id", so one row's attention runs as parts whose key sets are disjoint and
together are exactly the visible keys, each causal (or local on sliding layers) over slots:

- prompt part: q id = the query's pair, kv id = the pair on prompt keys (response keys match nothing);
- response part: q id = kv id = the segment for response tokens (prompt queries match nothing);
- on models with a window, the rejected queries' prompt part runs as a third call over the pair's prompt
  keys moved ``c`` slots later (``c`` = the pair's chosen length, still inside the pair's slots and before
  its rejected half): the rejected positions restart after the prompt, so there slot distances equal
  position distances and the local mask over slots is the window over positions. (The prompt part then
  keeps prompt and chosen queries only.) Only keys move, and every device holds all keys, so this also
  runs with the queries split over devices (context parallelism).

Merge: ``out = Σ a_j·o_j``, ``a_j = exp(lse_j − lse)``, ``lse = logaddexp_j(lse_j)``; a part in which a
query sees no key (splash leaves log-sum-exp at ``mask_value + log n`` or ``-inf`` there, and its output
the mean of v or NaN) gets weight 0; a query that sees nothing at all gets output 0.

Backward: splash's VJP (``_splash_attention_bwd`` of the pinned jax) reads residuals ``(q, k, v, segment
ids, sinks, out, logsumexp, dq and dkv mask infos)`` and computes ``D = rowsum(dout ∘ out)``. Part j's
cotangents are ``dout_j = a_j·dout`` and ``dlse_j = a_j·(dout·o_j − dout·out)``, so the softmax gradient
``P_j∘(dP_j − D_j + dlse_j)`` has ``D_j − dlse_j = rowsum(dout_j ∘ out)``: the part's own backward with
the *merged* output as its residual output. ``tests/test_splash_packed.py`` pins that private function.

Shapes (one row, heads first as the kernel takes them): q ``[H, Tq, Hd]``, k/v ``[K, S, Hd]``, segment ids
and key maps ``[Tq]``/``[S]``, log-sum-exps ``[H, Tq]``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_kernel

_F32 = jnp.float32
NO_QUERY, NO_KEY = -1, -2  # segment ids that match nothing (and not each other)
SEEN = splash_kernel.DEFAULT_MASK_VALUE / 2  # a log-sum-exp above this saw at least one key
ROLES = 3  # segment = 3·pair + role


class Part(NamedTuple):
    """One splash call of the cascade over a row's queries (in their own order) and its S key slots."""

    ids: splash.SegmentIds  # q [Tq]; kv [S] in kernel key order
    key_source: jax.Array | None = (
        None  # [S] int32: the key slot at each kernel key position (-1: none); None: the same order
    )
    key_target: jax.Array | None = (
        None  # [S] int32: the kernel key position of each key slot (-1: not in this part); None: the same
    )


def cascade_parts(valid: jax.Array, segments: jax.Array, query_slots: jax.Array, windowed: bool) -> tuple[Part, ...]:
    """The parts of one packed row: valid/segments ``[S]`` over the keys, queries at key slots ``query_slots
    [Tq]`` (a slice of the row under context parallelism); ``windowed`` adds the rejected queries' prompt
    part over moved prompt keys (module docstring: the layout's positions fix the move)."""
    slots = jnp.arange(valid.shape[0], dtype=jnp.int32)
    pair, role = segments // ROLES, segments % ROLES
    prompt = valid & (role == 0)
    response = valid & (role > 0)
    q_valid, q_pair, q_role, q_segments, q_response = (x[query_slots] for x in (valid, pair, role, segments, response))
    own = Part(splash.SegmentIds(jnp.where(q_response, q_segments, NO_QUERY), jnp.where(response, segments, NO_KEY)))
    rejected = q_valid & (q_role == 2) if windowed else jnp.zeros_like(q_valid)
    first = Part(splash.SegmentIds(jnp.where(q_valid & ~rejected, q_pair, NO_QUERY), jnp.where(prompt, pair, NO_KEY)))
    if not windowed:
        return first, own
    chosen = jnp.zeros_like(slots).at[pair].add((valid & (role == 1)).astype(jnp.int32))  # chosen tokens per pair
    key_target = jnp.where(prompt, slots + chosen[pair], -1)  # inside the pair's slots, distinct
    key_source = jnp.full_like(slots, -1).at[jnp.where(prompt, key_target, slots.shape[0])].set(slots, mode="drop")
    kv_ids = jnp.where(key_source >= 0, pair[jnp.maximum(key_source, 0)], NO_KEY)
    moved = Part(splash.SegmentIds(jnp.where(rejected, q_pair, NO_QUERY), kv_ids), key_source, key_target)
    return first, own, moved


def _rows(x: jax.Array, index: jax.Array | None) -> jax.Array:
    """``x [H, S, ...]`` reordered along S by ``index [S]`` (entries -1 give zeros; None keeps the order)."""
    if index is None:
        return x
    taken = jnp.take(x, jnp.maximum(index, 0), axis=1)
    return jnp.where((index >= 0).reshape(1, -1, *([1] * (x.ndim - 2))), taken, 0)


def pick_kernel(sliding: jax.Array, kernels: tuple, call):
    """``call(kernel)`` with the local kernel on sliding layers (``kernels = (causal, local or None)``)."""
    causal, local = kernels
    if local is None:
        return call(causal)
    return jax.lax.cond(sliding, lambda: call(local), lambda: call(causal))


def _collapsed(info):
    """A mask info with its partial mask blocks flattened to ``[n, bq, bk]``, as splash hands them to its VJP."""
    if info is None or info.partial_mask_blocks is None:
        return info
    return info._replace(partial_mask_blocks=info.partial_mask_blocks.reshape(-1, *info.partial_mask_blocks.shape[-2:]))


def part_backward(kernel, q, k, v, ids, out, lse, dout) -> tuple[jax.Array, jax.Array, jax.Array]:
    """dq, dk, dv of one splash call (``kernel`` built with ``save_residuals``) from residual ``out [H, T, Hd]``,
    ``lse [H, T]`` and cotangent ``dout [H, T, Hd]``, through the pinned jax's private VJP of the kernel."""
    kw = kernel.kwargs
    residuals = (q, k, v, ids, None, out, lse, _collapsed(kernel.dq_mask_info), _collapsed(kernel.dkv_mask_info))
    grads = splash_kernel._splash_attention_bwd(
        kw["save_residuals"],
        kw["mask_value"],
        kw["is_mqa"],
        kw["block_sizes"],
        kw["residual_checkpoint_name"],
        kw["mask_function"],
        kw["attn_logits_soft_cap"],
        kw["interpret"],
        residuals,
        dout,
    )
    return grads[3], grads[4], grads[5]


def _forward(kernels, q, k, v, parts, sliding):
    """Merged output ``[H, Tq, Hd]``, each part's weights ``[J, H, Tq]`` and log-sum-exps ``[J, H, Tq]`` (0 where
    a query saw nothing in the part)."""
    outs, lses, seens = [], [], []
    for part in parts:
        part_k, part_v = _rows(k, part.key_source), _rows(v, part.key_source)
        out, (lse,) = pick_kernel(sliding, kernels, lambda kernel: kernel(q, part_k, part_v, part.ids))
        seen = lse > SEEN
        outs.append(jnp.where(seen[..., None], out.astype(_F32), 0.0))
        lses.append(jnp.where(seen, lse, 0.0))
        seens.append(seen)
    seens = jnp.stack(seens)  # [J, H, Tq]
    lses = jnp.stack(lses)
    top = jnp.where(seens, lses, -jnp.inf).max(0)
    weights = jnp.where(seens, jnp.exp(lses - jnp.where(jnp.isfinite(top), top, 0.0)), 0.0)
    total = weights.sum(0)
    weights = weights / jnp.where(total > 0, total, 1.0)
    out = sum(w[..., None] * o for w, o in zip(weights, outs))
    return out.astype(q.dtype), weights, lses


@jax.custom_vjp
def cascade(
    kernels: tuple, q: jax.Array, k: jax.Array, v: jax.Array, parts: tuple[Part, ...], sliding: jax.Array
) -> jax.Array:
    """The packed-row attention ``out [H, T, Hd]`` of one row's ``parts`` (from :func:`cascade_parts`) over
    ``kernels`` (causal and local-or-None splash kernels built with ``save_residuals``), differentiable in
    q ``[H, T, Hd]``, k and v ``[K, S, Hd]``."""
    return _forward(kernels, q, k, v, parts, sliding)[0]


def _cascade_forward(kernels, q, k, v, parts, sliding):
    out, weights, kernel_lses = _forward(kernels, q, k, v, parts, sliding)
    return out, (kernels, q, k, v, parts, sliding, out, weights, kernel_lses)


def _cascade_backward(residuals, dout):
    kernels, q, k, v, parts, sliding, out, weights, lses = residuals
    dq, dk, dv = jnp.zeros(q.shape, _F32), jnp.zeros(k.shape, _F32), jnp.zeros(v.shape, _F32)
    for part, weight, lse in zip(parts, weights, lses):
        part_dout = (weight[..., None] * dout.astype(_F32)).astype(q.dtype)
        args = (q, _rows(k, part.key_source), _rows(v, part.key_source), part.ids, out, lse, part_dout)
        dq_part, dk_part, dv_part = pick_kernel(sliding, kernels, lambda kernel: part_backward(kernel, *args))
        dq = dq + dq_part
        dk, dv = dk + _rows(dk_part.astype(_F32), part.key_target), dv + _rows(dv_part.astype(_F32), part.key_target)
    return None, dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


cascade.defvjp(_cascade_forward, _cascade_backward)
