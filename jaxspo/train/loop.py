"""The run: build task and model, SFT warm start, preference optimisation, evaluation, artefacts."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from tqdm import tqdm

from jaxspo.checkpoint import PhaseCheckpoints
from jaxspo.config import Config, dump_yaml
from jaxspo.data.soft_labels import orient_pairs
from jaxspo.losses import soft_label_losses
from jaxspo.data.screen import DataReport, encode_screened, write_reports
from jaxspo.data.encode import BatchIterator, encode_preference_rows, encode_prompts, encode_sft_rows
from jaxspo.data.synthetic import build_synthetic_task
from jaxspo.distributed import barrier, broadcast_text, is_writer, to_global
from jaxspo.models import ModelConfig
from jaxspo.models.hf_config import check_same_architecture, model_config_from_hf
from jaxspo.models.hf_io import load_params, load_tokenizer, save_hf
from jaxspo.sharding import make_mesh
from jaxspo.train.evaluate import Evaluator
from jaxspo.train.metrics_log import MetricsLog, plot_curves, read_metrics
from jaxspo.errors import NonFiniteError, Preempted
from jaxspo.train.preemption import PreemptionGuard
from jaxspo.train.state import (
    abstract_model,
    init_params,
    init_state,
    learning_rate_schedule,
    make_optimizer,
    param_shardings,
    state_shardings,
)
from jaxspo.train.reference_cache import cached_reference_logps
from jaxspo.train.scoring import PairScorer
from jaxspo.train.step import batch_fields, make_train_step, needs_reference

log = logging.getLogger("jaxspo")


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
    stamp = broadcast_text(datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S"))  # process 0's clock
    return Path("runs") / f"{config_name}-{stamp}"


class _Phase:
    """Runs one optimisation phase ("sft" or "preference"): steps, logging, checkpoints, resume.

    ``name`` (default: ``phase``) labels its checkpoints (``checkpoints/<name>/``) and metric rows.
    """

    def __init__(self, run: "_Run", phase: str, steps: int, peak_lr: float, batch_size: int, arrays: dict[str, np.ndarray], name: str = ""):
        cfg = run.cfg
        self.run, self.phase, self.steps, self.name = run, phase, steps, name or phase
        schedule = learning_rate_schedule(cfg.optimizer, steps, peak_lr)
        tx = make_optimizer(cfg.optimizer, schedule, run.abstract_params)
        shardings = state_shardings(tx, run.abstract_params, run.param_sharding, run.mesh)
        self.state = init_state(tx, run.params, cfg.trainer.seed, shardings)
        self.step = make_train_step(cfg, run.mesh, run.graphdef, tx, schedule, shardings, phase, batch_size)
        self.batches = BatchIterator({k: arrays[k] for k in batch_fields(phase, cfg.loss)}, batch_size, seed=cfg.trainer.seed)
        self.checkpoints = PhaseCheckpoints(run.run_dir / "checkpoints" / self.name, cfg.checkpoint)
        self.skipped = 0  # steps whose update was dropped as non-finite

    def _resume(self) -> int:
        """Restores this phase's newest valid checkpoint; returns the step to continue after (0 = none)."""
        if not self.run.cfg.checkpoint.resume:
            return 0
        found = self.checkpoints.restore_latest(self.state)
        if found is None:
            return 0
        step, self.state, data = found
        self.batches.restore(data["batches"])
        self.skipped = int(data["skipped"])
        log.info("resuming %s at step %d from %s", self.name, step, self.checkpoints.directory)
        return step

    def _logged_before(self, row: dict[str, Any], step: int) -> bool:
        """Whether a metrics row predates this phase's ``step`` (rows after it are logged again)."""
        if self.phase == "sft":
            return row["phase"] == "sft" and row["step"] <= step
        return row["phase"] == "sft" or row["step"] <= step

    def _check_finite(self, fetched: list[tuple[int, dict]]) -> None:
        for i, metrics in fetched:
            if not metrics["nonfinite"]:
                continue
            rows = self.batches.rows(i - 1).tolist()
            where = f"non-finite loss or gradient at {self.name} step {i} (batch {i - 1}, data rows {rows})"
            if self.run.cfg.trainer.on_nonfinite == "stop":
                self.checkpoints.wait()
                last = self.checkpoints.latest_step()
                kept = f"the last good checkpoint is step {last} in {self.checkpoints.directory}" if last else "no checkpoint was written yet"
                raise NonFiniteError(f"{where}; the update was not applied and {kept}")
            self.skipped += 1
            log.warning("%s; update skipped (trainer.on_nonfinite=skip)", where)

    def run_steps(self, reference: Any, guard: PreemptionGuard, on_step=None) -> Any:
        """Takes the phase's remaining steps (resuming if possible); returns the final params.

        Pending asynchronous saves are committed however the phase ends.
        """
        try:
            return self._run_steps(reference, guard, on_step)
        finally:
            self.checkpoints.close()

    def _run_steps(self, reference: Any, guard: PreemptionGuard, on_step) -> Any:
        cfg = self.run.cfg
        reference = reference if self.step.reference_sharding is not None else None  # precomputed or none
        start = self._resume()
        self.run.log.truncate(lambda r: self._logged_before(r, start))
        bar = tqdm(total=self.steps, initial=start, desc=self.name, disable=not (cfg.logging.progress_bar and is_writer()), dynamic_ncols=True)
        window_start, window_tokens, window_steps = time.perf_counter(), 0.0, 0
        pending: list[tuple[int, dict]] = []
        for i in range(start + 1, self.steps + 1):
            host = next(self.batches)
            batch = to_global(host, self.step.batch_sharding)  # each process sends only its devices' rows
            self.state, metrics = self.step.fn(self.state, reference, batch)
            pending.append((i, metrics))
            log_now = i % cfg.logging.log_every == 0 or i == self.steps
            save_now = self.checkpoints.due(i) or i == self.steps or guard.requested
            if log_now or save_now:
                fetched = [(j, jax.device_get(m)) for j, m in pending]  # blocks until those steps ran
                pending = []
                self._check_finite(fetched)
                window_tokens += sum(float(m["tokens"]) for _, m in fetched)
                window_steps += len(fetched)
            if log_now:
                elapsed = time.perf_counter() - window_start
                row = {k: float(v) for k, v in fetched[-1][1].items() if k not in ("tokens", "nonfinite")}
                row |= {"tokens_per_second": window_tokens / max(elapsed, 1e-9), "seconds_per_step": elapsed / window_steps, "skipped_steps": float(self.skipped)}
                self.run.log.log(self.name, i, row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_second']:.0f}")
                window_start, window_tokens, window_steps = time.perf_counter(), 0.0, 0
            bar.update(1)
            if on_step is not None:
                on_step(i, self.state.params)
            if save_now:
                self.checkpoints.save(i, self.state, {"batches": self.batches.state(), "skipped": self.skipped})
            if guard.requested:
                self.checkpoints.wait()
                bar.close()
                raise Preempted(self.name, i, guard.signum)
        bar.close()
        return self.state.params


def _model_and_tokenizer(model: ModelConfig, task_tokenizer: Any) -> tuple[ModelConfig, Any]:
    """With ``model.path``: the architecture from its config.json and its tokenizer (the task's rows are
    tokenised with it). Without: the recipe's model (vocab defaulting to the tokenizer's) and the task's."""
    if model.path:
        return model_config_from_hf(model.path, model), load_tokenizer(model.path)
    return dataclasses.replace(model, vocab_size=model.vocab_size or len(task_tokenizer)), task_tokenizer


class _Run:
    """Holds the pieces shared by both phases and the evaluator."""

    def __init__(self, cfg: Config, run_dir: Path):
        self.task = build_synthetic_task(cfg.data.synthetic)
        model_cfg, self.tokenizer = _model_and_tokenizer(cfg.model, self.task.tokenizer)
        if model_cfg.vocab_size < len(self.tokenizer):
            raise ValueError(f"model.vocab_size ({model_cfg.vocab_size}) is smaller than the tokenizer's {len(self.tokenizer)} tokens")
        self.cfg = cfg = dataclasses.replace(cfg, model=model_cfg)
        self.run_dir = run_dir
        self.mesh = make_mesh(cfg.mesh.shape())
        self.graphdef, self.abstract_params = abstract_model(cfg.model)
        self.param_sharding = param_shardings(self.abstract_params, self.mesh, cfg.mesh.rules)
        if cfg.model.path:
            self.params = load_params(cfg.model.path, cfg.model, self.abstract_params, self.param_sharding)
        else:
            self.params = init_params(cfg.model, cfg.trainer.seed, self.param_sharding)
        self.reference_params = None  # None: the reference is the policy's starting point (after SFT)
        if cfg.model.reference_path and cfg.model.reference_path != cfg.model.path:
            check_same_architecture(cfg.model.reference_path, cfg.model)
            self.reference_params = load_params(cfg.model.reference_path, cfg.model, self.abstract_params, self.param_sharding)
        self.log = MetricsLog(run_dir, cfg.logging.tensorboard)
        self.data_reports: dict[str, DataReport] = {}

    def encoded(self, split: str, limit: int | None = None) -> dict[str, np.ndarray]:
        """A split (its first ``limit`` rows) as static-shape arrays; bad rows handled by ``data.on_bad_row``.

        What was kept and skipped, by reason, goes to RUN_DIR/data_report.json.
        """
        length = self.cfg.data.max_length
        soft_losses = soft_label_losses(self.cfg.loss.terms)
        if split == "sft":
            encode = functools.partial(encode_sft_rows, tokenizer=self.tokenizer, max_length=length)
        elif soft_losses:  # soft labels: p̂ < ½ swaps the pair; a missing p̂ is an error for the train split

            def encode(rows):
                required_by = soft_losses if split == "train" else []
                return encode_preference_rows(orient_pairs(rows, required_by), self.tokenizer, length)

        else:  # hard labels: chosen/rejected as given
            encode = functools.partial(encode_preference_rows, tokenizer=self.tokenizer, max_length=length)
        arrays, report = encode_screened(
            self.task.splits[split][:limit],
            encode,
            f"{self.cfg.data.task}:{split}",
            self.cfg.data.on_bad_row,
        )
        self.data_reports[split] = report
        if is_writer():
            write_reports(list(self.data_reports.values()), self.run_dir / "data_report.json")
        if report.skipped:
            log.warning("%s: skipped %d of %d rows: %s", report.source, report.rows - report.kept, report.rows, report.skipped)
        return arrays

    def evaluator(self) -> Evaluator:
        cfg, splits = self.cfg, self.task.splits
        pairs = self.encoded("eval", cfg.eval.num_pairs)
        prompt_texts = [row["prompt"] for row in splits["eval"][: cfg.eval.num_prompts]]
        tokens, valid = encode_prompts(prompt_texts, self.tokenizer, cfg.data.max_prompt_length)
        return Evaluator(cfg, self.mesh, self.graphdef, self.tokenizer, pairs, (tokens, valid, prompt_texts), self.task.gold_rewards, self.task.dimensions)


def train(cfg: Config, config_name: str = "run") -> RunResult:
    """SFT warm start (→ frozen reference), then preference optimisation, evaluating before and after.

    Resumes from the newest valid checkpoint in the run directory; SIGTERM/SIGINT save and raise
    :class:`Preempted`.
    """
    run_dir = resolve_run_dir(cfg, config_name)
    checkpoint_root = run_dir / "checkpoints"
    if not cfg.checkpoint.resume and checkpoint_root.exists():
        raise FileExistsError(f"{checkpoint_root} holds checkpoints of an earlier run; set checkpoint.resume=true to continue it or choose another run_dir")
    barrier("jaxspo: run directory checked")  # before any process creates checkpoints there
    run_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(cfg, run_dir)
    cfg = run.cfg
    if is_writer():
        dump_yaml(cfg, run_dir / "config.yaml")
        run.tokenizer.save_pretrained(str(run_dir / "tokenizer"))
    eval_key = jax.random.key(cfg.trainer.seed + 1)
    reference_dir = (checkpoint_root / "reference").resolve()
    first_phase = "stage-1" if cfg.stages else "preference"  # stages: the sequential recipe (jaxspo/train/stages.py)
    resuming_preference = cfg.checkpoint.resume and (checkpoint_root / first_phase).is_dir() and reference_dir.is_dir()

    stages = _sequential_stages(run) if cfg.stages else None  # all data is checked before any step runs
    train_arrays = run.encoded("train") if stages is None else None
    sft_arrays = run.encoded("sft") if cfg.trainer.sft_steps and not resuming_preference else None
    with PreemptionGuard(cfg.checkpoint.preemption_grace_seconds) as guard:
        if resuming_preference:
            run.params = restore_params(reference_dir, run.params)
        else:
            if cfg.trainer.sft_steps:
                sft = _Phase(run, "sft", cfg.trainer.sft_steps, cfg.trainer.sft_learning_rate, cfg.trainer.sft_batch_size, sft_arrays)
                run.params = sft.run_steps(None, guard)
            save_params(run.params, reference_dir)
        if stages is not None:
            return stages.train(guard, eval_key)
        reference = run.params if run.reference_params is None else run.reference_params
        evaluator = run.evaluator()
        before = _logged_eval(run.log.path, 0) if resuming_preference else None
        if before is None:
            run.log.truncate(lambda r: r["phase"] == "sft")
            before = evaluator(reference, reference, eval_key)
            run.log.log("eval", 0, before)

        def periodic_eval(step: int, params: Any) -> None:
            if cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0 and step < cfg.trainer.steps:
                run.log.log("eval", step, evaluator(params, reference, eval_key))

        if needs_reference(cfg.loss) and cfg.loss.reference == "precomputed":
            scorer = PairScorer(run.graphdef, run.mesh, cfg.mesh.rules, cfg.trainer.batch_size)
            cached, _ = cached_reference_logps(cfg.loss.reference_cache_dir, scorer, reference, train_arrays, run.tokenizer)
            train_arrays = train_arrays | cached
        preference = _Phase(run, "preference", cfg.trainer.steps, cfg.optimizer.learning_rate, cfg.trainer.batch_size, train_arrays)
        params = preference.run_steps(reference, guard, periodic_eval)
    after = evaluator(params, reference, eval_key)
    run.log.truncate(lambda r: not (r["phase"] == "eval" and r["step"] == cfg.trainer.steps))  # logged once
    run.log.log("eval", cfg.trainer.steps, after)
    write_outputs(run, params)
    return RunResult(run_dir, before, after, params, reference)


def write_outputs(run: _Run, params: Any) -> None:
    """Closes the metrics log; writes the final params, the optional HF export and the curves."""
    cfg = run.cfg
    run.log.close()
    if cfg.checkpoint.save_final:
        save_params(params, run.run_dir / "params")
    if cfg.checkpoint.export_hf_dir:
        save_hf(params, cfg.model, run.tokenizer, cfg.checkpoint.export_hf_dir, dtype=cfg.checkpoint.export_dtype, max_shard_size=cfg.checkpoint.export_max_shard_size)
    if cfg.logging.plot and is_writer():
        plot_curves(run.run_dir / "metrics.jsonl", run.run_dir / "curves.png")


def _sequential_stages(run: _Run):
    from jaxspo.train.stages import SequentialStages  # late import: stages.py builds on this module

    return SequentialStages(run)


def _logged_eval(metrics_path: Path, step: int) -> dict[str, float] | None:
    """The evaluation logged at ``step`` by an earlier (interrupted) process of this run, if any."""
    rows = [r for r in read_metrics(metrics_path) if r["phase"] == "eval" and r["step"] == step] if metrics_path.exists() else []
    return {k: v for k, v in rows[-1].items() if k not in ("phase", "step")} if rows else None


def restore_params(path: Path, target: Any) -> Any:
    """Reads params saved by :func:`save_params` onto the shardings of ``target`` (an nnx.State)."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(target))
    with ocp.StandardCheckpointer() as checkpointer:
        pure = checkpointer.restore(path.resolve(), abstract)
    nnx.replace_by_pure_dict(target, pure)
    return target


def save_params(params: Any, path: Path) -> None:
    """Writes the policy parameters with Orbax (a plain nested dict of arrays)."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path.resolve(), nnx.to_pure_dict(params), force=True)
