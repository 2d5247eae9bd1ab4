"""The zig-zag time layout of ``model.context_attention=ring_zigzag`` (load-balanced causal ring).

With causal attention and rows split into c contiguous time shards, shard i sees i + 1 shards of keys: the
last does about twice the average work, and the ring's lockstep steps wait for it. Cut the row into 2c chunks
and give device i chunks i and 2c − 1 − i: every device then holds one early and one late chunk and computes
the same number of blocks. :class:`jaxspo.models.Decoder` puts a row into this order before the layers
(tokens, positions, validity, segments) and back after them, and tells attention each slot's place through
the query slots, so log-probs and losses do not change.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxspo.sharding import active_sharding, logical_to_spec


def zigzag_slots(length: int, shards: int) -> np.ndarray:
    """``[length]`` int32: the row's slot at each position of the zig-zag order (device i's positions hold
    chunks i and 2·shards − 1 − i of ``length / (2·shards)`` slots)."""
    chunks = np.arange(length, dtype=np.int32).reshape(2 * shards, -1)
    return np.concatenate([np.concatenate([chunks[i], chunks[2 * shards - 1 - i]]) for i in range(shards)])


def time_shards(batch: int, length: int) -> int:
    """Devices the active sharding rules split a ``[batch, length]`` activation's time axis over (1: none)."""
    active = active_sharding()
    if active is None:
        return 1
    mesh, rules = active
    time = logical_to_spec(("batch", "length"), (batch, length), mesh, rules)[1]
    axes = () if time is None else (time,) if isinstance(time, str) else tuple(time)
    return math.prod(mesh.shape[axis] for axis in axes)


def zigzag_order(batch: int, length: int) -> np.ndarray | None:
    """The zig-zag slots for the active time split, or None when time is not split or ``length`` does not cut
    into 2·shards chunks of whole multiples of 8 slots (the rows then keep their order)."""
    shards = time_shards(batch, length)
    if shards == 1 or length % (16 * shards):
        return None
    return zigzag_slots(length, shards)


def to_zigzag(order: np.ndarray, *rows: jax.Array | None) -> list[jax.Array | None]:
    """Each ``[B, T, ...]`` array (or None) taken in ``order`` along time."""
    return [None if x is None else jnp.take(x, jnp.asarray(order), axis=1) for x in rows]


def from_zigzag(order: np.ndarray, x: jax.Array) -> jax.Array:
    """``x [B, T, ...]`` in zig-zag order back to the row's order."""
    return jnp.take(x, jnp.asarray(np.argsort(order)), axis=1)
