r"""Per-device memory of attention under context parallelism: all-gathered keys against the ring.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python benchmarks/ring_attention.py \
        [--lengths 4096 16384] [--context 8] [--block 512] [--packed] [--paths gather:chunked ring:chunked]

Compiles (ahead of time, nothing runs) the value-and-gradient of one grouped-query attention (B 2, H 8, K 4,
Hd 64, float32; causal over right-padded rows, ``--packed``: packed-pair segments and restarting positions) on a
(data 8/c, context c) mesh with q, k, v split along time, through
:func:`jaxspo.models.context.context_attention` with ``context=gather`` (the ``xla`` and ``chunked`` kernels on
the gathered keys) and ``context=ring`` (blocks passed around, the chunked block loop per step). Prints one JSON
object per (length, path): the compiler's per-device temporary, argument and output bytes, their sum, the
collectives of the optimised HLO and the largest float32 buffer's shape.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from benchmarks.context_attention import COLLECTIVES, inputs
from jaxspo.models.attention import MaskSpec
from jaxspo.models.context import context_attention
from jaxspo.sharding import DEFAULT_RULES, activation_sharding, make_mesh

PATHS = ("gather:xla", "gather:chunked", "ring:chunked")  # context_attention:kernel


def loss_fn(context: str, implementation: str, block: int):
    def loss(q, k, v, valid, segments=None, positions=None):
        spec = MaskSpec(jnp.arange(q.shape[1]), valid, segments, positions)
        out = context_attention(
            q,
            k,
            v,
            spec,
            False,
            scale=0.125,
            softcap=0.0,
            implementation=implementation,
            block=block,
            context=context,
        )
        return jnp.sum(out * jnp.cos(out))

    return jax.value_and_grad(loss, argnums=(0, 1, 2))


def compiled_memory(context: str, implementation: str, block: int, mesh, args) -> dict:
    """Compile on ``mesh`` for abstract ``args`` and read the compiler's memory analysis and collectives."""
    rows = NamedSharding(mesh, PartitionSpec("data", "context"))
    heads = NamedSharding(mesh, PartitionSpec("data", "context", None, None))
    shardings = (heads, heads, heads) + (rows,) * (len(args) - 3)
    abstract = [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s) for x, s in zip(args, shardings)]

    def traced(*a):
        with activation_sharding(mesh, DEFAULT_RULES):
            return loss_fn(context, implementation, block)(*a)

    compiled = jax.jit(traced).lower(*abstract).compile()
    memory, hlo = compiled.memory_analysis(), compiled.as_text()
    counts = {op: hlo.count(f" {op}(") + hlo.count(f" {op}-start(") for op in COLLECTIVES}
    fields = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes")
    sizes = {name.replace("_size_in", ""): getattr(memory, name) for name in fields}
    return sizes | {
        "total_bytes_per_device": sum(sizes.values()),
        "collectives": {op: n for op, n in counts.items() if n},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--context", type=int, default=8)
    parser.add_argument("--block", type=int, default=512)
    parser.add_argument("--packed", action="store_true")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    args = parser.parse_args()
    mesh = make_mesh({"data": 8 // args.context, "context": args.context})
    for length in args.lengths:
        host = jax.eval_shape(lambda: inputs(length, args.packed))
        for context, implementation in (path.split(":") for path in args.paths):
            measured = compiled_memory(context, implementation, args.block, mesh, host)
            print(
                json.dumps(
                    {
                        "context_attention": context,
                        "kernel": implementation,
                        "length": length,
                        "packed": args.packed,
                        "block": args.block,
                        "mesh": dict(mesh.shape),
                    }
                    | measured
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
