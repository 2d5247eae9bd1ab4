"""Soft labels on the built-in task: hard-label losses vs their soft-label variants as the labels get softer.

    PYTHONPATH=. python benchmarks/soft_label_study.py [--seeds 0 1 2 3 4] [--temperatures 0.1 0.3 1]
        [--methods dpo cdpo_soft gdpo] [--steps 100] [--out /tmp/soft_label_study] [--plot FILE.png]
        [--summarise-only]

The task's labelled reward is gold correctness; ``data.synthetic.label_temperature`` T sets each pair's
Bradley–Terry label p̂ = σ((r_w − r_l)/T), so a higher T gives more near-tie pairs. Pairs are oriented by the
higher reward (``data.synthetic.hard_label=argmax``, the soft-label recipes' setting), so the hard-label losses
(``dpo``, ``ipo``, ``ropo``) train on the same pairs at every T: they run once per seed and stand for every T.
The soft-label losses (``cdpo_soft``, ``gdpo``, ``cipo``, ``gipo``, ``gropo``) run once per seed and T.

Per seed S (``trainer.seed=S data.synthetic.seed=S``) one SFT run of the recipes' SFT steps is exported as a
Hugging Face folder and every preference run starts from it, so all methods of a seed share the reference; with
``--reference-seed R`` every seed starts from seed R's SFT instead (one SFT run; the seeds then vary the
preference data, the batching, the evaluation prompts and the sampling, not the reference).
Each run writes ``RUN_DIR/result.json`` when it finishes and is reused from it, so an interrupted grid resumes;
``--summarise-only`` summarises the finished runs without training. Runs are ordered seed by seed, so a partial
grid holds whole seeds. The summary gives, per T and method, each final metric's per-seed values, mean and 95%
Student-t interval, and per soft method the paired difference to its family's hard-label loss (same seed, same
reference) with its interval and two-sided t-test p-value, and how that difference changes from the lowest to
the highest T; and per T the distribution of p̂ over the seeds' training pairs (its mean and the shares of ties
and of labels below 0.6 and 0.75).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from selfsup_compare import describe, paired, run, seed_overrides, sft_start

from jaxspo.config import load_config

FAMILY = {"cdpo_soft": "dpo", "gdpo": "dpo", "cipo": "ipo", "gipo": "ipo", "gropo": "ropo"}
HARD = ("dpo", "ipo", "ropo")
METRICS = ("eval/gold/correctness", "eval/kl", "eval/rewards/accuracies", "eval/logps_accuracy")
SHARE_BELOW = (0.6, 0.75)  # p̂ thresholds of the label-share table


def recipe(method: str) -> str:
    """The shipped config of ``method`` (hard-label losses: their ``*_soft_baseline`` recipe)."""
    return f"configs/{method}_soft_baseline.yaml" if method in HARD else f"configs/{method}.yaml"


def cells(methods: list[str], temperatures: list[float]) -> list[tuple[str, float | None]]:
    """(method, T) per run of a seed; T is None for a hard-label loss (one run serves every T)."""
    out: list[tuple[str, float | None]] = [(m, None) for m in methods if m in HARD]
    out += [(m, t) for t in temperatures for m in methods if m not in HARD]
    return out


def run_name(method: str, temperature: float | None, seed: int) -> str:
    return f"{method}-s{seed}" if temperature is None else f"{method}-T{temperature:g}-s{seed}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    parser.add_argument("--methods", nargs="+", choices=HARD + tuple(FAMILY), default=["dpo", "cdpo_soft", "gdpo"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-pairs", type=int, default=256)
    parser.add_argument("--eval-prompts", type=int, default=128)
    parser.add_argument("--out", default="/tmp/soft_label_study")
    parser.add_argument("--reference-seed", type=int, default=None, help="every seed starts from this seed's SFT")
    parser.add_argument("--cache-dir", default="", help="compiled programs shared by the runs (default OUT/xla)")
    parser.add_argument("--plot", default="", help="PNG file for the figure (none if empty)")
    parser.add_argument("--summarise-only", action="store_true", help="summarise finished runs; train nothing")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run (e.g. the SFT's steps)")
    args = parser.parse_args(argv)
    missing = {FAMILY[m] for m in args.methods if m in FAMILY} - set(args.methods)
    if missing:
        parser.error(f"--methods needs the hard-label baseline(s) {sorted(missing)} of the soft-label losses given")
    return args


def run_grid(args: argparse.Namespace, out: Path) -> None:
    """Trains every missing run, seed by seed, printing one JSON line per run."""
    cache = args.cache_dir or out / "xla"
    evals = [f"eval.num_pairs={args.eval_pairs}", f"eval.num_prompts={args.eval_prompts}"]
    shared = [f"trainer.compilation_cache_dir={cache}"] + args.overrides
    for seed in args.seeds:
        seeded = seed_overrides(seed, shared)
        sft_seed = seed if args.reference_seed is None else args.reference_seed
        sft_dir = sft_start(out, sft_seed, seed_overrides(sft_seed, shared), recipe("gdpo"), ())
        for method, temperature in cells(args.methods, args.temperatures):
            name = run_name(method, temperature, seed)
            labels = [] if temperature is None else [f"data.synthetic.label_temperature={temperature}"]
            start = [f"model.path={sft_dir}", "trainer.sft_steps=0", "trainer.eval_every=0"]
            size = [f"trainer.steps={args.steps}", f"trainer.batch_size={args.batch_size}"]
            overrides = seeded + evals + start + size + labels + [f"run_dir={out / name}"]
            result = run(recipe(method), overrides, method)
            print(json.dumps({"run": name, "seconds": round(result["seconds"], 1)}), flush=True)


def finished(
    out: Path, method: str, temperature: float | None, seeds: list[int], when: str = "after"
) -> dict[int, dict]:
    """Seed → the metrics of the finished runs of one cell, evaluated ``when`` ("before" or "after") training."""
    found = {}
    for seed in seeds:
        saved = out / run_name(method, temperature, seed) / "result.json"
        if saved.is_file():
            found[seed] = json.loads(saved.read_text())[when]
    return found


def summarise(args: argparse.Namespace, out: Path) -> dict:
    """Per T: each method's metrics and each soft method's paired edge over its family's hard-label loss."""
    by_t: dict[str, dict] = {}
    for temperature in sorted(args.temperatures):
        cell = {"methods": {}, "edge": {}}
        for method in args.methods:
            runs = finished(out, method, None if method in HARD else temperature, args.seeds)
            cell["methods"][method] = {k: describe([runs[s][k] for s in sorted(runs)]) for k in METRICS}
            cell["methods"][method]["seeds"] = sorted(runs)
            if method in FAMILY:
                hard = finished(out, FAMILY[method], None, args.seeds)
                cell["edge"][method] = {k: paired(runs, hard, k) for k in METRICS}
        by_t[f"{temperature:g}"] = cell
    return {"reference": reference(args, out), "by_temperature": by_t, "edge_growth": edge_growth(args, out)}


