"""Compile time and step time of the model's DPO log-prob forward + backward with each ``model.attention`` kernel.

    python benchmarks/attention_step.py [--kernels xla,chunked] [--pairs 32] [--length 32] [--layout padded|packed]
        [--repeats 5] [key=value ...]

The demo's model (``configs/demo.yaml``: hidden 128, 4 layers, 4 heads, 2 key/value heads) by default; dotted
``model.*`` overrides change it. Random pairs of ``--length`` tokens (shared prompts of a quarter of it).
Prints one JSON object: per kernel the compile seconds and the median/min seconds of the compiled step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxspo.config import load_config
from jaxspo.data.layout import pack_pairs
from jaxspo.losses.dpo_family import logistic_loss
from jaxspo.sharding import DEFAULT_RULES, make_mesh
from jaxspo.train.state import abstract_model, init_params, param_shardings
from jaxspo.objectives.batches import PairBatch
from jaxspo.objectives.pairs import padded_pair_logps


def random_pairs(pairs: int, length: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Padded pair arrays: a shared prompt of length/4 tokens, responses of 1 to 3·length/4 tokens."""
    rng = np.random.default_rng(seed)
    out = {
        f"{s}_{k}": np.zeros((pairs, length), d)
        for s in ("chosen", "rejected")
        for k, d in (("tokens", np.int32), ("valid", bool), ("loss_mask", bool))
    }
    prompt = length // 4
    for i in range(pairs):
        head = rng.integers(3, vocab, prompt)
        for side in ("chosen", "rejected"):
            row = np.concatenate([head, rng.integers(3, vocab, int(rng.integers(1, length - prompt + 1)))])
            out[f"{side}_tokens"][i, : len(row)], out[f"{side}_valid"][i, : len(row)] = row, True
            out[f"{side}_loss_mask"][i, prompt : len(row)] = True
    return out


def measure(model_cfg, batch: dict, repeats: int) -> dict:
    graphdef, abstract = abstract_model(model_cfg)
    params = init_params(
        model_cfg, 0, param_shardings(abstract, make_mesh({"data": -1, "fsdp": 1, "tensor": 1}), DEFAULT_RULES)
    )

    def loss(p):
        chosen, rejected, _, _ = padded_pair_logps(graphdef, p, PairBatch.from_fields(batch))
        return logistic_loss(0.1 * (chosen - rejected)).mean()

    start = time.perf_counter()
    step = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(step(params))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(params))
        times.append(time.perf_counter() - start)
    return {
        "compile_s": round(compile_s, 2),
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
    }


def main() -> None:
    from jaxspo.platforms import choose_platforms

    choose_platforms()  # the CPU up front on a machine without a TPU: libtpu never probes
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kernels", default="xla,chunked")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--layout", choices=("padded", "packed"), default="padded")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config("configs/demo.yaml", ["model.vocab_size=64", *args.overrides])
    arrays = random_pairs(args.pairs, args.length, cfg.model.vocab_size)
    batch = {k: jnp.asarray(v) for k, v in (pack_pairs(arrays) if args.layout == "packed" else arrays).items()}
    rows = {
        kernel: measure(dataclasses.replace(cfg.model, attention=kernel), batch, args.repeats)
        for kernel in args.kernels.split(",")
    }
    print(
        json.dumps(
            {
                "backend": jax.default_backend(),
                "pairs": args.pairs,
                "length": args.length,
                "layout": args.layout,
                "kernels": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
