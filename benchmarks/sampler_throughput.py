"""Sampler throughput (tokens/s) and the share of soft_spo step time spent sampling. Prints JSON.

    .venv/bin/python benchmarks/sampler_throughput.py [--recipe configs/soft_spo.yaml] [--steps 40]
        [--model-path HF_DIR] [key=value ...]

1. The jitted KV-cache sampler alone, on the recipe's model, for the regulariser's batch
   (``loss.kl.prompts × samples_per_prompt`` prompts, ``loss.kl.max_new_tokens`` new tokens): generated tokens/s
   and samples/s over ``--repeats`` calls after one compiling call.
2. A short soft_spo run (no SFT; from ``--model-path`` if given, else the random init): from its
   ``metrics.jsonl``, the regulariser's sampling seconds per step against the whole step time (first
   logged window left out: it includes compilation).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from jaxspo.config import load_config
from jaxspo.data import build_synthetic_task, encode_prompts
from jaxspo.sampling import sample
from jaxspo.sharding import make_mesh
from jaxspo.train.loop import train
from jaxspo.train.run import model_and_tokenizer
from jaxspo.train.metrics_log import read_metrics
from jaxspo.train.scoring import shard_rows
from jaxspo.train.state import abstract_model, init_params, param_shardings


def sampler_alone(cfg, repeats: int) -> dict[str, float]:
    kl = cfg.loss.kl
    task = build_synthetic_task(cfg.data.synthetic)
    model_cfg, tokenizer = model_and_tokenizer(cfg.model, task.tokenizer)
    mesh = make_mesh(cfg.mesh.shape())
    graphdef, abstract = abstract_model(model_cfg)
    params = init_params(model_cfg, 0, param_shardings(abstract, mesh, cfg.mesh.rules))
    rows = kl.prompts * kl.samples_per_prompt
    prompts = [r["prompt"] for r in task.splits["train"][:rows]]
    tokens, valid = encode_prompts(prompts, tokenizer, cfg.data.max_prompt_length)
    tokens, valid = shard_rows(tokens, mesh, cfg.mesh.rules), shard_rows(valid, mesh, cfg.mesh.rules)
    # eos_id = -1: no row stops early, so every call generates exactly rows × loss.kl.max_new_tokens tokens
    options = {
        "max_new_tokens": kl.max_new_tokens,
        "eos_id": -1,
        "pad_id": tokenizer.pad_token_id,
        "temperature": kl.temperature,
    }
    run = lambda key: sample(graphdef, params, tokens, valid, key, **options)  # noqa: E731
    jax.block_until_ready(run(jax.random.key(0)))  # compile
    start = time.perf_counter()
    generated = 0
    for i in range(repeats):
        generated += int(np.asarray(run(jax.random.key(i + 1)).valid).sum())
    seconds = time.perf_counter() - start
    return {
        "batch": rows,
        "max_new_tokens": kl.max_new_tokens,
        "tokens_per_second": round(generated / seconds, 1),
        "samples_per_second": round(repeats * rows / seconds, 1),
        "seconds_per_call": round(seconds / repeats, 4),
    }


def share_in_training(recipe: str, overrides: list[str], steps: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_config(
            recipe,
            overrides
            + [
                f"trainer.steps={steps}",
                "trainer.sft_steps=0",
                "trainer.eval_every=0",
                "logging.log_every=10",
                "logging.progress_bar=false",
                "logging.plot=false",
                "logging.tensorboard=false",
                "checkpoint.every_steps=0",
                "checkpoint.save_final=false",
                "eval.num_pairs=32",
                "eval.num_prompts=8",
                f"run_dir={run_dir}",
            ],
        )
        train(cfg, "bench")
        rows = [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r["phase"] == "preference"][1:]
    sampling = float(np.mean([r["kl/sample_seconds_per_step"] for r in rows]))
    step = float(np.mean([r["perf/seconds_per_step"] for r in rows]))
    return {
        "steps_measured": 10 * len(rows),
        "seconds_per_step": round(step, 4),
        "sample_seconds_per_step": round(sampling, 4),
        "sampling_share_of_step_time": round(sampling / step, 3),
        "sampler_samples_per_second": round(float(np.mean([r["kl/samples_per_second"] for r in rows])), 1),
        "sampler_tokens_per_second": round(float(np.mean([r["kl/sample_tokens_per_second"] for r in rows])), 1),
        "kl_refresh": cfg.loss.kl.refresh,
    }


def main() -> None:
    from jaxspo.platforms import choose_platforms

    choose_platforms()  # the CPU up front on a machine without a TPU: libtpu never probes
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="configs/soft_spo.yaml")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--model-path", default="")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    overrides = list(args.overrides) + ([f"model.path={args.model_path}"] if args.model_path else [])
    cfg = load_config(args.recipe, overrides)
    result = {
        "recipe": args.recipe,
        "devices": f"{len(jax.devices())} x {jax.devices()[0].platform}",
        "sampler": sampler_alone(cfg, args.repeats),
    }
    print(json.dumps(result["sampler"]), flush=True)
    result["training"] = share_in_training(args.recipe, overrides, args.steps)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
