"""Step time and peak memory of one attention forward + backward, ``xla`` vs ``chunked``, as T grows.

    python benchmarks/attention_memory.py [--lengths 128,1024,2048,4096,8192] [--blocks 512] [--repeats 3]
                                          [--batch 1 --heads 4 --kv-heads 2 --head-dim 64] [--packed]

A causal padded row (or, with ``--packed``, a packed pair row: a prompt of T/4 then two responses of
3T/8) of float32 q ``[B, T, H, Hd]`` and k/v ``[B, T, K, Hd]``; the step is ``jax.grad`` of a scalar of
the output w.r.t. q, k, v. Prints one JSON object: per (kernel, T, block) the median/min seconds over
``--repeats`` runs after a compiling one, the compiled temporaries (``memory_analysis().temp_size_in_bytes``:
the step's peak working memory beyond its inputs and outputs), the process's peak RSS so far, and for
``chunked`` how many of the blocks the kernel actually computes (the others are skipped).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxspo.models.attention import MaskSpec, attention


def _spec(batch: int, length: int, packed: bool) -> MaskSpec:
    valid = jnp.ones((batch, length), bool)
    if not packed:
        return MaskSpec(jnp.arange(length), valid)
    prompt, chosen = length // 4, (3 * length) // 8
    slots = np.arange(length)
    segments = np.where(slots < prompt, 0, np.where(slots < prompt + chosen, 1, 2))
    positions = np.where(segments == 2, slots - chosen, slots)
    broadcast = lambda x: jnp.broadcast_to(jnp.asarray(x, jnp.int32), (batch, length))  # noqa: E731
    return MaskSpec(jnp.arange(length), valid, broadcast(segments), broadcast(positions))


def measure(kernel: str, length: int, block: int, args, repeats: int) -> dict:
    """Compiles and times the forward + backward of ``kernel`` at ``length``."""
    rng = np.random.default_rng(0)
    b, h, kh, hd = args.batch, args.heads, args.kv_heads, args.head_dim
    q = jnp.asarray(rng.normal(size=(b, length, h, hd)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(b, length, kh, hd)), jnp.float32) for _ in range(2))
    spec = _spec(b, length, args.packed)

    def loss(q, k, v):
        out = attention(q, k, v, spec, False, scale=hd**-0.5, softcap=0.0, implementation=kernel, block=block)
        return jnp.sum(out * out)

    step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    compiled = step.lower(q, k, v).compile()
    jax.block_until_ready(compiled(q, k, v))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(q, k, v))
        times.append(time.perf_counter() - start)
    row = {
        "kernel": kernel,
        "T": length,
        "block": block if kernel == "chunked" else None,
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
        "temp_bytes": compiled.memory_analysis().temp_size_in_bytes,
        "peak_rss_bytes_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    if kernel == "chunked":
        bq = min(block, -(-length // 8) * 8)
        table = np.asarray(spec.block_visible(bq, bq, False))
        row["blocks_computed"], row["blocks_total"] = int(table.sum()), int(table.size)
    return row


def main() -> None:
    from jaxspo.platforms import choose_platforms

    choose_platforms()  # the CPU up front on a machine without a TPU: libtpu never probes
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="128,1024,2048,4096,8192")
    parser.add_argument("--blocks", default="512")
    parser.add_argument("--kernels", default="xla,chunked")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--packed", action="store_true")
    args = parser.parse_args()
    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        for kernel in args.kernels.split(","):
            for block in [int(x) for x in args.blocks.split(",")] if kernel == "chunked" else [0]:
                rows.append(measure(kernel, length, block, args, args.repeats))
    shape = {
        "batch": args.batch,
        "heads": args.heads,
        "kv_heads": args.kv_heads,
        "head_dim": args.head_dim,
        "packed": args.packed,
    }
    print(json.dumps({"backend": jax.default_backend(), "shape": shape, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
