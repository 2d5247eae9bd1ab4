"""jaxspo vs TRL and Tunix side by side: same weights, data, order, batch and optimiser (``make bench``).

    python benchmarks/vs_peers.py [--shapes small,medium] [--rounds 3] [--steps 30] [--steady-from 6]
        [--configs trl_fp32,jaxspo_resident,...] [--heaps glibc,make,held] [--jaxspo NAME:key=value,key=value ...]
        [--peak-size 2048] [--out FILE]

1. builds the fixtures (benchmarks/.cache/fixtures/<shape>: one random-init HF Llama folder, a 2,048-token
   byte-level BPE, 512 seeded pairs) and the row order (jaxspo's epoch-0 batch order, trainer.seed 0);
2. creates the peers' venvs when missing (benchmarks/.venvs/{trl,tunix});
3. measures this machine's matmul peak (fp32, bf16; JAX and PyTorch);
4. runs every configuration under every heap (peers/heaps.py: glibc's defaults, the Makefile's thresholds,
   jaxspo's held heap) ``--rounds`` times, alternating (round r starts r places further down the list of
   (configuration, heap) runs), each as a fresh process in its system's venv;
5. prints ONE JSON object (and writes it to ``--out``): per shape the headline (peers/headline.py: jaxspo's
   best exact fp32 and best of any configuration over the fastest peer configuration under any heap), and per
   (configuration, heap) the s/step spread, real and padded tokens/s, time to first step, peak RSS, FLOP/s as a
   fraction of the peak, and the max |loss difference| over steps 1–5 against TRL fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # peers/ and this checkout's jaxspo

from peers import configs as config_table  # noqa: E402
from peers import heaps as heap_settings  # noqa: E402
from peers import stats  # noqa: E402
from peers.headline import shape_headline  # noqa: E402
from peers.envs import ensure_venv  # noqa: E402
from peers.fixtures import build_fixture  # noqa: E402

BASE_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "JAX_PLATFORMS": "cpu",
}  # every runner's; the heap's variables come on top
RUNNERS = {"jaxspo": "run_jaxspo.py", "trl": "run_trl.py", "tunix": "run_tunix.py"}


def write_order(path: Path, num_rows: int, batch_size: int, steps: int, seed: int = 0) -> None:
    """Row indices of ``steps`` batches in jaxspo's own batch order (``BatchPipeline``, no buckets)."""
    import numpy as np

    from jaxspo.data.pipeline import BatchPipeline

    batches = BatchPipeline({"row": np.arange(num_rows)}, batch_size, seed)
    path.write_text(json.dumps([int(r) for step in range(steps) for r in batches.rows(step)]))


def last_json_line(text: str) -> dict[str, Any]:
    """The runner's result: the last stdout line that is a JSON object with a ``system`` key."""
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict) and "system" in value:
                return value
    raise ValueError("the runner printed no result line")


def run_name(config: str, heap: str) -> str:
    """The report's key of one (configuration, heap) run."""
    return f"{config}@{heap}"


def runner_command(
    python: Path, name: str, spec: dict[str, Any], heap: str, fixture: Path, order: Path, args: argparse.Namespace
) -> list[str]:
    """The runner's command line for configuration ``name`` under ``heap`` (jaxspo: plus its host-heap override)."""
    overrides = [
        *spec.get("overrides", []),
        *(heap_settings.jaxspo_heap_overrides(heap) if spec["system"] == "jaxspo" else []),
    ]
    return [
        str(python),
        str(HERE / "peers" / RUNNERS[spec["system"]]),
        "--fixture",
        str(fixture),
        "--order",
        str(order),
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--max-length",
        str(args.max_length),
        "--beta",
        str(args.beta),
        "--lr",
        str(args.lr),
        "--config",
        name,
        *overrides,
    ]


def run_one(
    python: Path,
    name: str,
    spec: dict[str, Any],
    heap: str,
    heaps: dict[str, dict[str, str]],
    fixture: Path,
    order: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One configuration under one heap in a fresh process; its JSON result, or {"error": ...} with the stderr tail."""
    command = runner_command(python, name, spec, heap, fixture, order, args)
    env = heap_settings.runner_environment(os.environ | BASE_ENV, heap, spec["system"], heaps) | {
        "BENCH_T0": repr(time.time())
    }
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=HERE.parent)
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: " + done.stderr[-2000:]}
    try:
        return last_json_line(done.stdout)
    except ValueError as e:
        return {"error": f"{e}; stderr: {done.stderr[-2000:]}"}


def measure_peak(size: int) -> dict[str, Any]:
    """FLOP/s of ``size``² matmuls in JAX and PyTorch; ``best`` = the faster of the two per precision."""
    env = heap_settings.without_allocator_settings(os.environ | BASE_ENV)
    command = [sys.executable, str(HERE / "peers" / "peak.py"), "--size", str(size)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    peak = json.loads(done.stdout.strip().splitlines()[-1])
    peak["best"] = {p: max(peak["jax"][p], peak["torch"][p]) for p in ("float32", "bfloat16")}
    return peak


def model_info(fixture_info: dict[str, Any]) -> dict[str, int]:
    """What the FLOP count needs (the fixtures' heads · head_dim = hidden_size)."""
    return {
        "matmul": fixture_info["parameters"]["matmul"],
        "num_layers": fixture_info["num_layers"],
        "attention_width": fixture_info["hidden_size"],
    }


def machine() -> dict[str, Any]:
    """Core count, platform and the CPU's bf16 instruction flags."""
    flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "")
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
    }


