"""This machine's matmul peak: the best of several large square matmuls, fp32 and bf16, in JAX and PyTorch.

    python benchmarks/peers/peak.py [--size 2048] [--repeats 5]

Prints one JSON line ``{"jax": {"float32": FLOP/s, "bfloat16": ...}, "torch": {...}, "size": n}``
(2·n³ FLOPs per matmul; the best of ``repeats`` timed calls after one warm-up).
"""

from __future__ import annotations

import argparse
import json
import time


def best_rate(run, size: int, repeats: int) -> float:
    """2·n³ / the fastest of ``repeats`` calls of ``run`` (which must block until done)."""
    run()
    best = min(_timed(run) for _ in range(repeats))
    return 2.0 * size**3 / best


def _timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def jax_rates(size: int, repeats: int) -> dict[str, float]:
    import jax
    import jax.numpy as jnp

    out = {}
    for dtype in ("float32", "bfloat16"):
        a = jax.random.normal(jax.random.key(0), (size, size), dtype)
        b = jax.random.normal(jax.random.key(1), (size, size), dtype)
        dot = jax.jit(jnp.dot)
        out[dtype] = best_rate(lambda: dot(a, b).block_until_ready(), size, repeats)
    return out


def torch_rates(size: int, repeats: int) -> dict[str, float]:
    import torch

    out = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        out[name] = best_rate(lambda: torch.mm(a, b), size, repeats)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    print(
        json.dumps(
            {
                "size": args.size,
                "jax": jax_rates(args.size, args.repeats),
                "torch": torch_rates(args.size, args.repeats),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
