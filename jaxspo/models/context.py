"""Context parallelism: attention when the mesh splits the time axis (``mesh.context`` > 1).

Under :func:`jaxspo.sharding.activation_sharding` the ``length`` rule (``context`` by default) splits every
activation along time. :func:`context_attention` runs the configured kernel inside ``shard_map``: each device
keeps its slice of the queries ``[B/d, T/c, H/h, Hd]`` and all-gathers the keys, values and the key-side
:class:`MaskSpec` fields (validity, segments, positions) over the time-splitting mesh axes, so it attends
its T/c queries to all S keys. The query slots ``[T]`` are split like the queries, so shard ``i`` holds the
global slots ``i·T/c + t`` and the causal, packed-row and window rules hold unchanged. The backward pass
turns each all-gather into a reduce-scatter of the key/value gradients.

``splash`` runs inside the same ``shard_map``: its kernels are built for the whole row with their block
tables split along the queries (``q_seq_shards`` = the time shards, passed in with the kernel's
``manual_sharding_spec``), so each device runs its T/c queries against the gathered keys. It needs T/c to
be a whole number of splash blocks (multiples of 128 slots); otherwise ``chunked`` runs
(:func:`jaxspo.models.splash_attention.context_kernels`).

``context="ring"`` (``model.context_attention``) gathers nothing: the key/value blocks travel around the time
shards (:mod:`jaxspo.models.ring_attention`), each step a flash-style block loop whatever ``implementation``
says, so no device holds the whole row's keys. It needs self-attention rows (T = S, query ``t`` at slot ``t``);
other calls (the KV-cache decode path) gather.

Shapes: B batch, T query length, S key length, H query heads, K key/value heads, Hd head dim.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from jaxspo.models.attention import DEFAULT_BLOCK, MaskSpec, attention
from jaxspo.models.ring_attention import ring_attention
from jaxspo.models.splash_attention import context_kernels, splash_rows
from jaxspo.sharding import active_sharding, logical_to_spec


def _axes(entry: Any) -> tuple[str, ...]:
    """Mesh axes of one PartitionSpec entry (None, a name, or a tuple of names)."""
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def context_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    spec: MaskSpec,
    sliding: bool | jax.Array,
    *,
    scale: float,
    softcap: float,
    implementation: str = "xla",
    block: int = DEFAULT_BLOCK,
    context: str = "gather",
) -> jax.Array:
    """:func:`jaxspo.models.attention.attention` (same arguments and result ``[B, T, H, Hd]``), split along
    time when the active rules put the time axis of both q ``[B, T, H, Hd]`` and k/v ``[B, S, K, Hd]`` on the
    same mesh axes; otherwise (no active mesh, no time split, a length that does not divide) the plain call.
    ``context``: ``gather`` (all-gather the keys) or ``ring`` / ``ring_zigzag`` (pass them around; T = S only,
    else gather; rows the decoder put in zig-zag order, ``spec.zigzag``, run the zig-zag ring)."""
    active = active_sharding()
    plain = lambda: attention(
        q, k, v, spec, sliding, scale=scale, softcap=softcap, implementation=implementation, block=block
    )  # noqa: E731
    if active is None:
        return plain()
    mesh, rules = active
    (b, t, h, _), (s, kv_heads) = q.shape, k.shape[1:3]
    q_batch, q_time, q_heads = logical_to_spec(("batch", "length", "heads"), (b, t, h), mesh, rules)
    k_batch, k_time, k_heads = logical_to_spec(("batch", "length", "kv_heads"), (b, s, kv_heads), mesh, rules)
    time = _axes(q_time)
    if not time or _axes(k_time) != time or q_batch != k_batch:
        if spec.zigzag:
            raise ValueError("rows in zig-zag order need queries and keys split alike along time (mesh.context)")
        return plain()
    heads = q_heads if q_heads == k_heads else None  # query head h reads kv head h // G: split both alike or neither
    rows, split = PartitionSpec(q_batch, q_time), PartitionSpec(q_batch, q_time, heads, None)
    spec_split = spec.replace(
        query_slots=PartitionSpec(q_time),
        key_valid=rows,
        segments=None if spec.segments is None else rows,
        positions=None if spec.positions is None else rows,
    )
    traced = None if isinstance(sliding, bool) else sliding  # a per-layer flag under the layer scan
    shards = math.prod(mesh.shape[axis] for axis in time)
    ring = context in ("ring", "ring_zigzag") and t == s
    kernels = None
    # splash (gather only): block tables split along the queries like them, or chunked when it cannot
    if implementation == "splash" and not ring:
        kernels = context_kernels(t, shards, h, spec.window, softcap, block, packed=spec.segments is not None)
    by_queries = NamedSharding(mesh, PartitionSpec(None, q_time))
    kernel_specs = kernels and tuple(None if kn is None else kn.manual_sharding_spec(by_queries) for kn in kernels)
    local = _per_device(
        sliding, time, shards, ring, scale=scale, softcap=softcap, implementation=implementation, block=block
    )
    in_specs = (split, split, split, spec_split, None if traced is None else PartitionSpec(), kernel_specs)
    # no varying-axes types: the block kernels' skip-conds return their carry unchanged on one branch (the gradients
    # stay exact, tests/test_splash_context.py and tests/test_context_parallel.py)
    return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=split, check_vma=False)(
        q, k, v, spec, traced, kernels
    )


def _per_device(
    sliding: bool | jax.Array,
    time: tuple[str, ...],
    shards: int,
    ring: bool,
    *,
    scale: float,
    softcap: float,
    implementation: str,
    block: int,
):
    """The attention each device runs inside the ``shard_map`` over the ``time`` axes (``shards`` devices):
    ``(q, k, v, spec, traced sliding flag or None, splash kernels or None) -> out``, all local blocks."""
    local_kernel = "chunked" if implementation == "splash" else implementation

    def local(
        q: jax.Array, k: jax.Array, v: jax.Array, spec: MaskSpec, traced: jax.Array | None, kernels: tuple | None
    ) -> jax.Array:
        flag = sliding if traced is None else traced
        if ring:
            return ring_attention(
                q,
                k,
                v,
                spec,
                flag,
                axes=time,
                shards=shards,
                scale=scale,
                softcap=softcap,
                block=block,
                zigzag=spec.zigzag,
            )
        gather = lambda x: None if x is None else jax.lax.all_gather(x, time, axis=1, tiled=True)  # noqa: E731
        spec = spec.replace(
            key_valid=gather(spec.key_valid), segments=gather(spec.segments), positions=gather(spec.positions)
        )
        if kernels is not None:
            return splash_rows(
                kernels,
                q * jnp.asarray(scale, q.dtype),
                gather(k),
                gather(v),
                spec.query_slots,
                spec.key_valid,
                spec.segments,
                jnp.asarray(flag),
                windowed=bool(spec.window),
            )
        return attention(
            q, gather(k), gather(v), spec, flag, scale=scale, softcap=softcap, implementation=local_kernel, block=block
        )

    return local
