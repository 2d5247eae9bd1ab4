"""The run: build task and model, SFT warm start, preference optimisation, evaluation, artefacts."""

from __future__ import annotations

import dataclasses
import datetime
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from tqdm import tqdm

from jaxspo.config import Config, dump_yaml
from jaxspo.data.encode import BatchIterator, encode_preference_rows, encode_prompts, encode_sft_rows
from jaxspo.data.synthetic import build_synthetic_task
from jaxspo.sharding import make_mesh
from jaxspo.train.evaluate import Evaluator
from jaxspo.train.metrics_log import MetricsLog, plot_curves
from jaxspo.train.state import (
    abstract_model,
    init_params,
    init_state,
    learning_rate_schedule,
    make_optimizer,
    param_shardings,
    state_shardings,
)
from jaxspo.train.step import PREFERENCE_FIELDS, SFT_FIELDS, make_train_step


@dataclasses.dataclass
class RunResult:
    """What a finished run hands back (also written to the run directory)."""

    run_dir: Path
    before: dict[str, float]
    after: dict[str, float]
    params: Any
    reference_params: Any


def resolve_run_dir(cfg: Config, config_name: str) -> Path:
    """``cfg.run_dir`` or ``runs/<config name>-<UTC timestamp>`` (never reuses an old run's folder)."""
    if cfg.run_dir:
        return Path(cfg.run_dir)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config_name}-{stamp}"


class _Phase:
    """Runs one optimisation phase ("sft" or "preference") over an iterator of host batches."""

    def __init__(self, run: "_Run", phase: str, steps: int, peak_lr: float, batch_size: int, arrays: dict[str, np.ndarray]):
        cfg = run.cfg
        self.run, self.phase, self.steps = run, phase, steps
        schedule = learning_rate_schedule(cfg.optimizer, steps, peak_lr)
        tx = make_optimizer(cfg.optimizer, schedule, run.abstract_params)
        shardings = state_shardings(tx, run.abstract_params, run.param_sharding, run.mesh)
        self.state = init_state(tx, run.params, cfg.trainer.seed, shardings)
        self.step = make_train_step(cfg, run.mesh, run.graphdef, tx, schedule, shardings, phase, batch_size)
        fields = SFT_FIELDS if phase == "sft" else PREFERENCE_FIELDS
        self.batches = BatchIterator({k: arrays[k] for k in fields}, batch_size, seed=cfg.trainer.seed)

    def run_steps(self, reference: Any, on_step=None) -> Any:
        """Takes ``steps`` optimizer steps; logs every ``logging.log_every``; returns final params."""
        cfg = self.run.cfg
        bar = tqdm(total=self.steps, desc=self.phase, disable=not cfg.logging.progress_bar, dynamic_ncols=True)
        window_start, window_tokens = time.perf_counter(), 0.0
        pending = []
        for i in range(1, self.steps + 1):
            host = next(self.batches)
            batch = {k: jax.device_put(v, self.step.batch_sharding[k]) for k, v in host.items()}
            self.state, metrics = self.step.fn(self.state, reference, batch)
            pending.append(metrics)
            if i % cfg.logging.log_every == 0 or i == self.steps:
                fetched = [jax.device_get(m) for m in pending]  # blocks: the window's steps are done
                elapsed = time.perf_counter() - window_start
                window_tokens = sum(float(m["tokens"]) for m in fetched)
                last = {k: float(v) for k, v in fetched[-1].items() if k != "tokens"}
                last["tokens_per_second"] = window_tokens / max(elapsed, 1e-9)
                last["seconds_per_step"] = elapsed / len(fetched)
                self.run.log.log(self.phase, i, last)
                bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{last['tokens_per_second']:.0f}")
                pending, window_start = [], time.perf_counter()
            bar.update(1)
            if on_step is not None:
                on_step(i, self.state.params)
        bar.close()
        return self.state.params


class _Run:
    """Holds the pieces shared by both phases and the evaluator."""

    def __init__(self, cfg: Config, run_dir: Path):
        self.task = build_synthetic_task(cfg.data.synthetic)
        self.tokenizer = self.task.tokenizer
        vocab = cfg.model.vocab_size or len(self.tokenizer)
        if vocab < len(self.tokenizer):
            raise ValueError(f"model.vocab_size ({vocab}) is smaller than the tokenizer's {len(self.tokenizer)} tokens")
        self.cfg = cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab))
        self.run_dir = run_dir
        self.mesh = make_mesh(cfg.mesh.shape())
        self.graphdef, self.abstract_params = abstract_model(cfg.model)
        self.param_sharding = param_shardings(self.abstract_params, self.mesh, cfg.mesh.rules)
        self.params = init_params(cfg.model, cfg.trainer.seed, self.param_sharding)
        self.log = MetricsLog(run_dir, cfg.logging.tensorboard)

    def evaluator(self) -> Evaluator:
        cfg, splits = self.cfg, self.task.splits
        pairs = encode_preference_rows(splits["eval"][: cfg.eval.num_pairs], self.tokenizer, cfg.data.max_length)
        prompt_texts = [row["prompt"] for row in splits["eval"][: cfg.eval.num_prompts]]
        tokens, valid = encode_prompts(prompt_texts, self.tokenizer, cfg.data.max_prompt_length)
        return Evaluator(cfg, self.mesh, self.graphdef, self.tokenizer, pairs, (tokens, valid, prompt_texts), self.task.gold_rewards, self.task.dimensions)


def train(cfg: Config, config_name: str = "run") -> RunResult:
    """Runs SFT warm start (→ frozen reference), then preference optimisation, evaluating before/after."""
    run_dir = resolve_run_dir(cfg, config_name)
    run_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(cfg, run_dir)
    cfg = run.cfg
    dump_yaml(cfg, run_dir / "config.yaml")
    run.tokenizer.save_pretrained(str(run_dir / "tokenizer"))
    splits, length = run.task.splits, cfg.data.max_length
    eval_key = jax.random.key(cfg.trainer.seed + 1)

    if cfg.trainer.sft_steps:
        sft = _Phase(run, "sft", cfg.trainer.sft_steps, cfg.trainer.sft_learning_rate, cfg.trainer.sft_batch_size, encode_sft_rows(splits["sft"], run.tokenizer, length))
        run.params = sft.run_steps(None)
    reference = run.params
    evaluator = run.evaluator()
    before = evaluator(reference, reference, eval_key)
    run.log.log("eval", 0, before)

    def periodic_eval(step: int, params: Any) -> None:
        if cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0 and step < cfg.trainer.steps:
            run.log.log("eval", step, evaluator(params, reference, eval_key))

    preference = _Phase(run, "preference", cfg.trainer.steps, cfg.optimizer.learning_rate, cfg.trainer.batch_size, encode_preference_rows(splits["train"], run.tokenizer, length))
    params = preference.run_steps(reference, periodic_eval)
    after = evaluator(params, reference, eval_key)
    run.log.log("eval", cfg.trainer.steps, after)
    run.log.close()
    if cfg.checkpoint.save_final:
        save_params(params, run_dir / "params")
    if cfg.logging.plot:
        plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
    return RunResult(run_dir, before, after, params, reference)


def save_params(params: Any, path: Path) -> None:
    """Writes the policy parameters with Orbax (a plain nested dict of arrays)."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path.resolve(), nnx.to_pure_dict(params), force=True)
