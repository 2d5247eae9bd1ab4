"""Splash attention for packed pair rows: segment-id calls over disjoint key sets, merged through log-sum-exps.

Packed rows (:mod:`jaxspo.data.layout`) carry ``segment = 3·pair + role`` (role 0 prompt, 1 chosen, 2
rejected; one pair per row gives 0/1/2) and positions that restart per pair and, for the rejected half,
after the prompt. A query sees a valid, earlier key of its own segment or of its pair's prompt. Splash
segment ids can only say "same id", so one row's attention runs as parts whose key sets are disjoint and
together are exactly the visible keys, each causal (or local on sliding layers) over slots:

- prompt part: q id = the query's pair, kv id = the pair on prompt keys (response keys match nothing);
- response part: q id = kv id = the segment for response tokens (prompt queries match nothing);
- on models with a window, the rejected queries' prompt part runs as a third call with each rejected query
  moved to its *virtual slot* (its pair's first slot + its position), where slot distances to the prompt
  keys equal position distances, so the local mask over slots is the window over positions. (The
  prompt part then keeps prompt and chosen queries only.)

Merge: ``out = Σ a_j·o_j``, ``a_j = exp(lse_j − lse)``, ``lse = logaddexp_j(lse_j)``; a part in which a
query sees no key (splash leaves log-sum-exp at ``mask_value + log n`` or ``-inf`` there, and its output
the mean of v or NaN) gets weight 0; a query that sees nothing at all gets output 0.

Backward: splash's VJP (``_splash_attention_bwd`` of the pinned jax) reads residuals ``(q, k, v, segment
ids, sinks, out, logsumexp, dq and dkv mask infos)`` and computes ``D = rowsum(dout ∘ out)``. Part j's
cotangents are ``dout_j = a_j·dout`` and ``dlse_j = a_j·(dout·o_j − dout·out)``, so the softmax gradient
``P_j∘(dP_j − D_j + dlse_j)`` has ``D_j − dlse_j = rowsum(dout_j ∘ out)``: the part's own backward with
the *merged* output as its residual output. ``tests/test_splash_packed.py`` pins that private function.

Shapes (one row, heads first as the kernel takes them): q ``[H, T, Hd]``, k/v ``[K, T, Hd]``, segment ids,
slots and index maps ``[T]``, log-sum-exps ``[H, T]``.
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
    """One splash call of the cascade over a row of T slots."""

    ids: splash.SegmentIds  # q [Tq] in kernel-row order, kv [S] in slot order
    source: jax.Array | None = None  # [Tq] int32: the query slot at each kernel row (-1: none); None: the same order
    target: jax.Array | None = None  # [Tq] int32: the kernel row of each query slot (-1: not in this part); None: the same


def cascade_parts(valid: jax.Array, segments: jax.Array, positions: jax.Array, query_slots: jax.Array, windowed: bool) -> tuple[Part, ...]:
    """The parts of one packed row: valid/segments/positions ``[S]`` over the keys, queries at key slots
    ``query_slots [Tq]`` (a slice of the row under context parallelism); ``windowed`` adds the rejected
    queries' virtual-slot prompt part (module docstring; needs the whole row, Tq = S)."""
    pair, role = segments // ROLES, segments % ROLES
    prompt_keys = jnp.where(valid & (role == 0), pair, NO_KEY)
    response = valid & (role > 0)
    q_valid, q_pair, q_role, q_segments, q_response = (x[query_slots] for x in (valid, pair, role, segments, response))
    own = Part(splash.SegmentIds(jnp.where(q_response, q_segments, NO_QUERY), jnp.where(response, segments, NO_KEY)))
    moved = q_valid & (q_role == 2) if windowed else jnp.zeros_like(q_valid)
    prompt = Part(splash.SegmentIds(jnp.where(q_valid & ~moved, q_pair, NO_QUERY), prompt_keys))
    if not windowed:
        return prompt, own
    if query_slots.shape != valid.shape:
        raise ValueError("the windowed cascade moves rejected queries within their row: it needs the whole row's queries")
    slots = jnp.arange(valid.shape[0], dtype=jnp.int32)
    starts = valid & ((slots == 0) | (pair != jnp.roll(pair, 1)) | ~jnp.roll(valid, 1))  # a pair's first slot
    virtual = jax.lax.cummax(jnp.where(starts, slots, -1)) + positions  # ≤ the slot; distinct over rejected queries
    target = jnp.where(moved, virtual, -1)
    source = jnp.full_like(slots, -1).at[jnp.where(moved, virtual, slots.shape[0])].set(slots, mode="drop")
    q_ids = jnp.where(source >= 0, pair[jnp.maximum(source, 0)], NO_QUERY)
    return prompt, own, Part(splash.SegmentIds(q_ids, prompt_keys), source, target)


