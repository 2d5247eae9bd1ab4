"""Ring attention: context parallelism that never gathers the keys (``model.context_attention=ring``).

Runs inside the ``shard_map`` of :func:`jaxspo.models.context.context_attention`, over the c time shards of a
self-attention row (T = S, query ``t`` at slot ``t``). Device ``i`` keeps its queries (global slots
``i·Tc .. i·Tc + Tc − 1``) and, for c steps, attends them to the key/value block it holds, then passes that block
(with its validity, segments and positions) to device ``i + 1`` with ``ppermute``: at step ``r`` it holds the block
of device ``(i − r) mod c``, whose key slots start at ``source·Tc``. Each step runs the flash-style block loop of
:mod:`jaxspo.models.chunked_attention` (scores ``[bq, bk]`` at a time, blocks nobody sees skipped: a whole step
above the causal diagonal costs only its ppermute) and the per-step (output, log-sum-exp) pairs merge exactly.

The backward pass (custom VJP) saves only the local q, k, v, output and log-sum-exp; it runs the ring again,
passing each key/value block together with its accumulating dk/dv, which a last hop brings home. No device
holds more than its own block plus the one in flight. The split is contiguous (not load-balanced): device c − 1
computes c blocks, device 0 one, and the steps run in lockstep.

Shapes: B batch, Tc slots per shard, K key/value heads, G query heads per key/value head, Hd head dim.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxspo.models.chunked_attention import flash_backward, flash_forward, output_delta, pad_blocks
from jaxspo.models.mask_spec import MaskSpec

_F32 = jnp.float32
KeyRows = tuple  # (valid [B, Tc] bool, segments [B, Tc] int32 | None, positions [B, Tc] int32 | None)


def _step_spec(spec: MaskSpec, visiting: KeyRows, source: jax.Array, shard: int) -> MaskSpec:
    """``spec`` (the local queries' view of their own block) turned to the block of device ``source``: its key
    fields, and query slots shifted by the block's first slot so that causality and windows compare alike."""
    return spec.replace(
        query_slots=spec.query_slots - source * shard,
        key_valid=visiting[0],
        segments=visiting[1],
        positions=visiting[2],
        query_valid=spec.key_valid,
        query_segments=spec.segments,
        query_positions=spec.positions,
    )


def _merge(a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Two partial attentions (out ``[B, Tp, K, G, Hd]`` float32, lse ``[B, K, G, Tp]``, -inf where a query saw
    nothing) over disjoint key sets -> the attention over their union."""
    (out_a, lse_a), (out_b, lse_b) = a, b
    top = jnp.maximum(lse_a, lse_b)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    weight_a, weight_b = jnp.exp(lse_a - top), jnp.exp(lse_b - top)
    total = weight_a + weight_b
    seen = total > 0
    as_out = lambda w: jnp.moveaxis(w / jnp.where(seen, total, 1.0), 3, 1)[..., None]  # noqa: E731
    out = as_out(weight_a) * out_a + as_out(weight_b) * out_b
    return out, jnp.where(seen, top + jnp.log(jnp.where(seen, total, 1.0)), -jnp.inf)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9))
def _ring(q, k, v, spec, sliding, axes: tuple[str, ...], shards: int, block: int, scale: float, softcap: float):
    return _ring_forward(q, k, v, spec, sliding, axes, shards, block, scale, softcap)[0].astype(q.dtype)


def _pass(tree, axes: tuple[str, ...], shards: int):
    """Every array of ``tree`` moved one device along the ring (device j's to device j + 1)."""
    return jax.lax.ppermute(tree, axes, [(j, (j + 1) % shards) for j in range(shards)])


def _ring_forward(q, k, v, spec, sliding, axes, shards, block, scale, softcap):
    """q ``[B, Tp, K, G, Hd]``, k/v ``[B, Sp, K, Hd]`` (padded local blocks) -> (out float32, lse ``[B, K, G, Tp]``)."""
    index, shard = jax.lax.axis_index(axes), spec.key_valid.shape[1]

    def attend(k, v, visiting, step):
        step_spec = _step_spec(spec, visiting, (index - step) % shards, shard)
        table = step_spec.block_visible(block, block, sliding)
        return flash_forward(q, k, v, step_spec, sliding, table, block, block, scale, softcap)

    def step(carry, r):
        k, v, visiting, partial = carry
        following = _pass((k, v, visiting), axes, shards)  # in flight while this block computes
        return (*following, _merge(partial, attend(k, v, visiting, r))), None

    own = (spec.key_valid, spec.segments, spec.positions)
    b, tp, kh, g, hd = q.shape
    empty = (jnp.zeros((b, tp, kh, g, hd), _F32), jnp.full((b, kh, g, tp), -jnp.inf, _F32))
    (k, v, visiting, partial), _ = jax.lax.scan(step, (k, v, own, empty), jnp.arange(shards - 1))
    return _merge(partial, attend(k, v, visiting, shards - 1))


def _ring_fwd(q, k, v, spec, sliding, axes, shards, block, scale, softcap):
    out, lse = _ring_forward(q, k, v, spec, sliding, axes, shards, block, scale, softcap)
    out = out.astype(q.dtype)
    return out, (q, k, v, spec, sliding, out, lse)


def _ring_bwd(axes, shards, block, scale, softcap, residuals, g_out):
    q, k, v, spec, sliding, out, lse = residuals
    g_out = g_out.astype(q.dtype)
    delta, index, shard = output_delta(g_out, out), jax.lax.axis_index(axes), spec.key_valid.shape[1]

    def gradients(k, v, visiting, step):
        step_spec = _step_spec(spec, visiting, (index - step) % shards, shard)
        table = step_spec.block_visible(block, block, sliding)
        return flash_backward(q, k, v, step_spec, sliding, table, g_out, delta, lse, block, block, scale, softcap)

    def step(carry, r):
        k, v, visiting, dk, dv, dq = carry
        dq_r, dk_r, dv_r = gradients(k, v, visiting, r)
        return (*_pass((k, v, visiting, dk + dk_r, dv + dv_r), axes, shards), dq + dq_r), None

    own = (spec.key_valid, spec.segments, spec.positions)
    zeros = jnp.zeros(k.shape, _F32)
    init = (k, v, own, zeros, zeros, jnp.zeros(q.shape, _F32))
    (k_last, v_last, visiting, dk, dv, dq), _ = jax.lax.scan(step, init, jnp.arange(shards - 1))
    dq_r, dk_r, dv_r = gradients(k_last, v_last, visiting, shards - 1)
    dk, dv = _pass((dk + dk_r, dv + dv_r), axes, shards)  # the last hop brings each block's gradients home
    return (dq + dq_r).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


_ring.defvjp(_ring_fwd, _ring_bwd)


def ring_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    spec: MaskSpec,
    sliding: bool | jax.Array,
    *,
    axes: tuple[str, ...],
    shards: int,
    scale: float,
    softcap: float,
    block: int,
) -> jax.Array:
    """Inside ``shard_map`` over ``axes`` (``shards`` devices along time): the local queries q ``[B, Tc, H, Hd]``
    attend to the whole row's keys, held as local blocks k/v ``[B, Tc, K, Hd]`` (``spec``: the local query slots
    and the local block's key fields) -> ``[B, Tc, H, Hd]``, as :func:`jaxspo.models.attention.attention` gives on
    the whole row. Blocks of at most ``block`` slots (rounded up to a multiple of 8)."""
    b, t, h, hd = q.shape
    kh = k.shape[2]
    size = min(block, -(-t // 8) * 8)
    q5 = pad_blocks(q.reshape(b, t, kh, h // kh, hd), size)
    out = _ring(
        q5, pad_blocks(k, size), pad_blocks(v, size), spec, jnp.asarray(sliding), axes, shards, size, scale, softcap
    )
    return out[:, :t].reshape(b, t, h, hd)
