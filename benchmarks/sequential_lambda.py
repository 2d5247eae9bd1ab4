"""λ sweep of the ``sequential`` recipe on the built-in task; prints JSON (docs/methods/sequential.md, the λ tables).

Stage 1 aligns gold correctness, stage 2 gold brevity (the two conflict: truncated answers are short
but wrong). For each seed S (``trainer.seed = data.synthetic.seed = S``) the λ = 0 run (naive sequential
DPO) trains SFT → stage 1 → stage 2; every other λ copies that run's SFT and stage-1 checkpoints
(λ_{2,1} enters stage 2 only, so stage 1 is identical by construction) and resumes, training its own
stage 2. Reported per stage: mean gold reward of one sampled response per held-out prompt.

    python benchmarks/sequential_lambda.py [--seeds 0 1 2] [--lambdas 0 0.5 1 2] [--out DIR] [--stage2-lr LR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jaxspo.config import load_config  # noqa: E402
from jaxspo.train.loop import train  # noqa: E402
from jaxspo.train.metrics_log import read_metrics  # noqa: E402

SMALL = [  # ≈ the shipped recipe, shortened to fit a shared 2-core CPU
    "data.synthetic.num_train=2048",
    "trainer.sft_steps=200",
    "trainer.steps=100",
    "trainer.eval_every=0",
    "eval.num_prompts=256",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
    "logging.plot=false",
    "checkpoint.async_save=false",
]
DIMENSIONS = ("correctness", "brevity")


def stages_override(lam: float, stage2_lr: float) -> str:
    return (
        f"stages=[{{dimension: correctness, beta: 0.1, lambdas: []}}, {{dimension: brevity, beta: "
        f"0.1, lambdas: [{lam}], learning_rate: {stage2_lr}}}]"
    )


def gold_by_stage(run_dir: Path) -> dict[str, dict[str, float]]:
    """Gold rewards of π_0 (step 0) and after each stage (the last eval row of each stage)."""
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["phase"] == "eval"]
    last = {int(r["eval/stage"]): r for r in rows}
    return {f"stage{k}" if k else "sft": {d: last[k][f"eval/gold/{d}"] for d in DIMENSIONS} for k in sorted(last)}


def run(seed: int, lam: float, root: Path, cache: Path, base: Path | None, stage2_lr: float) -> dict:
    run_dir = root / f"s{seed}-lam{lam:g}"
    if (
        base is not None and not (run_dir / "params").is_dir()
    ):  # share SFT and stage 1 with the λ = 0 run (a finished run is kept)
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(base, run_dir, ignore=shutil.ignore_patterns("stage-2", "policy-2", "params"))
    overrides = SMALL + [
        f"trainer.seed={seed}",
        f"data.synthetic.seed={seed}",
        stages_override(lam, stage2_lr),
        f"run_dir={run_dir}",
        f"loss.reference_cache_dir={cache}",
    ]
    start = time.perf_counter()
    train(load_config(REPO / "configs" / "sequential.yaml", overrides), "sequential")
    return {
        "seed": seed,
        "lambda": lam,
        "seconds": round(time.perf_counter() - start, 1),
        "gold": gold_by_stage(run_dir),
        "run_dir": str(run_dir),
    }


def summarise(results: list[dict]) -> dict:
    out = {}
    for lam in sorted({r["lambda"] for r in results}):
        runs = [r for r in results if r["lambda"] == lam]
        out[f"{lam:g}"] = {
            stage: {
                d: {
                    "mean": statistics.mean(v := [r["gold"][stage][d] for r in runs]),
                    "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                }
                for d in DIMENSIONS
            }
            for stage in runs[0]["gold"]
        }
    return out


def main() -> None:
    from jaxspo.platforms import choose_platforms

    choose_platforms()  # the CPU up front on a machine without a TPU: libtpu never probes
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    parser.add_argument("--out", default="/tmp/jaxspo-sequential-bench")
    parser.add_argument(
        "--stage2-lr", type=float, default=0.0, help="stage 2 peak learning rate (0 = optimizer.learning_rate)"
    )
    args = parser.parse_args()
    root = Path(args.out)
    results = []
    for seed in args.seeds:
        naive = run(seed, 0.0, root, root / "cache", None, args.stage2_lr)
        results.append(naive)
        for lam in (x for x in args.lambdas if x != 0.0):
            results.append(run(seed, lam, root, root / "cache", Path(naive["run_dir"]), args.stage2_lr))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"runs": results, "summary": summarise(results)}, indent=2))


if __name__ == "__main__":
    main()
