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


def _piece_start(source: jax.Array, piece: int, shards: int, size: int, zigzag: bool) -> jax.Array:
    """First global slot of piece ``piece`` (of ``size`` slots) of device ``source``'s block: contiguous, one piece
    at chunk ``source``; zig-zag, pieces at chunks ``source`` and ``2·shards − 1 − source``."""
    return (2 * shards - 1 - source if piece else source) * size


def _cut(x: jax.Array | None, piece: int, size: int, axis: int = 1) -> jax.Array | None:
    return None if x is None else jax.lax.slice_in_dim(x, piece * size, (piece + 1) * size, axis=axis)


def _pair_spec(spec: MaskSpec, visiting: KeyRows, a: int, b: int, start: jax.Array, size: int) -> MaskSpec:
    """The local queries of piece ``a`` against key piece ``b`` of the visiting block (first slot ``start``):
    query slots shifted by ``start`` so that causality and windows compare alike."""
    return spec.replace(
        query_slots=_cut(spec.query_slots, a, size, 0) - start,
        key_valid=_cut(visiting[0], b, size),
        segments=_cut(visiting[1], b, size),
        positions=_cut(visiting[2], b, size),
        query_valid=_cut(spec.key_valid, a, size),
        query_segments=_cut(spec.segments, a, size),
        query_positions=_cut(spec.positions, a, size),
    )


def step_tables(spec, visiting, sliding, source, layout: tuple[int, int, int, bool]) -> dict:
    """{(a, b): (pair spec, block table ``[nq, nk]``)} of the local query pieces against the visiting block of
    device ``source``; ``layout`` = (shards, pieces, slots per piece, zigzag, block slots)."""
    shards, pieces, size, zigzag, block = layout
    tables = {}
    for b in range(pieces):
        start = _piece_start(source, b, shards, size, zigzag)
        for a in range(pieces):
            pair = _pair_spec(spec, visiting, a, b, start, size)
            tables[a, b] = pair, pair.block_visible(block, block, sliding)
    return tables


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _ring(q, k, v, spec, sliding, axes: tuple[str, ...], layout: tuple, scale: float, softcap: float):
    return _ring_forward(q, k, v, spec, sliding, axes, layout, scale, softcap)[0].astype(q.dtype)


def _pass(tree, axes: tuple[str, ...], shards: int):
    """Every array of ``tree`` moved one device along the ring (device j's to device j + 1)."""
    return jax.lax.ppermute(tree, axes, [(j, (j + 1) % shards) for j in range(shards)])


def _padded(x: jax.Array, piece: int, layout: tuple, axis: int = 1) -> jax.Array:
    """Piece ``piece`` of the padded local array ``x`` (pieces padded to whole blocks, laid end to end)."""
    pieces = layout[1]
    length = x.shape[axis] // pieces
    return jax.lax.slice_in_dim(x, piece * length, (piece + 1) * length, axis=axis)


def _ring_forward(q, k, v, spec, sliding, axes, layout, scale, softcap):
    """q ``[B, P·Tp, K, G, Hd]``, k/v ``[B, P·Sp, K, Hd]`` (P pieces, each padded) -> (out float32, lse
    ``[B, K, G, P·Tp]``)."""
    shards, pieces, _, _, block = layout
    index = jax.lax.axis_index(axes)

    def attend(k, v, visiting, step):
        tables = step_tables(spec, visiting, sliding, (index - step) % shards, layout)
        outs = []
        for a in range(pieces):
            parts = [
                flash_forward(
                    _padded(q, a, layout),
                    _padded(k, b, layout),
                    _padded(v, b, layout),
                    *tables[a, b][:1],
                    sliding,
                    tables[a, b][1],
                    block,
                    block,
                    scale,
                    softcap,
                )
                for b in range(pieces)
            ]
            outs.append(functools.reduce(_merge, parts))
        return jnp.concatenate([o for o, _ in outs], 1), jnp.concatenate([lse for _, lse in outs], 3)

    def step(carry, r):
        k, v, visiting, partial = carry
        following = _pass((k, v, visiting), axes, shards)  # in flight while this block computes
        return (*following, _merge(partial, attend(k, v, visiting, r))), None

    own = (spec.key_valid, spec.segments, spec.positions)
    b, tp, kh, g, hd = q.shape
    empty = (jnp.zeros((b, tp, kh, g, hd), _F32), jnp.full((b, kh, g, tp), -jnp.inf, _F32))
    (k, v, visiting, partial), _ = jax.lax.scan(step, (k, v, own, empty), jnp.arange(shards - 1))
    return _merge(partial, attend(k, v, visiting, shards - 1))


