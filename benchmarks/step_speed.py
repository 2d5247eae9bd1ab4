"""Speed of one jaxspo DPO train step on the issue-11 reference shapes (random-init Llama, synthetic pairs).

    python benchmarks/step_speed.py [--shape small|medium] [--steps 30] [--warmup 5] [key=value ...]

Builds the model from jaxspo's own ``ModelConfig`` (small: hidden 256, 4 layers, ~4.2M params; medium:
hidden 512, 8 layers, ~27.4M; vocab 2,048), 512 synthetic pairs of realistic length spread (prompt 8–48
tokens, responses 4–64, rows ≤ 128, ≈ 990 real tokens per step of 8 pairs), encodes them like the
training loop (``data.layout``, ``data.buckets``), and runs the real ``make_train_step`` with a resident
reference (or whatever ``loss.reference`` says; ``precomputed`` feeds random reference log-probs, which
does not change the step's cost). Dotted ``key=value`` overrides are jaxspo config keys.

Prints one JSON object: seconds per step (median/min/max over the steps after ``--warmup``, leaving out
the first step of each bucket width, which compiles), the 1-minute load average at the end, real and
padded tokens per second (real: non-pad chosen + rejected tokens, the prompt counted in both, as TRL
counts), the compile time of the first step, and the time from start to the first step's result.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

T0 = time.perf_counter()

import jax  # noqa: E402
import numpy as np  # noqa: E402

SHAPES = {
    "small": [
        "model.hidden_size=256",
        "model.intermediate_size=688",
        "model.num_layers=4",
        "model.num_heads=4",
        "model.num_kv_heads=4",
    ],
    "medium": [
        "model.hidden_size=512",
        "model.intermediate_size=1376",
        "model.num_layers=8",
        "model.num_heads=8",
        "model.num_kv_heads=8",
    ],
}
BASE = [
    "model.vocab_size=2048",
    "model.tie_embeddings=false",
    "data.max_length=128",
    "data.max_prompt_length=64",
    "trainer.batch_size=8",
    "trainer.sft_steps=0",
    "loss.beta=0.1",
    "optimizer.warmup_steps=0",
    "optimizer.learning_rate=1e-5",
    "optimizer.max_grad_norm=1.0",
]


def synthetic_pairs(n: int, max_length: int, vocab: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` pairs as the padded arrays :func:`jaxspo.data.encode.encode_preference_rows` returns."""
    rng = np.random.default_rng(seed)
    out = {
        f"{side}_{k}": np.zeros((n, max_length), dtype)
        for side in ("chosen", "rejected")
        for k, dtype in (("tokens", np.int32), ("valid", bool), ("loss_mask", bool))
    }
    for i in range(n):
        prompt = rng.integers(3, vocab, int(rng.integers(8, 49)))
        prompt[0] = 1  # BOS
        for side in ("chosen", "rejected"):
            response = rng.integers(3, vocab, min(int(rng.integers(4, 65)), max_length - len(prompt)))
            row = np.concatenate([prompt, response])
            out[f"{side}_tokens"][i, : len(row)] = row
            out[f"{side}_valid"][i, : len(row)] = True
            out[f"{side}_loss_mask"][i, len(prompt) : len(row)] = True
    out["soft_label"] = np.ones(n, np.float32)
    out["reference_chosen_logps"] = rng.normal(-200, 20, n).astype(np.float32)
    out["reference_rejected_logps"] = rng.normal(-200, 20, n).astype(np.float32)
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("overrides", nargs="*")
    return parser.parse_args()


