r"""Per-device memory of attention under context parallelism: all-gathered keys against the ring.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python benchmarks/ring_attention.py \
        [--lengths 4096 16384] [--context 8] [--block 512] [--packed] [--paths gather:chunked ring:chunked] \
        [--layers 2] [--topology v5p-8 --dtype bfloat16]

Compiles (ahead of time, nothing runs) the value-and-gradient of one grouped-query attention (B 2, H 8, K 4,
Hd 64, float32; causal over right-padded rows, ``--packed``: packed-pair segments and restarting positions) on a
(data 8/c, context c) mesh with q, k, v split along time, through
:func:`jaxspo.models.context.context_attention` with ``context=gather`` (the ``xla`` and ``chunked`` kernels on
the gathered keys) and ``context=ring`` (blocks passed around, the chunked block loop per step). Prints one JSON
object per (length, path): the compiler's per-device temporary, argument and output bytes, their sum, the
collectives of the optimised HLO; with ``--topology`` also libtpu's simulated peak of HBM (``peak_bytes``,
arguments and outputs included; its ``temp_bytes`` is not the HBM working set, see docs/scale.md).

``--layers L``: the attention runs L times in a ``lax.scan`` over per-layer output weights (as the decoder's
layer scan), so the gradient goes through a loop as in the train step — the case where partial evaluation
could hoist loop-invariant mask work out of the loop. ``--topology``: compile for that TPU slice with libtpu
(``jaxspo compile``'s target; no TPU needed; the mesh is (data D/c, context c) of its devices).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from benchmarks.context_attention import COLLECTIVES, inputs
from jaxspo.models.attention import MaskSpec
from jaxspo.models.context import context_attention
from jaxspo.sharding import DEFAULT_RULES, activation_sharding, make_mesh

PATHS = ("gather:xla", "gather:chunked", "ring:chunked")  # context_attention:kernel


def loss_fn(context: str, implementation: str, block: int, layers: int = 0):
    """Value and q/k/v gradients of a read-out of the attention; ``layers`` > 0: of L attentions in a layer scan
    (layer l attends ``q + out_{l-1}·w_l``, w_l ``[Hd, Hd]``)."""

    def attend(q, k, v, spec):
        return context_attention(
            q, k, v, spec, False, scale=0.125, softcap=0.0, implementation=implementation, block=block, context=context
        )

    def loss(q, k, v, valid, segments=None, positions=None):
        spec = MaskSpec(jnp.arange(q.shape[1]), valid, segments, positions)
        if not layers:
            out = attend(q, k, v, spec)
        else:
            weights = jnp.broadcast_to(jnp.eye(q.shape[-1], dtype=q.dtype) * 0.5, (layers, q.shape[-1], q.shape[-1]))
            layer = lambda out, w: (attend(q + out @ w, k, v, spec), None)  # noqa: E731
            out, _ = jax.lax.scan(layer, jnp.zeros_like(q), weights)
        return jnp.sum(out * jnp.cos(out))

    return jax.value_and_grad(loss, argnums=(0, 1, 2))


def compiled_memory(context: str, implementation: str, block: int, mesh, args, layers: int = 0) -> dict:
    """Compile on ``mesh`` for abstract ``args`` and read the compiler's memory analysis and collectives."""
    rows = NamedSharding(mesh, PartitionSpec("data", "context"))
    heads = NamedSharding(mesh, PartitionSpec("data", "context", None, None))
    shardings = (heads, heads, heads) + (rows,) * (len(args) - 3)
    abstract = [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s) for x, s in zip(args, shardings)]

    def traced(*a):
        with activation_sharding(mesh, DEFAULT_RULES):
            return loss_fn(context, implementation, block, layers)(*a)

    compiled = jax.jit(traced).lower(*abstract).compile()
    memory, hlo = compiled.memory_analysis(), compiled.as_text()
    counts = {op: hlo.count(f" {op}(") + hlo.count(f" {op}-start(") for op in COLLECTIVES}
    fields = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes")
    sizes = {name.replace("_size_in", ""): getattr(memory, name) for name in fields}
    measured = sizes | {
        "total_bytes_per_device": sum(sizes.values()),
        "collectives": {op: n for op, n in counts.items() if n},
    }
    if mesh.devices.flat[0].platform == "tpu":  # libtpu simulates the peak of HBM (XLA:CPU gives args + outputs)
        measured["peak_bytes"] = memory.peak_memory_in_bytes
    return measured


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--context", type=int, default=8)
    parser.add_argument("--block", type=int, default=512)
    parser.add_argument("--packed", action="store_true")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--layers", type=int, default=0, help="0: one attention; L: L of them in a layer scan")
    parser.add_argument("--topology", help="compile for this TPU slice (e.g. v5p-8) instead of the CPU devices")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args()
    devices = jax.devices()
    if args.topology:
        from jaxspo.compile import parse_topology, topology_devices

        devices = topology_devices(parse_topology(args.topology))
    mesh = make_mesh({"data": len(devices) // args.context, "context": args.context}, devices)
    for length in args.lengths:
        host = jax.eval_shape(lambda: inputs(length, args.packed))
        host = [jax.ShapeDtypeStruct(x.shape, args.dtype if x.dtype == jnp.float32 else x.dtype) for x in host]
        for context, implementation in (path.split(":") for path in args.paths):
            start = time.perf_counter()
            measured = compiled_memory(context, implementation, args.block, mesh, host, args.layers)
            print(
                json.dumps(
                    {
                        "context_attention": context,
                        "kernel": implementation,
                        "length": length,
                        "packed": args.packed,
                        "block": args.block,
                        "mesh": dict(mesh.shape),
                        "layers": args.layers,
                        "target": args.topology or jax.default_backend(),
                        "dtype": args.dtype,
                        "compile_seconds": round(time.perf_counter() - start, 1),
                    }
                    | measured
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