def _ring_fwd(q, k, v, spec, sliding, axes, layout, scale, softcap):
    out, lse = _ring_forward(q, k, v, spec, sliding, axes, layout, scale, softcap)
    out = out.astype(q.dtype)
    return out, (q, k, v, spec, sliding, out, lse)


def _ring_bwd(axes, layout, scale, softcap, residuals, g_out):
    q, k, v, spec, sliding, out, lse = residuals
    shards, pieces, _, _, block = layout
    g_out = g_out.astype(q.dtype)
    delta, index = output_delta(g_out, out), jax.lax.axis_index(axes)

    def gradients(k, v, visiting, step):
        tables = step_tables(spec, visiting, sliding, (index - step) % shards, layout)
        dq, dk, dv = [0.0] * pieces, [0.0] * pieces, [0.0] * pieces
        for a in range(pieces):
            q_a, g_a = _padded(q, a, layout), _padded(g_out, a, layout)
            delta_a, lse_a = _padded(delta, a, layout, 3), _padded(lse, a, layout, 3)
            for b in range(pieces):
                pair, table = tables[a, b]
                dq_ab, dk_ab, dv_ab = flash_backward(
                    q_a,
                    _padded(k, b, layout),
                    _padded(v, b, layout),
                    pair,
                    sliding,
                    table,
                    g_a,
                    delta_a,
                    lse_a,
                    block,
                    block,
                    scale,
                    softcap,
                )
                dq[a], dk[b], dv[b] = dq[a] + dq_ab, dk[b] + dk_ab, dv[b] + dv_ab
        return (jnp.concatenate(x, 1) for x in (dq, dk, dv))

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


def _pieces_padded(x: jax.Array, pieces: int, block: int) -> jax.Array:
    """``x [B, Tc, ...]`` cut into ``pieces`` along time, each zero-padded to whole blocks, laid end to end."""
    b, t = x.shape[:2]
    split = pad_blocks(x.reshape(b, pieces, t // pieces, *x.shape[2:]), block, axis=2)
    return split.reshape(b, -1, *x.shape[2:])


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
    zigzag: bool = False,
) -> jax.Array:
    """Inside ``shard_map`` over ``axes`` (``shards`` devices along time): the local queries q ``[B, Tc, H, Hd]``
    attend to the whole row's keys, held as local blocks k/v ``[B, Tc, K, Hd]`` (``spec``: the local query slots
    and the local block's key fields) -> ``[B, Tc, H, Hd]``, as :func:`jaxspo.models.attention.attention` gives on
    the whole row. Blocks of at most ``block`` slots (rounded up to a multiple of 8). ``zigzag``: device i holds
    the row's chunks i and 2·shards − 1 − i of Tc/2 slots each (``spec.query_slots`` says so), not chunk i."""
    b, t, h, hd = q.shape
    kh, pieces = k.shape[2], 2 if zigzag else 1
    size = min(block, -(-(t // pieces) // 8) * 8)
    layout = (shards, pieces, t // pieces, zigzag, size)
    q5 = _pieces_padded(q.reshape(b, t, kh, h // kh, hd), pieces, size)
    out = _ring(
        q5, *(_pieces_padded(x, pieces, size) for x in (k, v)), spec, jnp.asarray(sliding), axes, layout, scale, softcap
    )
    out = out.reshape(b, pieces, -1, kh, h // kh, hd)[:, :, : t // pieces]
    return out.reshape(b, t, h, hd)


def ring_block_counts(spec: MaskSpec, sliding: bool, *, shards: int, block: int, zigzag: bool = False) -> list[int]:
    """Blocks of ``block × block`` slots each device computes (visible in its block tables) over all ring steps,
    for a whole-row ``spec`` (T = S, in zig-zag order when ``zigzag``): the per-device work of the ring."""
    t, pieces = spec.key_valid.shape[1], 2 if zigzag else 1
    tc = t // shards
    layout = (shards, pieces, tc // pieces, zigzag, min(block, -(-(tc // pieces) // 8) * 8))
    rows = lambda x, i: None if x is None else x[:, i * tc : (i + 1) * tc]  # noqa: E731
    keys = lambda i: (rows(spec.key_valid, i), rows(spec.segments, i), rows(spec.positions, i))  # noqa: E731
    counts = []
    for device in range(shards):
        local = spec.replace(
            query_slots=spec.query_slots[device * tc : (device + 1) * tc],
            key_valid=rows(spec.key_valid, device),
            segments=rows(spec.segments, device),
            positions=rows(spec.positions, device),
        )
        tables = [
            step_tables(local, keys(source), sliding, source, layout).values()
            for source in ((device - r) % shards for r in range(shards))
        ]
        counts.append(sum(int(table.sum()) for step in tables for _, table in step))
    return counts
