"""selfsup vs its base loss on the built-in task: base losses × {without, with selfsup per key scoring} × seeds.

    PYTHONPATH=. python benchmarks/selfsup_compare.py [--seeds 0 1 2] [--steps 150] [--bases dpo simpo]
        [--key-scorings tfidf surprisal rake] [--out /tmp/selfsup_compare]

Methods: each base (``dpo``: configs/selfsup_dpo.yaml, ``simpo``: configs/selfsup_simpo.yaml) without selfsup
and with it for each key scoring (``selfsup+dpo`` is TF-IDF, the recipes' own; ``selfsup+dpo-rake`` etc.).

Per seed S (``trainer.seed=S data.synthetic.seed=S``) one SFT run (the recipes' 300 steps) is exported as a
Hugging Face folder; every preference run starts from it (``model.path``, no SFT of their own), so all
methods share the reference. The baselines are the selfsup recipes with ``loss.selfsup.weight=0``.
Held-out metrics are those of the final evaluation (``RUN_DIR/metrics.jsonl``); the JSON gives every
seed's value, the mean, the sample standard deviation and the 95% Student-t interval of the mean over
seeds. Finished runs are reused (each writes ``RUN_DIR/result.json``), so seeds can run in parallel
processes (``--seeds 1``) and a last call with all seeds only summarises.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from scipy import stats

from jaxspo.config import load_config
from jaxspo.losses.selfsup_config import KEY_SCORINGS
from jaxspo.train.loop import train

RECIPES = {"dpo": "configs/selfsup_dpo.yaml", "simpo": "configs/selfsup_simpo.yaml"}
QUIET = [
    "logging.progress_bar=false",
    "logging.plot=false",
    "logging.tensorboard=false",
    "checkpoint.every_steps=0",
    "checkpoint.save_final=false",
]
METRICS = ("eval/gold/correctness", "eval/gold/brevity", "eval/rewards/accuracies", "eval/logps_accuracy", "eval/kl")


def run(recipe: str, overrides: list[str], name: str) -> dict[str, float]:
    """One run's held-out metrics before and after; reused from ``RUN_DIR/result.json`` if it finished before."""
    cfg = load_config(recipe, overrides + QUIET)
    saved = Path(cfg.run_dir) / "result.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    started = time.perf_counter()
    result = train(cfg, name)
    out = {"before": result.before, "after": result.after, "seconds": time.perf_counter() - started}
    saved.write_text(json.dumps(out))
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--bases", nargs="+", choices=tuple(RECIPES), default=list(RECIPES))
    parser.add_argument("--key-scorings", nargs="+", choices=KEY_SCORINGS, default=["tfidf"])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-pairs", type=int, default=256)
    parser.add_argument("--eval-prompts", type=int, default=128)
    parser.add_argument("--out", default="/tmp/selfsup_compare")
    return parser.parse_args()


def sft_start(
    out: Path,
    seed: int,
    seeded: list[str],
    recipe: str = "configs/selfsup_dpo.yaml",
    extra: tuple[str, ...] = ("loss.selfsup.weight=0",),
) -> Path:
    """The seed's SFT policy (``recipe``'s SFT steps, ``extra`` overrides) as an HF folder, trained once, then
    reused: every method starts from it."""
    sft_dir = out / f"sft-s{seed}"
    if not (sft_dir / "config.json").is_file():
        run(
            recipe,
            seeded
            + list(extra)
            + [
                "trainer.steps=0",
                "eval.num_pairs=32",
                "eval.num_prompts=16",
                f"checkpoint.export_hf_dir={sft_dir}",
                f"run_dir={out / f'sft-run-s{seed}'}",
            ],
            "sft",
        )
    return sft_dir


def methods(bases: list[str], key_scorings: list[str]) -> dict[str, tuple[str, list[str]]]:
    """Method name → (recipe, overrides): each base without selfsup, then with it for each key scoring."""
    out = {}
    for base in bases:
        out[base] = (RECIPES[base], ["loss.selfsup.weight=0"])
        for scoring in key_scorings:
            name = f"selfsup+{base}" + ("" if scoring == "tfidf" else f"-{scoring}")
            out[name] = (RECIPES[base], [f"loss.selfsup.key_scoring={scoring}"])
    return out


def interval95(values: list[float]) -> float:
    """Half-width of the 95% Student-t interval of the mean (0 for a single value)."""
    if len(values) < 2:
        return 0.0
    return float(stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)))


def summarise(runs: dict[str, dict[int, dict]], seeds: list[int]) -> dict[str, dict]:
    """Per method and final metric: the per-seed values, their mean, standard deviation and 95% half-width."""
    summary = {}
    for name, by_seed in runs.items():
        keys = [k for k in by_seed[seeds[0]]["after"] if k in METRICS or k.startswith("eval/selfsup/")]
        summary[name] = {}
        for key in keys:
            values = [by_seed[s]["after"][key] for s in seeds if key in by_seed[s]["after"]]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[name][key] = {
                "per_seed": values,
                "mean": statistics.fmean(values),
                "std": spread,
                "ci95": interval95(values),
            }
    return summary


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    evals = [f"eval.num_pairs={args.eval_pairs}", f"eval.num_prompts={args.eval_prompts}"]
    chosen = methods(args.bases, args.key_scorings)
    runs: dict[str, dict[int, dict]] = {name: {} for name in chosen}
    for seed in args.seeds:
        seeded = [f"trainer.seed={seed}", f"data.synthetic.seed={seed}"]
        sft_dir = sft_start(out, seed, seeded)
        for name, (recipe, method_overrides) in chosen.items():
            overrides = (
                seeded
                + evals
                + [
                    f"model.path={sft_dir}",
                    "trainer.sft_steps=0",
                    f"trainer.steps={args.steps}",
                    f"trainer.batch_size={args.batch_size}",
                    "trainer.eval_every=0",
                    f"run_dir={out / f'{name}-s{seed}'}",
                ]
                + method_overrides
            )
            runs[name][seed] = run(recipe, overrides, name)
            seconds = round(runs[name][seed]["seconds"], 1)
            print(json.dumps({"method": name, "seed": seed, "seconds": seconds}), flush=True)
    first = runs[args.bases[0]]
    reference = {
        key: [first[s]["before"][key] for s in args.seeds] for key in METRICS if key in first[args.seeds[0]]["before"]
    }
    summary = summarise(runs, args.seeds)
    report = {"steps": args.steps, "batch_size": args.batch_size, "seeds": args.seeds, "sft_reference": reference}
    print(json.dumps(report | {"methods": summary}, indent=1))


if __name__ == "__main__":
    main()
