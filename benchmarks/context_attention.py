"""Attention under context parallelism: the explicit shard_map path against GSPMD alone, for the xla kernel.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python benchmarks/context_attention.py
        [--length 1024] [--context 4] [--packed]

Compiles the value-and-gradient of one grouped-query attention (B 2, H 8, K 4, Hd 64; causal mask over
right-padded rows; ``--packed``: packed-pair segments and restarting positions as well) on a (data 8/c,
context c) mesh with q, k, v split along time, once through
:func:`jaxspo.models.context.context_attention` (shard_map, all-gathered keys) and once through the plain
:func:`jaxspo.models.attention.attention` left to the SPMD partitioner. Prints one JSON object per path:
per-device temporary bytes (compiler's memory analysis), the collectives of the optimised HLO, the largest
float32 temporary's shape, the mean seconds per call over ``--repeats`` runs and the largest difference of
the outputs and gradients from the unsplit single-device result.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxspo.models.attention import MaskSpec, attention
from jaxspo.models.context import context_attention
from jaxspo.sharding import DEFAULT_RULES, activation_sharding, make_mesh

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


def inputs(length: int, packed: bool, seed: int = 0) -> tuple[jax.Array, ...]:
    """q [2, T, 8, 64], k/v [2, T, 4, 64] float32, key validity [2, T] (row 1 padded after 3T/4) and, packed,
    segments [2, T] (prompt T/4, chosen T/4, rejected T/4) and positions [2, T] restarting at the rejected."""
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (2, length, 8, 64))
    k, v = (jax.random.normal(key, (2, length, 4, 64)) for key in keys[1:])
    slots = jnp.arange(length)
    valid = slots[None] < jnp.asarray([[length], [3 * length // 4]])
    if not packed:
        return q, k, v, valid
    quarter = length // 4
    segments = jnp.broadcast_to(jnp.minimum(slots // quarter, 2), (2, length)) * valid
    positions = jnp.broadcast_to(jnp.where(segments[0] == 2, slots - quarter, slots), (2, length))
    return q, k, v, valid, segments, positions


def loss_fn(kernel):
    def loss(q, k, v, valid, segments=None, positions=None):
        spec = MaskSpec(jnp.arange(q.shape[1]), valid, segments, positions)
        out = kernel(q, k, v, spec, False, scale=0.125, softcap=0.0, implementation="xla")
        return jnp.sum(out * jnp.cos(out))  # a non-linear read-out so every gradient is non-trivial

    return jax.value_and_grad(loss, argnums=(0, 1, 2))


def measure(kernel, mesh, args, repeats: int, want) -> dict:
    rows = NamedSharding(mesh, PartitionSpec("data", "context"))
    heads = NamedSharding(mesh, PartitionSpec("data", "context", None, None))
    shardings = (heads, heads, heads) + (rows,) * (len(args) - 3)
    placed = [jax.device_put(x, s) for x, s in zip(args, shardings)]

    def traced(*a):
        with activation_sharding(mesh, DEFAULT_RULES):
            return loss_fn(kernel)(*a)

    compiled = jax.jit(traced, in_shardings=shardings).lower(*placed).compile()
    hlo = compiled.as_text()
    counts = collections.Counter(op for op in COLLECTIVES for _ in re.finditer(rf"= \S+ {op}(-start)?\(", hlo))
    shapes = [tuple(int(d) for d in dims.split(",")) for dims in re.findall(r"f32\[(\d+(?:,\d+)+)\]", hlo)]
    largest = max(shapes, key=lambda s: int(np.prod(s)))
    got = compiled(*placed)
    jax.block_until_ready(got)
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(compiled(*placed))
    error = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
    return {
        "temp_bytes_per_device": compiled.memory_analysis().temp_size_in_bytes,
        "collectives": dict(counts),
        "largest_f32_shape": largest,
        "seconds_per_call": (time.perf_counter() - start) / repeats,
        "max_abs_error_vs_one_device": error,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--context", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--packed", action="store_true")
    args = parser.parse_args()
    mesh = make_mesh({"data": 8 // args.context, "context": args.context})
    host = inputs(args.length, args.packed)
    want = jax.jit(loss_fn(attention))(*host)
    for name, kernel in (("shard_map", context_attention), ("gspmd", attention)):
        result = {"path": name, "length": args.length, "packed": args.packed, "mesh": dict(mesh.shape)} | measure(
            kernel, mesh, host, args.repeats, want
        )
        print(json.dumps(result))


if __name__ == "__main__":
    main()