def shape_report(
    args: argparse.Namespace,
    table: dict[str, dict[str, Any]],
    info: dict[str, Any],
    by_run: dict[tuple[str, str], list[dict[str, Any]]],
    peak: dict[str, Any],
) -> dict[str, Any]:
    """One shape's part of :func:`report`: its headline, each run's summary, losses and errors."""
    model = model_info(info)
    summaries, errors, losses, orders = {}, {}, {}, {}
    for (config, heap), runs in by_run.items():
        name, spec = run_name(config, heap), table[config]
        good, failed = [r for r in runs if "error" not in r], [r["error"] for r in runs if "error" in r]
        if failed:
            errors[name] = failed
        if not good:
            continue
        per_run = [stats.run_summary(r, model, args.steady_from) for r in good]
        summaries[name] = stats.config_summary(per_run, peak["best"], spec["precision"])
        summaries[name] |= {
            "config": config,
            "heap": heap,
            "system": spec["system"],
            "precision": spec["precision"],
        }
        summaries[name] |= {"overrides": spec["overrides"]} if "overrides" in spec else {}
        summaries[name] |= {"allocator_env": good[0].get("allocator_env")}  # as the runner saw it
        losses[name] = [s["loss"] for s in good[0]["steps"]]
        orders[name] = good[0].get("same_order", True)
    baseline = next(
        (n for n in losses if summaries[n]["config"] == config_table.LOSS_BASELINE), config_table.LOSS_BASELINE
    )
    return {
        "fixture": info,
        "headline": shape_headline(list(summaries.values())),
        "runs": summaries,
        "loss_max_abs_diff_steps_1_5_vs_" + config_table.LOSS_BASELINE: stats.loss_agreement(
            {n: v for n, v in losses.items() if orders[n]}, baseline
        ),
        "losses_steps_1_5": {n: v[:5] for n, v in losses.items()},
        "runs_seconds_per_step": {
            run_name(*key): [[s["seconds"] for s in r["steps"]] for r in runs if "error" not in r]
            for key, runs in by_run.items()
        },
        "errors": errors,
    }


def report(
    args: argparse.Namespace,
    table: dict[str, dict[str, Any]],
    infos: dict[str, dict[str, Any]],
    results: dict[str, dict[tuple[str, str], list[dict[str, Any]]]],
    peak: dict[str, Any],
    heaps: dict[str, dict[str, str]],
) -> dict[str, Any]:
    """The one JSON object: settings, machine, peak, and per shape the headline and the runs' summaries
    (``results[shape][(config, heap)]``: the runners' results, or {"error": ...}, one per round)."""
    shapes = {shape: shape_report(args, table, infos[shape], by_run, peak) for shape, by_run in results.items()}
    return {
        "settings": {
            k: getattr(args, k)
            for k in ("shapes", "rounds", "steps", "steady_from", "batch_size", "max_length", "beta", "lr")
        }
        | {
            "optimizer": "AdamW b1=0.9 b2=0.999 eps=1e-8 weight_decay=0, constant lr, no warm-up, no clipping",
            "env": BASE_ENV,
            "heaps": heaps,
            "jaxspo_heap": "trainer.host_heap=hold under 'held' (no MALLOC_* variable), =system with the others' "
            "variables",
        },
        "machine": machine(),
        "matmul_peak_flops_per_second": peak,
        "flop_count": "padded tokens x (6N + 12 L W d_attn), + (2N + 4 L W d_attn) with an in-step reference "
        "(benchmarks/peers/stats.py)",
        "shapes": shapes,
    }