def reference(args: argparse.Namespace, out: Path) -> dict:
    """The SFT reference's metrics (the evaluation before the first hard-label loss's steps), seed by seed."""
    hard = next(m for m in args.methods if m in HARD)
    runs = finished(out, hard, None, args.seeds, "before")
    return {k: describe([runs[s][k] for s in sorted(runs)]) for k in ("eval/gold/correctness", "eval/logps_accuracy")}


def edge_growth(args: argparse.Namespace, out: Path) -> dict:
    """Per soft method: its edge in gold correctness at the highest T minus at the lowest T, paired by seed."""
    low, high = min(args.temperatures), max(args.temperatures)
    key = "eval/gold/correctness"
    growth = {}
    for method in (m for m in args.methods if m in FAMILY):
        hard = finished(out, FAMILY[method], None, args.seeds)
        edge = {
            t: {s: r[key] - hard[s][key] for s, r in finished(out, method, t, args.seeds).items() if s in hard}
            for t in (low, high)
        }
        seeds = sorted(set(edge[low]) & set(edge[high]))
        growth[method] = paired({s: {key: edge[high][s]} for s in seeds}, {s: {key: edge[low][s]} for s in seeds}, key)
    return growth


def label_shares(temperature: float, seeds: list[int], overrides: list[str]) -> dict[str, float]:
    """p̂ over the training pairs of ``seeds`` at ``temperature``: its mean, the share of ties (p̂ = ½, equal rewards)
    and the share below each of SHARE_BELOW (shares in [0, 1])."""
    from jaxspo.data import build_synthetic_task

    labels: list[float] = []
    for seed in seeds:
        temperature_override = f"data.synthetic.label_temperature={temperature}"
        cfg = load_config(recipe("gdpo"), seed_overrides(seed, overrides) + [temperature_override])
        labels += [row["soft_label"] for row in build_synthetic_task(cfg.data.synthetic).splits["train"]]
    p = np.asarray(labels)
    shares = {"pairs": len(p), "mean": float(p.mean()), "tie": float(np.isclose(p, 0.5).mean())}
    return shares | {f"below_{bound:g}": float((p < bound).mean()) for bound in SHARE_BELOW}


def main(argv: list[str] | None = None) -> None:
    from jaxspo.platforms import choose_platforms

    choose_platforms()  # the CPU up front on a machine without a TPU: libtpu never probes
    args = parse_args(argv)
    out = Path(args.out)
    if not args.summarise_only:
        run_grid(args, out)
    report = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seeds": args.seeds,
        "reference_seed": args.reference_seed,
        "temperatures": args.temperatures,
        "overrides": args.overrides,
    }
    report |= summarise(args, out)
    report["label_shares"] = {f"{t:g}": label_shares(t, args.seeds, args.overrides) for t in sorted(args.temperatures)}
    (out / "summary.json").write_text(json.dumps(report, indent=1))
    if args.plot:
        from soft_label_report import plot_study

        plot_study(report, Path(args.plot))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
