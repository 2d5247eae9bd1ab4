r"""Per-device work of the causal ring: key blocks each context device computes, contiguous against zig-zag.

    JAX_PLATFORMS=cpu python benchmarks/ring_balance.py [--length 32768] [--context 4 8] [--block 512] [--packed]

Counts, from the ring's own block tables (:func:`jaxspo.models.ring_attention.ring_block_counts`), the
``block × block`` blocks each of the c devices computes over the c ring steps for one causal row (right-padded
over its last quarter; ``--packed``: packed pair segments as in benchmarks/context_attention.py). The steps run
in lockstep, so a step's time is the busiest device's: ``max / mean`` is the slowdown against perfect balance.
Prints one JSON object per (context, layout).
"""

from __future__ import annotations

import argparse
import json

import jax.numpy as jnp

from benchmarks.context_attention import inputs
from jaxspo.models.attention import MaskSpec
from jaxspo.models.ring_attention import ring_block_counts
from jaxspo.models.zigzag import zigzag_slots


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--length", type=int, default=32768)
    parser.add_argument("--context", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--block", type=int, default=512)
    parser.add_argument("--packed", action="store_true")
    args = parser.parse_args()
    fields = inputs(args.length, args.packed)[3:]
    row = [x[1:] for x in fields]  # the padded row (row 1 of the bench's pair)
    for shards in args.context:
        for zigzag in (False, True):
            order = zigzag_slots(args.length, shards) if zigzag else jnp.arange(args.length)
            taken = [jnp.take(x, jnp.asarray(order), axis=1) for x in row]
            spec = MaskSpec(jnp.asarray(order), *taken, zigzag=zigzag)
            counts = ring_block_counts(spec, False, shards=shards, block=args.block, zigzag=zigzag)
            mean = sum(counts) / shards
            print(
                json.dumps(
                    {
                        "length": args.length,
                        "context": shards,
                        "block": args.block,
                        "packed": args.packed,
                        "layout": "zigzag" if zigzag else "contiguous",
                        "blocks_per_device": counts,
                        "max_over_mean": round(max(counts) / mean, 3),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
