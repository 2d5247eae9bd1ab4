"""selfsup vs its base loss on the built-in task: base losses × {without, with selfsup per key scoring} × seeds.

    PYTHONPATH=. python benchmarks/selfsup_compare.py [--seeds 0 1 2] [--steps 150] [--bases dpo simpo]
        [--key-scorings tfidf surprisal rake] [--reference-seed R] [--out /tmp/selfsup_compare]
        [--summarise-only]

Methods: each base (``dpo``: configs/selfsup_dpo.yaml, ``simpo``: configs/selfsup_simpo.yaml) without selfsup
and with it for each key scoring (``selfsup+dpo`` is TF-IDF, the recipes' own; ``selfsup+dpo-rake`` etc.).

Per seed S (``trainer.seed=S data.synthetic.seed=S``) one SFT run (the recipes' 300 steps) is exported as a
Hugging Face folder; every preference run starts from it (``model.path``, no SFT of their own), so all
methods share the reference; with ``--reference-seed R`` every seed starts from seed R's SFT instead (one SFT
run; the seeds then vary the preference data, the batching, the evaluation prompts and the sampling, not the
reference). The baselines are the recipes with ``loss.selfsup.weight=0``. Held-out metrics are those of the
final evaluation (``RUN_DIR/metrics.jsonl``). Each run writes ``RUN_DIR/result.json`` when it finishes and is
reused from it, so seeds can run in parallel processes (``--seeds 1``), an interrupted grid resumes, and
``--summarise-only`` summarises the finished runs without training; runs are ordered seed by seed, so a
partial grid holds whole seeds. The JSON (printed, and written to ``OUT/summary.json``) gives per method and
final metric every seed's value, the mean, the sample standard deviation and the 95% Student-t interval of
the mean, and per selfsup method the paired difference to its base (same seed, same reference) with its
interval and two-sided paired t-test p-value (and, for a key scoring other than TF-IDF, the same to TF-IDF's).
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--bases", nargs="+", choices=tuple(RECIPES), default=list(RECIPES))
    parser.add_argument("--key-scorings", nargs="+", choices=KEY_SCORINGS, default=["tfidf"])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-pairs", type=int, default=256)
    parser.add_argument("--eval-prompts", type=int, default=128)
    parser.add_argument("--out", default="/tmp/selfsup_compare")
    parser.add_argument("--reference-seed", type=int, default=None, help="every seed starts from this seed's SFT")
    parser.add_argument("--cache-dir", default="", help="compiled programs shared by the runs (default OUT/xla)")
    parser.add_argument("--summarise-only", action="store_true", help="summarise finished runs; train nothing")
    return parser.parse_args(argv)


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
            out[method_name(base, scoring)] = (RECIPES[base], [f"loss.selfsup.key_scoring={scoring}"])
    return out


def method_name(base: str, scoring: str) -> str:
    """``selfsup+BASE`` for TF-IDF (the recipes' own scoring), ``selfsup+BASE-SCORING`` for the others."""
    return f"selfsup+{base}" + ("" if scoring == "tfidf" else f"-{scoring}")


def seed_overrides(seed: int, shared: list[str]) -> list[str]:
    """Seed S sets the model/batching seed and the synthetic data set; ``shared`` follows."""
    return [f"trainer.seed={seed}", f"data.synthetic.seed={seed}"] + shared


def run_grid(args: argparse.Namespace, out: Path) -> None:
    """Trains every missing run, seed by seed, printing one JSON line per run."""
    shared = [f"trainer.compilation_cache_dir={args.cache_dir or out / 'xla'}"]
    evals = [f"eval.num_pairs={args.eval_pairs}", f"eval.num_prompts={args.eval_prompts}"]
    size = [f"trainer.steps={args.steps}", f"trainer.batch_size={args.batch_size}", "trainer.eval_every=0"]
    for seed in args.seeds:
        sft_seed = seed if args.reference_seed is None else args.reference_seed
        sft_dir = sft_start(out, sft_seed, seed_overrides(sft_seed, shared))
        start = [f"model.path={sft_dir}", "trainer.sft_steps=0"]
        for name, (recipe, method_overrides) in methods(args.bases, args.key_scorings).items():
            overrides = seed_overrides(seed, shared) + evals + start + size + [f"run_dir={out / f'{name}-s{seed}'}"]
            result = run(recipe, overrides + method_overrides, name)
            print(json.dumps({"method": name, "seed": seed, "seconds": round(result["seconds"], 1)}), flush=True)


def finished(out: Path, name: str, seeds: list[int], when: str = "after") -> dict[int, dict]:
    """Seed → the metrics of method ``name``'s finished runs, evaluated ``when`` ("before" or "after") training."""
    found = {}
    for seed in seeds:
        saved = out / f"{name}-s{seed}" / "result.json"
        if saved.is_file():
            found[seed] = json.loads(saved.read_text())[when]
    return found


def interval95(values: list[float]) -> float:
    """Half-width of the 95% Student-t interval of the mean (0 for a single value)."""
    if len(values) < 2:
        return 0.0
    return float(stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)))


def describe(values: list[float]) -> dict:
    """Per-seed values, their mean, sample standard deviation and 95% half-width (mean None without values)."""
    mean = statistics.fmean(values) if values else None
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"per_seed": values, "n": len(values), "mean": mean, "std": spread, "ci95": interval95(values)}


def paired(treated: dict[int, dict], base: dict[int, dict], key: str) -> dict:
    """treated − base per common seed, summarised, with the two-sided paired t-test p-value."""
    seeds = sorted(set(treated) & set(base))
    diffs = [treated[s][key] - base[s][key] for s in seeds]
    out = describe(diffs) | {"seeds": seeds}
    out["p_value"] = float(stats.ttest_1samp(diffs, 0.0).pvalue) if len(diffs) > 1 else None
    return out


def summarise(args: argparse.Namespace, out: Path) -> dict:
    """Per method: each final metric (and selfsup's level rewards) described over the finished seeds; per
    selfsup method its paired difference to its base, and per other key scoring to TF-IDF's run (if run);
    the SFT reference's metrics (the base's "before")."""
    summary: dict[str, dict] = {"methods": {}, "vs_base": {}, "vs_tfidf": {}}
    for base in args.bases:
        base_runs = finished(out, base, args.seeds)
        tfidf_runs = finished(out, method_name(base, "tfidf"), args.seeds) if "tfidf" in args.key_scorings else {}
        for name in [base] + [method_name(base, scoring) for scoring in args.key_scorings]:
            runs = finished(out, name, args.seeds)
            keys = sorted({k for r in runs.values() for k in r if k in METRICS or k.startswith("eval/selfsup/")})
            summary["methods"][name] = {k: describe([runs[s][k] for s in sorted(runs) if k in runs[s]]) for k in keys}
            summary["methods"][name]["seeds"] = sorted(runs)
            if name != base:
                summary["vs_base"][name] = {"base": base} | {k: paired(runs, base_runs, k) for k in METRICS}
            if name not in (base, method_name(base, "tfidf")) and tfidf_runs:
                summary["vs_tfidf"][name] = {k: paired(runs, tfidf_runs, k) for k in METRICS}
    before = finished(out, args.bases[0], args.seeds, "before")
    summary["sft_reference"] = {k: describe([before[s][k] for s in sorted(before) if k in before[s]]) for k in METRICS}
    return summary


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
        "eval_pairs": args.eval_pairs,
        "eval_prompts": args.eval_prompts,
        "seeds": args.seeds,
        "reference_seed": args.reference_seed,
    }
    report |= summarise(args, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
