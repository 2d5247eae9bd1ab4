"""Length bucketing on a mixed-length preference set: compiled step programs, padding and speed.

    python benchmarks/bucketing.py [--steps 40] [--out /tmp/bucketing]

Writes mixed-length JSONL rows (prompts of 1–24 digits, so pairs take 7–53 tokens), trains the preference
phase of a tiny model with ``data.max_length=64`` and no buckets vs ``data.buckets=[16, 32]``, and prints
JSON: programs compiled for the step, mean padded width, seconds per step (after the first logged window,
which holds the compiles) and the run's wall time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def rows(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        digits = [str(d) for d in rng.integers(0, 10, size=int(rng.integers(1, 25)))]
        answer = digits[::-1]
        out.append(
            {
                "prompt": "reverse " + " ".join(digits) + " :",
                "chosen": " ".join(answer),
                "rejected": " ".join(["um"] + answer[:-1]),
            }
        )
    return out


def run(folder: Path, buckets: list[int], steps: int) -> dict:
    from jaxspo.config import load_config
    from jaxspo.train import loop, phase
    from jaxspo.train.metrics_log import read_metrics

    made, iterators = [], []
    real_step, real_batches = phase.make_train_step, phase.make_batches
    phase.make_train_step = lambda *a, **k: made.append(real_step(*a, **k)) or made[-1]
    phase.make_batches = lambda *a, **k: iterators.append((a, k)) or real_batches(*a, **k)
    cfg = load_config(
        "configs/demo.yaml",
        [
            "model.hidden_size=64",
            "model.intermediate_size=192",
            "model.num_layers=2",
            "trainer.sft_steps=0",
            f"trainer.steps={steps}",
            "trainer.batch_size=32",
            "trainer.eval_every=0",
            "eval.num_pairs=32",
            "eval.num_prompts=8",
            "eval.max_new_tokens=4",
            "logging.progress_bar=false",
            "logging.tensorboard=false",
            "logging.plot=false",
            "logging.log_every=10",
            "checkpoint.every_steps=0",
            "checkpoint.save_final=false",
            "data.source.kind=jsonl",
            f"data.source.path={folder}/{{split}}.jsonl",
            "data.max_length=64",
            "data.max_prompt_length=32",
            f"data.buckets={buckets}",
            f"run_dir={folder}/run-{len(buckets)}",
        ],
    )
    start = time.perf_counter()
    loop.train(cfg, "bucketing")
    wall = time.perf_counter() - start
    phase.make_train_step, phase.make_batches = real_step, real_batches
    a, k = iterators[-1]  # the preference phase's iterator, replayed (its order is a function of the step)
    replay = real_batches(*a, **k)
    widths = [next(replay)["chosen_tokens"].shape[1] for _ in range(steps)]
    logged = [r for r in read_metrics(Path(cfg.run_dir) / "metrics.jsonl") if r["phase"] == "preference"]
    return {
        "buckets": buckets + [64],
        "programs_compiled": made[-1].fn._cache_size(),
        "mean_padded_width": float(np.mean(widths)),
        "seconds_per_step_after_compile": float(np.mean([r["perf/seconds_per_step"] for r in logged[1:]])),
        "wall_seconds": wall,
    }


def main() -> None:
    from jaxspo.platforms import choose_platforms

    choose_platforms()  # the CPU up front on a machine without a TPU: libtpu never probes
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default="/tmp/jaxspo-bucketing")
    args = parser.parse_args()
    from jaxspo.data import write_jsonl

    folder = Path(args.out)
    write_jsonl(rows(1024, 0), folder / "train.jsonl")
    write_jsonl(rows(64, 1), folder / "test.jsonl")
    print(json.dumps([run(folder, [], args.steps), run(folder, [16, 32], args.steps)], indent=2))


if __name__ == "__main__":
    main()
