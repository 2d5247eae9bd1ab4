"""Compile time of the real train step against depth: scanned layers keep it flat. Prints JSON.

    .venv/bin/python benchmarks/compile_scaling.py [--recipe configs/demo.yaml] [--layers 2 4 8 16] [--topology v5p-8]

Without --topology it compiles for this machine's CPU devices; with one, for that TPU slice (libtpu).
"""

from __future__ import annotations

import argparse
import json
import os

import jax

from jaxspo.compile import compile_step, parse_topology, resolve_model, topology_devices
from jaxspo.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="configs/demo.yaml")
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--topology", default="")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.topology:
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", args.topology)
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        devices = topology_devices(parse_topology(args.topology))
    else:
        devices = jax.devices()
    overrides = list(args.overrides)
    if args.recipe == "configs/demo.yaml":
        overrides.append("model.vocab_size=32")
    results = []
    for layers in args.layers:
        cfg = resolve_model(load_config(args.recipe, overrides + [f"model.num_layers={layers}"]))
        report = compile_step(cfg, devices)
        results.append(
            {
                "layers": layers,
                "compile_seconds": round(report["compile_seconds"], 2),
                "parameters": report["parameters"],
            }
        )
    print(
        json.dumps(
            {
                "recipe": args.recipe,
                "topology": args.topology or f"{len(devices)} x {devices[0].platform}",
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
