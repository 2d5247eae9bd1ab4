"""Attention kernels behind one switch (``model.attention``), all driven by a :class:`MaskSpec`.

Shapes: B batch, T query length, S key length, H query heads, K key/value heads (G = H // K queries per
key/value head), Hd head dim. Query head ``h`` reads key/value head ``h // G`` (HF ``repeat_kv`` order).

A :class:`MaskSpec` says which keys each query may see without materialising a ``[B, T, S]`` mask; an
implementation builds only what it needs from it (``xla`` the dense mask, block kernels per block).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

_F32 = jnp.float32


@struct.dataclass
class MaskSpec:
    """Which keys each query sees: causal over slots, valid keys only, the packed-row rule and the window.

    - ``query_slots [T]`` int32: each query's slot in the key sequence (keys sit at slots ``0..S-1``).
    - ``key_valid [B, S]`` bool.
    - ``segments [B, S]`` int32 or None (packed pair rows, T = S; :mod:`jaxspo.data.layout`): a query sees a
      key of its own segment or of segment 0 (the shared prompt).
    - ``positions [B, S]`` int32 or None: with ``segments``, the window counts positions (they restart per
      response), not slots.
    - ``window`` (static): on sliding layers a query drops keys ``window`` or more behind it (as HF); 0 = none.
    """

    query_slots: jax.Array
    key_valid: jax.Array
    segments: jax.Array | None = None
    positions: jax.Array | None = None
    window: int = struct.field(pytree_node=False, default=0)

    def visible(self, query_index: jax.Array, key_index: jax.Array, sliding: bool | jax.Array = False) -> jax.Array:
        """Visibility ``[B, t, s]`` of keys ``key_index [s]`` to queries ``query_index [t]`` (indices into T and S).

        ``sliding`` (bool, possibly traced) applies the window.
        """
        query_slots, key_slots = jnp.asarray(self.query_slots)[query_index], key_index
        key_valid = jnp.take(jnp.asarray(self.key_valid), key_index, axis=1)  # [B, s]
        seen = (query_slots[:, None] >= key_slots[None, :])[None] & key_valid[:, None, :]  # [B, t, s]
        if self.segments is not None:
            segments, positions = jnp.asarray(self.segments), jnp.asarray(self.positions)
            q_seg, k_seg = jnp.take(segments, query_slots, axis=1), jnp.take(segments, key_index, axis=1)  # [B, t], [B, s]
            seen = seen & ((k_seg[:, None, :] == 0) | (k_seg[:, None, :] == q_seg[:, :, None]))
            behind = jnp.take(positions, query_slots, axis=1)[:, :, None] - jnp.take(positions, key_index, axis=1)[:, None, :]  # [B, t, s]
        else:
            behind = (query_slots[:, None] - key_slots[None, :])[None]  # [1, t, s]
        if not self.window:
            return seen
        return seen & ((behind < self.window) | jnp.logical_not(sliding))

    def dense(self, sliding: bool | jax.Array = False) -> jax.Array:
        """The whole mask ``[B, T, S]`` (what the ``xla`` implementation reads)."""
        return self.visible(jnp.arange(self.query_slots.shape[0]), jnp.arange(self.key_valid.shape[1]), sliding)


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float, softcap: float) -> jax.Array:
    """Reference grouped-query attention over a dense mask. q ``[B, T, H, Hd]``, k/v ``[B, S, K, Hd]``,
    mask ``[B, T, S]`` -> ``[B, T, H, Hd]``.

    Scores are multiplied by ``scale``, soft-capped to ``(-softcap, softcap)`` when ``softcap`` > 0, masked and
    softmaxed in float32 (the full ``[B, K, G, T, S]`` score tensor is materialised).
    """
    from jaxspo.models.layers import project  # the bf16-operand dot of every projection

    b, t, h, hd = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, h // kv_heads, hd)  # [B, T, K, G, Hd]
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=_F32) * scale  # [B, K, G, T, S]
    if softcap:
        scores = softcap * jnp.tanh(scores / softcap)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(_F32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = project("bkgts,bskd->btkgd", probs, v, v.dtype)  # [B, T, K, G, Hd]
    return out.reshape(b, t, h, hd)


IMPLEMENTATIONS = ("xla",)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    spec: MaskSpec,
    sliding: bool | jax.Array,
    *,
    scale: float,
    softcap: float,
    implementation: str = "xla",
) -> jax.Array:
    """Attention of q ``[B, T, H, Hd]`` over k/v ``[B, S, K, Hd]`` under ``spec`` -> ``[B, T, H, Hd]``.

    ``sliding`` (possibly traced, per layer under the layer scan) applies ``spec.window``.
    ``implementation`` is a resolved name from :data:`IMPLEMENTATIONS` (never ``auto``).
    """
    if implementation == "xla":
        return xla_attention(q, k, v, spec.dense(sliding), scale, softcap)
    raise ValueError(f"model.attention: unknown implementation {implementation!r}; valid: {IMPLEMENTATIONS}")