def _rows(x: jax.Array, index: jax.Array | None) -> jax.Array:
    """``x [H, T, ...]`` reordered along T by ``index [T]`` (entries -1 give zeros; None keeps the order)."""
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
        kw["save_residuals"], kw["mask_value"], kw["is_mqa"], kw["block_sizes"], kw["residual_checkpoint_name"],
        kw["mask_function"], kw["attn_logits_soft_cap"], kw["interpret"], residuals, dout,
    )
    return grads[3], grads[4], grads[5]


def _forward(kernels, q, k, v, parts, sliding):
    """Merged output ``[H, T, Hd]``, each part's weights ``[J, H, T]`` (slot order) and its kernel-order
    log-sum-exps ``[J, H, T]`` (0 where a row saw nothing)."""
    outs, lses, kernel_lses = [], [], []
    for part in parts:
        out, (lse,) = pick_kernel(sliding, kernels, lambda kernel: kernel(_rows(q, part.source), k, v, part.ids))
        seen = lse > SEEN
        kernel_lses.append(jnp.where(seen, lse, 0.0))
        seen, lse, out = _rows(seen, part.target), _rows(lse, part.target), _rows(out, part.target)
        outs.append(jnp.where(seen[..., None], out.astype(_F32), 0.0))
        lses.append(jnp.where(seen, lse, -jnp.inf))
    lses = jnp.stack(lses)  # [J, H, T]
    top = lses.max(0)
    weights = jnp.exp(lses - jnp.where(jnp.isfinite(top), top, 0.0))
    total = weights.sum(0)
    weights = weights / jnp.where(total > 0, total, 1.0)
    out = sum(w[..., None] * o for w, o in zip(weights, outs))
    return out.astype(q.dtype), weights, jnp.stack(kernel_lses)


@jax.custom_vjp
def cascade(kernels: tuple, q: jax.Array, k: jax.Array, v: jax.Array, parts: tuple[Part, ...], sliding: jax.Array) -> jax.Array:
    """The packed-row attention ``out [H, T, Hd]`` of one row's ``parts`` (from :func:`cascade_parts`) over
    ``kernels`` (causal and local-or-None splash kernels built with ``save_residuals``), differentiable in
    q ``[H, T, Hd]``, k and v ``[K, S, Hd]``."""
    return _forward(kernels, q, k, v, parts, sliding)[0]


def _cascade_forward(kernels, q, k, v, parts, sliding):
    out, weights, kernel_lses = _forward(kernels, q, k, v, parts, sliding)
    return out, (kernels, q, k, v, parts, sliding, out, weights, kernel_lses)


def _cascade_backward(residuals, dout):
    kernels, q, k, v, parts, sliding, out, weights, kernel_lses = residuals
    dq, dk, dv = jnp.zeros(q.shape, _F32), jnp.zeros(k.shape, _F32), jnp.zeros(v.shape, _F32)
    for part, weight, lse in zip(parts, weights, kernel_lses):
        part_dout = _rows((weight[..., None] * dout.astype(_F32)).astype(q.dtype), part.source)
        args = (_rows(q, part.source), k, v, part.ids, _rows(out, part.source), lse, part_dout)
        dq_part, dk_part, dv_part = pick_kernel(sliding, kernels, lambda kernel: part_backward(kernel, *args))
        dq, dk, dv = dq + _rows(dq_part.astype(_F32), part.target), dk + dk_part, dv + dv_part
    return None, dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


cascade.defvjp(_cascade_forward, _cascade_backward)