def selected(text: str, known: list[str], option: str) -> list[str]:
    """The names of a comma list option (all of ``known`` when empty); an unknown name exits with the known ones."""
    names = [n.strip() for n in text.split(",") if n.strip()] or list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"{option}: unknown name(s) {unknown}; known: {sorted(known)}")
    return names


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="small,medium", help="comma list of small, medium (tiny: smoke only)")
    p.add_argument("--rounds", type=int, default=3, help="runs of every configuration, alternating")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--steady-from", type=int, default=6, help="first step of the steady-state statistics (1-based)")
    p.add_argument("--configs", default="", help="comma list of configuration names (default: all)")
    p.add_argument(
        "--heaps",
        default="",
        help="comma list of glibc, make, held: the heaps every configuration runs under (default: all)",
    )
    p.add_argument(
        "--jaxspo",
        action="append",
        default=[],
        metavar="NAME:key=value,...",
        help="an extra jaxspo configuration (repeatable)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument(
        "--peak-size",
        type=int,
        default=2048,
        help="side of the square matmuls of the peak measurement (smaller: a quick run)",
    )
    p.add_argument("--cache", type=Path, default=HERE / ".cache")
    p.add_argument("--venvs", type=Path, default=HERE / ".venvs")
    p.add_argument(
        "--out", type=Path, default=None, help="also write the JSON here (default: CACHE/vs_peers-<UTC time>.json)"
    )
    return p.parse_args()


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def prepare_fixtures(args: argparse.Namespace, shapes: list[str]) -> tuple[dict[str, dict], dict[str, Path]]:
    """Per shape: the fixture's facts and the file of its batch order (both built once, cached)."""
    infos, orders = {}, {}
    for shape in shapes:
        infos[shape] = build_fixture(args.cache / "fixtures", shape, batch_size=args.batch_size)
        orders[shape] = args.cache / "fixtures" / shape / f"order-b{args.batch_size}-s{args.steps}.json"
        write_order(orders[shape], infos[shape]["num_pairs"], args.batch_size, args.steps)
        log(
            f"fixture {shape}: {infos[shape]['parameters']['total']:,} parameters, "
            f"{infos[shape]['mean_real_tokens_per_step']:.0f} real tokens per step"
        )
    return infos, orders


def run_rounds(args, table, runs, heaps, shapes, orders, pythons) -> dict[str, dict[tuple[str, str], list]]:
    """Every (configuration, heap) run of every shape, ``args.rounds`` times, the order rotated each round."""
    results: dict[str, dict[tuple[str, str], list]] = {shape: {run: [] for run in runs} for shape in shapes}
    for round_index in range(args.rounds):
        rotated = runs[round_index % len(runs) :] + runs[: round_index % len(runs)]
        for shape in shapes:
            for name, heap in rotated:
                spec = table[name]
                fixture = args.cache / "fixtures" / shape
                result = run_one(pythons[spec["system"]], name, spec, heap, heaps, fixture, orders[shape], args)
                results[shape][(name, heap)].append(result)
                brief = (
                    result.get("error", "")[:300]
                    or f"ttfs {result['time_to_first_step']:.1f}s, last step {result['steps'][-1]['seconds']:.3f}s"
                )
                log(f"round {round_index + 1}/{args.rounds} {shape} {run_name(name, heap)}: {brief}")
    return results


def log_headlines(out: dict) -> None:
    for shape, figures in out["shapes"].items():
        for kind in ("exact_fp32", "any_config"):
            top = figures["headline"][kind]
            names = [
                run_name(top[side]["config"], top[side]["heap"]) if top[side] else "none"
                for side in ("jaxspo_best", "fastest_peer")
            ]
            ratio = f"{top['ratio']:.2f}x" if top["ratio"] is not None else "n/a"
            log(f"headline {shape} {kind}: {ratio} ({names[0]} over {names[1]}, real tokens/s)")


def main() -> None:
    args = parse_args()
    try:
        table = config_table.all_configs(dict(config_table.parse_jaxspo_flag(f) for f in args.jaxspo))
    except ValueError as e:
        raise SystemExit(str(e)) from None
    names = selected(args.configs, list(table), "--configs")
    heaps = heap_settings.heap_table()
    heaps = {h: heaps[h] for h in selected(args.heaps, list(heaps), "--heaps")}
    runs = [(name, heap) for name in names for heap in heaps]  # every configuration under every heap
    if args.steady_from > args.steps:
        raise SystemExit(f"--steady-from {args.steady_from} is past --steps {args.steps}")
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    infos, orders = prepare_fixtures(args, shapes)
    pythons = {system: ensure_venv(args.venvs, system) for system in sorted({table[n]["system"] for n in names})}
    peak = measure_peak(args.peak_size)
    log(f"matmul peak: {json.dumps(peak['best'])}")
    results = run_rounds(args, table, runs, heaps, shapes, orders, pythons)
    out = report(args, table, infos, results, peak, heaps)
    log_headlines(out)
    text = json.dumps(out, indent=1)
    print(text)
    path = args.out or args.cache / f"vs_peers-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    log(f"written to {path}")


if __name__ == "__main__":
    main()
