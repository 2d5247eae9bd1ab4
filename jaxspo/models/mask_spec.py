"""Which keys each query may see, without a ``[B, T, S]`` mask: the :class:`MaskSpec` every attention kernel reads.

Shapes: B batch, T query length, S key length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class MaskSpec:
    """Which keys each query sees: causal over slots, valid keys only, the packed-row rule and the window.

    - ``query_slots [T]`` int32: each query's slot in the key sequence (keys sit at slots ``0..S-1``).
    - ``key_valid [B, S]`` bool.
    - ``segments [B, S]`` int32 or None (packed pair rows, T = S; :mod:`jaxspo.data.layout`): ``3·pair + role``
      (role 0 prompt, 1 chosen, 2 rejected; pair = the pair's index in its row). A query of segment ``q`` sees a
      key of segment ``q`` or ``q − q % 3`` (its own pair's prompt): never another pair, never the other response.
    - ``positions [B, S]`` int32 or None: with ``segments``, the window counts positions (they restart per
      pair and per response), not slots.
    - ``window`` (static): on sliding layers a query drops keys ``window`` or more behind it (as HF); 0 = none.
    - ``query_valid``, ``query_segments``, ``query_positions`` ``[B, T]`` or None: the queries' own validity,
      segments and positions when the keys are not the queries' row (a ring step's visiting key block, whose
      slots then start at 0 and ``query_slots`` are shifted alike); None reads them from the key-side arrays
      at ``query_slots``.
    - ``zigzag`` (static): the row is in the zig-zag order of :mod:`jaxspo.models.zigzag` (``query_slots`` give
      each position's slot; only the ring reads such rows, :func:`jaxspo.models.context.context_attention`).
    """

    query_slots: jax.Array
    key_valid: jax.Array
    segments: jax.Array | None = None
    positions: jax.Array | None = None
    window: int = struct.field(pytree_node=False, default=0)
    query_valid: jax.Array | None = None
    query_segments: jax.Array | None = None
    query_positions: jax.Array | None = None
    zigzag: bool = struct.field(pytree_node=False, default=False)

    def query_side(self, name: str, query_index: jax.Array) -> jax.Array:
        """The queries' ``valid``, ``segments`` or ``positions`` ``[B, t]`` at ``query_index [t]`` (indices into T)."""
        own = getattr(self, f"query_{name}")
        if own is not None:
            return jnp.take(jnp.asarray(own), query_index, axis=1)
        keys = self.key_valid if name == "valid" else getattr(self, name)
        return jnp.take(jnp.asarray(keys), jnp.asarray(self.query_slots)[query_index], axis=1)

    def visible(self, query_index: jax.Array, key_index: jax.Array, sliding: bool | jax.Array = False) -> jax.Array:
        """Visibility ``[B, t, s]`` of keys ``key_index [s]`` to queries ``query_index [t]`` (indices into T and S).

        ``sliding`` (bool, possibly traced) applies the window.
        """
        query_slots, key_slots = jnp.asarray(self.query_slots)[query_index], key_index
        key_valid = jnp.take(jnp.asarray(self.key_valid), key_index, axis=1)  # [B, s]
        seen = (query_slots[:, None] >= key_slots[None, :])[None] & key_valid[:, None, :]  # [B, t, s]
        if self.segments is not None:
            q_seg = self.query_side("segments", query_index)  # [B, t]
            k_seg = jnp.take(jnp.asarray(self.segments), key_index, axis=1)  # [B, s]
            own_prompt = q_seg - q_seg % 3  # [B, t]
            seen = seen & ((k_seg[:, None, :] == q_seg[:, :, None]) | (k_seg[:, None, :] == own_prompt[:, :, None]))
            behind = (
                self.query_side("positions", query_index)[:, :, None]
                - jnp.take(jnp.asarray(self.positions), key_index, axis=1)[:, None, :]
            )  # [B, t, s]
        else:
            behind = (query_slots[:, None] - key_slots[None, :])[None]  # [1, t, s]
        if not self.window:
            return seen
        return seen & ((behind < self.window) | jnp.logical_not(sliding))

    def dense(self, sliding: bool | jax.Array = False) -> jax.Array:
        """The whole mask ``[B, T, S]`` (what the ``xla`` implementation reads)."""
        return self.visible(jnp.arange(self.query_slots.shape[0]), jnp.arange(self.key_valid.shape[1]), sliding)

    def block_visible(self, block_q: int, block_k: int, sliding: bool | jax.Array = False) -> jax.Array:
        """Whether any query of query block ``i`` may see any key of key block ``j`` in any row: ``[nq, nk]`` bool
        (blocks of ``block_q`` queries and ``block_k`` keys; the last ones may run past T and S).

        False is exact (no row sees any key of the block); True is conservative (built from per-block
        bounds: the latest query slot, the range of the queries' segments and of their pairs against the keys'
        segments and prompt pairs, the smallest query and largest key position). Blocks of different pairs of a
        row hold disjoint segment ranges, so they are skipped.
        """
        t, s = self.query_slots.shape[0], self.key_valid.shape[1]
        nq, nk = -(-t // block_q), -(-s // block_k)
        big = 1 << 29  # beyond any slot or position; differences of two stay inside int32

        def blocks(x: jax.Array, size: int, n: int, fill) -> jax.Array:  # [..., L] -> [..., n, size]
            pad = [(0, 0)] * (x.ndim - 1) + [(0, n * size - x.shape[-1])]
            return jnp.pad(x, pad, constant_values=fill).reshape(*x.shape[:-1], n, size)

        query_slots = jnp.asarray(self.query_slots)
        key_valid = blocks(jnp.asarray(self.key_valid), block_k, nk, False)  # [B, nk, bk]
        key_slots = blocks(jnp.arange(s), block_k, nk, big)  # [nk, bk]
        latest_query = blocks(query_slots, block_q, nq, -1).max(-1)  # [nq]
        seen = (latest_query[:, None] >= key_slots.min(-1)[None])[None] & key_valid.any(-1)[:, None, :]  # [B, nq, nk]

        def bounds(x: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:  # min and max over valid entries
            return jnp.where(valid, x, big).min(-1), jnp.where(valid, x, -big).max(-1)

        query_real = blocks(jnp.ones_like(query_slots, bool), block_q, nq, False)[None]  # [1, nq, bq]
        if self.segments is not None:
            every_query = jnp.arange(t)
            q_seg = blocks(self.query_side("segments", every_query), block_q, nq, 0)  # [B, nq, bq]
            k_seg = blocks(jnp.asarray(self.segments), block_k, nk, 0)  # [B, nk, bk]
            q_valid = blocks(self.query_side("valid", every_query), block_q, nq, False)  # [B, nq, bq]
            k_segments, k_prompts = bounds(k_seg, key_valid), bounds(k_seg // 3, key_valid & (k_seg % 3 == 0))
            meets = jnp.zeros_like(seen)
            for group in (
                query_real & q_valid,
                query_real & ~q_valid,
            ):  # padding queries apart: their segment 0 would widen the range
                meets |= _ranges_meet(bounds(q_seg, group), k_segments)  # a key of the query's own segment
                meets |= _ranges_meet(bounds(q_seg // 3, group), k_prompts)  # a key of its own pair's prompt
            seen = seen & meets
            q_pos = blocks(self.query_side("positions", every_query), block_q, nq, 0)
            k_pos = blocks(jnp.asarray(self.positions), block_k, nk, 0)
            earliest_query, latest_key = bounds(q_pos, query_real)[0], bounds(k_pos, key_valid)[1]  # [B, nq], [B, nk]
        else:
            earliest_query = bounds(blocks(query_slots, block_q, nq, 0), query_real[0])[0][None]  # [1, nq]
            latest_key = bounds(key_slots, key_slots < s)[1][None]  # [1, nk]
        if self.window:
            near = earliest_query[:, :, None] - latest_key[:, None, :] < self.window
            seen = seen & (near | jnp.logical_not(sliding))
        return seen.any(0)


def _ranges_meet(a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Whether query ranges ``a = (low, high) [B, nq]`` and key ranges ``b [B, nk]`` share a value: ``[B, nq, nk]``
    (an empty range, low > high, meets nothing)."""
    return (a[0][:, :, None] <= b[1][:, None, :]) & (b[0][:, None, :] <= a[1][:, :, None])
