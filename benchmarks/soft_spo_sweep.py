"""soft_spo α sweep vs DPO on the built-in task, from one shared SFT reference. Prints JSON.

    .venv/bin/python benchmarks/soft_spo_sweep.py [--out /tmp/soft_spo_sweep] [--steps 150] [--alphas 0.25 0.5 1 2]
        [key=value ...]

One SFT run (``configs/soft_spo.yaml`` with 0 preference steps) is exported as a Hugging Face folder;
every method then starts from it (``model.path``, ``trainer.sft_steps=0``), so all share the same
reference. Per run, the held-out evaluation after training: gold correctness and brevity of one sampled
response per eval prompt, log-prob and implicit-reward accuracy on eval pairs, KL(πθ ‖ π_ref) per
sampled response, and the entropy estimate ``eval/response_nll`` = mean −log πθ(y|x) of the policy's
own samples (temperature 1), also per token.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from jaxspo.config import load_config
from jaxspo.train.loop import train

KEYS = (
    "eval/gold/correctness",
    "eval/gold/brevity",
    "eval/logps_accuracy",
    "eval/rewards/accuracies",
    "eval/kl",
    "eval/response_nll",
    "eval/response_tokens",
)
QUIET = [
    "logging.progress_bar=false",
    "logging.plot=false",
    "logging.tensorboard=false",
    "checkpoint.save_final=false",
    "checkpoint.every_steps=0",
]


def _summary(metrics: dict[str, float]) -> dict[str, float]:
    out = {k.removeprefix("eval/"): round(metrics[k], 4) for k in KEYS}
    out["nll_per_token"] = round(metrics["eval/response_nll"] / max(metrics["eval/response_tokens"], 1e-9), 4)
    return out


def main() -> None:
    from jaxspo.platforms import choose_platforms

    choose_platforms()  # the CPU up front on a machine without a TPU: libtpu never probes
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/soft_spo_sweep")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    parser.add_argument("--kl-beta", type=float, default=0.05)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    out = Path(args.out)
    common = QUIET + ["trainer.eval_every=0"] + list(args.overrides)
    start = time.perf_counter()
    sft_dir = out / "sft_hf"
    if not (sft_dir / "config.json").exists():
        sft = load_config(
            "configs/soft_spo.yaml",
            common
            + ["trainer.steps=0", "loss.kl.beta=0", f"checkpoint.export_hf_dir={sft_dir}", f"run_dir={out / 'sft'}"],
        )
        train(sft, "sft")
    start_from = common + [f"model.path={sft_dir}", "trainer.sft_steps=0", f"trainer.steps={args.steps}"]
    runs = [("dpo", "configs/demo.yaml", [])]
    runs += [
        (
            f"soft_spo_a{a:g}",
            "configs/soft_spo.yaml",
            [f"loss.params.soft_spo.alpha={a}", f"loss.kl.beta={args.kl_beta}"],
        )
        for a in args.alphas
    ]
    results = {}
    for name, recipe, extra in runs:
        cfg = load_config(recipe, start_from + extra + [f"run_dir={out / name}"])
        result = train(cfg, name)
        results[name] = _summary(result.after)
        if "reference" not in results:
            results["reference"] = _summary(result.before)
        print(json.dumps({name: results[name]}), flush=True)
    print(
        json.dumps(
            {
                "steps": args.steps,
                "kl_beta": args.kl_beta,
                "seconds": round(time.perf_counter() - start, 1),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