def build_step(cfg: Any, steps: int, pairs: int) -> tuple[Any, Any, Any, Any, Any]:
    """(train state, step, batch iterator, frozen reference or None, params) of a fresh model on synthetic pairs."""
    from jaxspo.compilation_cache import enable_compilation_cache
    from jaxspo.data.layout import layout_arrays
    from jaxspo.data.pipeline import make_batches
    from jaxspo.sharding import make_mesh
    from jaxspo.train.state import (
        abstract_model,
        init_params,
        init_state,
        learning_rate_schedule,
        make_optimizer,
        param_shardings,
        state_shardings,
    )
    from jaxspo.objectives import build_objective
    from jaxspo.train.step import make_train_step

    enable_compilation_cache(cfg.trainer.compilation_cache_dir)
    mesh = make_mesh(cfg.mesh.shape())
    graphdef, abstract = abstract_model(cfg.model)
    sharding = param_shardings(abstract, mesh, cfg.mesh.rules)
    params = init_params(cfg.model, 0, sharding)
    reference = init_params(cfg.model, 0, sharding)
    schedule = learning_rate_schedule(cfg.optimizer, steps, cfg.optimizer.learning_rate)
    tx = make_optimizer(cfg.optimizer, schedule, abstract)
    shardings = state_shardings(tx, abstract, sharding, mesh)
    state = init_state(tx, params, 0, shardings)
    step = make_train_step(cfg, mesh, graphdef, tx, schedule, shardings, build_objective(cfg), cfg.trainer.batch_size)
    arrays = layout_arrays(synthetic_pairs(pairs, cfg.data.max_length, cfg.model.vocab_size, 0), cfg.data)
    fields = step.objective.host_fields
    batches = make_batches({k: arrays[k] for k in fields}, cfg.trainer.batch_size, 0, cfg.data.buckets)
    frozen = reference if step.reference_sharding is not None else None
    return state, step, batches, frozen, params


def time_steps(state: Any, step: Any, batches: Any, frozen: Any, steps: int, warmup: int) -> dict[str, Any]:
    """Runs ``steps`` steps, each timed to its metrics; figures over the steps after ``warmup`` that compiled
    nothing new (seconds per step, real and padded tokens per second, compile time, programs)."""
    from jaxspo.distributed import to_global

    times, real, padded, widths, fresh = [], [], [], set(), []
    first = compile_seconds = None
    for i in range(steps):
        host = next(batches)
        width = max(v.shape[1] for v in host.values() if v.ndim == 2)
        fresh.append(width not in widths)  # this step compiled a new program (a new bucket width)
        widths.add(width)
        batch = step.objective.batch(to_global(host, {k: step.batch_sharding.fields()[k] for k in host}))
        start = time.perf_counter()
        state, metrics = step.fn(state, frozen, batch)
        tokens = float(metrics["tokens"])  # blocks until the step ran
        times.append(time.perf_counter() - start)
        if i == 0:
            first, compile_seconds = time.perf_counter() - T0, times[0]
        real.append(tokens)
        padded.append(sum(int(np.prod(v.shape)) for k, v in host.items() if k.endswith("tokens")))
    keep = [i for i in range(warmup, steps) if not fresh[i]]
    steady = np.array([times[i] for i in keep])
    median = float(np.median(steady))
    return {
        "seconds_per_step": {"median": median, "min": float(steady.min()), "max": float(steady.max())},
        "real_tokens_per_step": float(np.mean(real)),
        "real_tokens_per_second": float(np.mean([real[i] for i in keep])) / median,
        "padded_tokens_per_second": float(np.mean([padded[i] for i in keep])) / median,
        "steps_timed": len(keep),
        "load_average": os.getloadavg()[0],
        "compile_seconds": compile_seconds,
        "seconds_to_first_step": first,
        "programs": len(widths),
    }


def main() -> None:
    from jaxspo.platforms import choose_platforms

    choose_platforms()  # the CPU up front on a machine without a TPU: libtpu never probes
    args = parse_args()
    from jaxspo.config import load_config

    cfg = load_config(None, BASE + SHAPES[args.shape] + ["mesh.data=1"] + args.overrides)
    state, step, batches, frozen, params = build_step(cfg, args.steps, args.pairs)
    figures = time_steps(state, step, batches, frozen, args.steps, args.warmup)
    count = int(sum(x.size for x in jax.tree.leaves(params)))
    print(json.dumps({"shape": args.shape, "overrides": args.overrides, "params": count} | figures))


if __name__ == "__main__":
    main()
