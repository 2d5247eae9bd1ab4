"""The run: build task and model, SFT warm start, preference optimisation, evaluation, artefacts."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from jaxspo.checkpoint import PhaseCheckpoints, restore_params, save_params
from jaxspo.compilation_cache import enable_compilation_cache
from jaxspo.config import Config, dump_yaml, to_dict
from jaxspo.data.soft_labels import orient_pairs
from jaxspo.losses import soft_label_losses
from jaxspo.data.screen import DataReport, encode_screened, write_reports
from jaxspo.data.encode import encode_preference_rows, encode_prompts, encode_sft_rows
from jaxspo.data.pipeline import make_batches
from jaxspo.data.bucketing import bucket_widths
from jaxspo.data.row_store import spill
from jaxspo.data.layout import layout_arrays
from jaxspo.data.pair_packing import PAIR_FIELD, PairPacker
from jaxspo.data.formats import prompts_of
from jaxspo.data.sources import load_splits
from jaxspo.data.synthetic import build_synthetic_task
from jaxspo.distributed import barrier, broadcast_text, from_process_rows, is_writer
from jaxspo.host_memory import StepPacer, release_freed_memory
from jaxspo.models import ModelConfig
from jaxspo.perf import model_flops, run_peak, throughput
from jaxspo.models.hf_config import check_same_architecture, model_config_from_hf
from jaxspo.models.hf_io import load_params, load_tokenizer, save_hf
from jaxspo.sharding import make_mesh
from jaxspo.train.evaluate import Evaluator
from jaxspo.train.metrics_log import MetricsLog, plot_curves, read_metrics
from jaxspo.errors import ConfigError, NonFiniteError, Preempted, RunDirError
from jaxspo.train.lora import LoRATraining, base_record, check_base, merged_params, write_base_record
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
from jaxspo.train.step_flops import step_forwards
from jaxspo.train.kl_regularizer import KLSampler, kl_active, kl_field_shapes, regularisation_prompts
from jaxspo.train.precompile import precompile
from jaxspo.train.list_objective import uses_lists
from jaxspo.data.lists import encode_list_rows, rank_by_scores
from jaxspo.train import selfsup
from jaxspo.train.selfsup_data import DegreeData, LevelRewardMetrics

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


class Phase:
    """Runs one optimisation phase ("sft" or "preference"): steps, logging, checkpoints, resume.

    ``name`` (default: ``phase``) labels its checkpoints (``checkpoints/<name>/``) and metric rows.
    """

    def __init__(
        self, run: "Run", phase: str, steps: int, peak_lr: float, batch_size: int, arrays: dict[str, np.ndarray],
        lora: LoRATraining | None = None, name: str = "",
    ):
        cfg = run.cfg
        self.run, self.phase, self.steps, self.name = run, phase, steps, name or phase
        self.base_record = lora.record if lora else None  # LoRA: checkpoints hold adapters, tied to this base
        self.frozen_base = lora is not None  # LoRA: the policy's own weights get no gradient (model FLOPs)
        model, abstract, sharding, params = (
            (lora.model, lora.model.abstract_adapters, lora.model.adapter_sharding, lora.initial) if lora
            else (run.graphdef, run.abstract_params, run.param_sharding, run.params)
        )
        schedule = learning_rate_schedule(cfg.optimizer, steps, peak_lr)
        tx = make_optimizer(cfg.optimizer, schedule, abstract)
        shardings = state_shardings(tx, abstract, sharding, run.mesh)
        self.state = init_state(tx, params, cfg.trainer.seed, shardings)
        if phase == "preference":  # selfsup's classify head, if configured, trains alongside the policy
            self.state, shardings = selfsup.attach_head(self.state, shardings, cfg.loss, cfg.model.hidden_size, schedule, run.mesh)
        self.step = make_train_step(cfg, run.mesh, model, tx, schedule, shardings, phase, batch_size)
        layout = cfg.data.layout if phase == "preference" else "padded"  # SFT rows are single sequences
        multiple = cfg.mesh.width_multiple()  # every width splits over mesh.context
        arrays = layout_arrays(arrays, cfg.data, multiple) if layout == "packed" else arrays
        packing = layout == "packed" and cfg.data.pack_pairs
        # this process reads only its devices' rows of each batch; the pair packer makes packed_pair per batch
        fields = {k: arrays[k] for k in batch_fields(phase, cfg.loss, layout, packing) if k != PAIR_FIELD}
        buckets, lengths = bucket_widths(fields, cfg.data.buckets, cfg.data.auto_buckets, batch_size, multiple)
        packer = self._pair_packer(fields, batch_size) if packing else None
        self.batches = make_batches(fields, batch_size, cfg.trainer.seed, buckets, self.step.batch_sharding, cfg.data.workers, cfg.data.prefetch, lengths, packer)
        if packing:
            log.info("data.pack_pairs: %s batches of %d pairs in rows of %d slots, %s rows", self.name, batch_size, self.batches.packer.width, self.batches.packer.row_counts())
        if cfg.data.auto_buckets:
            log.info("data.auto_buckets=%d: %s batches at widths %s; %.1f%% of the slots they compute hold tokens (%.1f%% at one width)",
                     cfg.data.auto_buckets, self.name, self.batches.widths, 100 * self.batches.token_fraction(), 100 * self.batches.token_fraction(one_width=True))
        self.checkpoints = PhaseCheckpoints(run.run_dir / "checkpoints" / self.name, cfg.checkpoint)
        self.skipped = 0  # steps whose update was dropped as non-finite
        self.pacer = StepPacer()  # under trainer.host_heap=hold (docs/speed.md)
        self.kl_sampler = None  # soft_spo's global KL regulariser: on-policy samples drawn before each step
        if phase == "preference" and kl_active(cfg.loss):
            prompts = regularisation_prompts(cfg.loss.kl.prompt_source, run.splits.rows)
            sampling_graphdef = lora.model.eval_graphdef if lora else run.graphdef
            self.kl_sampler = KLSampler(cfg, run.mesh, sampling_graphdef, run.tokenizer, prompts, self.step.batch_sharding)
        self.sampling_params = (lambda adapters: lora.eval_states(adapters)[0]) if lora else (lambda params: params)

    def _pair_packer(self, fields: dict[str, np.ndarray], batch_size: int) -> PairPacker:
        """``data.pack_pairs``: packs each batch's pairs so micro-batches and the batch's shards hold whole pairs."""
        cfg = self.run.cfg
        pair_sharding = self.step.batch_sharding["soft_label"]  # split like every per-pair field
        shards = batch_size // pair_sharding.shard_shape((batch_size,))[0]
        try:
            return PairPacker.build(cfg.data, fields, batch_size, cfg.trainer.grad_accum_steps, shards, cfg.mesh.width_multiple())
        except ValueError as err:  # a pair longer than data.pack_width, a batch that does not split into cells
            raise ConfigError(str(err)) from None

    def _resume(self) -> int:
        """Restores this phase's newest valid checkpoint; returns the step to continue after (0 = none)."""
        if not self.run.cfg.checkpoint.resume:
            return 0
        found = self.checkpoints.restore_latest(self.state)
        if found is None:
            return 0
        step, self.state, data = found
        if self.base_record is not None:
            check_base(self.base_record, data.get("base", {"sha256": "(none)"}), f"checkpoint {self.checkpoints.directory / str(step)}")
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

    def take_step(self, i: int, reference: Any) -> tuple[dict[str, jax.Array], dict[str, np.ndarray]]:
        """Step ``i`` (1-based) on the next batch, dispatched without waiting for it (under a held heap, after
        waiting for the previous step: :class:`~jaxspo.host_memory.StepPacer`); returns its metrics (device
        arrays) and this process's rows of the batch. ``reference``: as the step takes it (None unless resident)."""
        local = next(self.batches)
        self.pacer.before_step(self.state, local)  # held heap: one step's temporaries at a time
        rows = self.batches.global_rows(local)
        batch = {k: from_process_rows(a, self.step.batch_sharding[k], rows[k]) for k, a in local.items()}
        if self.kl_sampler is not None:
            batch |= self.kl_sampler(i, self.sampling_params(self.state.params))
        self.state, metrics = self.step.fn(self.state, reference, batch)
        return metrics, local

    def precompile(self, reference: Any) -> None:
        """With ``trainer.precompile`` and several batch widths: compiles the step for each before step 1."""
        shapes = self.batches.shapes()
        if not self.run.cfg.trainer.precompile or len(shapes) < 2:
            return
        extra = kl_field_shapes(self.run.cfg.loss, self.run.cfg.data.max_prompt_length) if self.kl_sampler is not None else {}
        seconds = precompile(self.step, self.state, reference, [layout | extra for layout in shapes])
        if self.batches.packer is None:
            log.info("compiled the %s step for batch widths %s in %.1f s", self.name, self.batches.widths, seconds)
        else:
            log.info("compiled the %s step for batch row counts %s in %.1f s", self.name, self.batches.packer.row_counts(), seconds)

    def run_steps(self, reference: Any, guard: PreemptionGuard, on_step=None) -> Any:
        """Takes the phase's remaining steps (resuming if possible); returns the final params.

        Pending asynchronous saves are committed however the phase ends.
        """
        try:
            return self._run_steps(reference, guard, on_step)
        finally:
            self.batches.close()
            self.checkpoints.close()

    def _run_steps(self, reference: Any, guard: PreemptionGuard, on_step) -> Any:
        cfg = self.run.cfg
        reference = reference if self.step.reference_sharding is not None else None  # precomputed or none
        start = self._resume()
        self.run.log.truncate(lambda r: self._logged_before(r, start))
        if start < self.steps:  # a run resumed at its last step takes no step
            self.precompile(reference)
        bar = tqdm(total=self.steps, initial=start, desc=self.name, disable=not (cfg.logging.progress_bar and is_writer()), dynamic_ncols=True)
        window_start, window_tokens, window_steps = time.perf_counter(), 0.0, 0
        window_computed = window_flops = 0.0  # counted on the host from each batch as it is dispatched
        pending: list[tuple[int, dict]] = []
        for i in range(start + 1, self.steps + 1):
            metrics, local = self.take_step(i, reference)
            forwards = step_forwards(cfg, self.phase, local, self.batches.batch_size, self.frozen_base)
            window_computed += forwards[0].slots  # the policy's pass over the batch's rows
            window_flops += model_flops(cfg.model, forwards)
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
                row |= throughput(window_tokens, window_computed, window_flops, elapsed, window_steps, self.run.peak_flops) | {"skipped_steps": float(self.skipped)}
                row |= self.kl_sampler.drain_metrics(window_steps) if self.kl_sampler is not None else {}
                self.run.log.log(self.name, i, row)
                mfu = {"mfu": f"{row['perf/mfu']:.1%}"} if "perf/mfu" in row else {}
                bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['perf/tokens_per_second']:.0f}", **mfu)
                window_start, window_tokens, window_steps = time.perf_counter(), 0.0, 0
                window_computed = window_flops = 0.0
            bar.update(1)
            if on_step is not None:
                on_step(i, self.state.params)
            if save_now:
                base = {"base": self.base_record} if self.base_record else {}
                self.checkpoints.save(i, self.state, {"batches": self.batches.state(), "skipped": self.skipped} | base)
                release_freed_memory()  # e.g. the previous save's host copies (kept mapped under trainer.host_heap)
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


class Run:
    """Holds the pieces shared by both phases and the evaluator.

    The data is read and screened before any model is built (``screen``: the splits encoded at once; default
    "train" and "eval", only "eval" for a ``stages`` recipe, which screens its own pairs), so a bad file or
    row stops the command before anything compiles.
    """

    def __init__(self, cfg: Config, run_dir: Path, screen: tuple[str, ...] | None = None):
        self.task = build_synthetic_task(cfg.data.synthetic)
        self.splits = load_splits(cfg.data.source, self.task, cfg.data.task, cfg.data.on_bad_row)
        model_cfg, self.tokenizer = _model_and_tokenizer(cfg.model, self.task.tokenizer)
        if model_cfg.vocab_size < len(self.tokenizer):
            raise ConfigError(
                f"model.vocab_size ({model_cfg.vocab_size}) is smaller than the tokenizer's {len(self.tokenizer)} tokens; set model.vocab_size=0 (the tokenizer's size)"
            )
        self.cfg = cfg = dataclasses.replace(cfg, model=model_cfg)
        self.run_dir = run_dir
        self.data_reports: dict[str, DataReport] = {}
        self._encoded: dict[tuple[str, int | None], dict[str, np.ndarray]] = {}
        for split in screen if screen is not None else ("eval",) if cfg.stages else ("train", "eval"):
            self.encoded(split, cfg.eval.num_pairs if split == "eval" else None)
        self.mesh = make_mesh(cfg.mesh.shape())
        self.peak_flops, peak_source = run_peak(cfg.model.dtype, cfg.logging.peak_flops)  # all devices' FLOP/s, for perf/mfu
        if self.peak_flops is None:
            log.warning("no peak FLOP/s known for %s devices: metrics rows carry no perf/mfu; set logging.peak_flops (docs/speed.md, MFU)", peak_source)
        else:
            log.info("peak %.3g FLOP/s over %d devices (%s, %s): perf/mfu's denominator", self.peak_flops, jax.device_count(), peak_source, cfg.model.dtype)
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
        self.log = MetricsLog(run_dir, cfg.logging.tensorboard, cfg.logging.wandb_project if cfg.logging.wandb else None, to_dict(cfg))

    def encoded(self, split: str, limit: int | None = None) -> dict[str, np.ndarray]:
        """A split (its first ``limit`` rows) as static-shape arrays; bad rows handled by ``data.on_bad_row``.

        What was kept and skipped, by reason, goes to RUN_DIR/data_report.json. Encoded once per (split, limit).
        """
        if (split, limit) in self._encoded:
            return self._encoded[split, limit]
        length, prompt_length = self.cfg.data.max_length, self.cfg.data.max_prompt_length
        soft_losses = soft_label_losses(self.cfg.loss.terms)
        if split == "sft":
            encode = functools.partial(encode_sft_rows, tokenizer=self.tokenizer, max_length=length, max_prompt_length=prompt_length)
        elif split == "train" and uses_lists(self.cfg.loss):  # ranked lists; the built-in task's rankings come from its scores

            def encode(rows):
                need_ranking = set(self.cfg.loss.terms) != {"soft_spo_best_of_n"}  # only best-of-n makes do with 'best'
                return encode_list_rows(rank_by_scores(rows, self.cfg.data.synthetic, self.cfg.trainer.seed), self.tokenizer, length, need_ranking)
        elif soft_losses:  # soft labels: p̂ < ½ swaps the pair; a missing p̂ is an error for the train split

            def encode(rows):
                required_by = soft_losses if split == "train" else []
                return encode_preference_rows(orient_pairs(rows, required_by), self.tokenizer, length, prompt_length)

        else:  # hard labels: chosen/rejected as given
            encode = functools.partial(encode_preference_rows, tokenizer=self.tokenizer, max_length=length, max_prompt_length=prompt_length)
        arrays, report = encode_screened(self.splits.rows[split][:limit], encode, self.splits.names[split], self.cfg.data.on_bad_row, self.splits.reports.get(split))
        self.data_reports[split] = report
        if is_writer():
            write_reports(list(self.data_reports.values()), self.run_dir / "data_report.json")
        if report.skipped:
            log.warning("%s: skipped %d of %d rows: %s", report.source, report.rows - report.kept, report.rows, report.skipped)
        if self.cfg.data.spill_dir and split in ("sft", "train"):  # the pipeline's splits: read row by row from local disk
            arrays = spill(arrays, self.cfg.data.spill_dir, split)
        self._encoded[split, limit] = arrays
        return arrays

    def with_precomputed_reference(self, arrays: dict[str, np.ndarray], reference: Any) -> dict[str, np.ndarray]:
        """``arrays`` plus the reference's log-probs of every pair when ``loss.reference: precomputed``
        (scored once, or read from ``loss.reference_cache_dir``); otherwise ``arrays`` unchanged."""
        cfg = self.cfg
        if not (needs_reference(cfg.loss) and cfg.loss.reference == "precomputed"):
            return arrays
        scorer = PairScorer(self.graphdef, self.mesh, cfg.mesh.rules, cfg.trainer.batch_size)
        cached, _ = cached_reference_logps(cfg.loss.reference_cache_dir, scorer, reference, arrays, self.tokenizer)
        return arrays | cached

    def evaluator(self, graphdef: nnx.GraphDef) -> Evaluator:
        """The held-out evaluator for models of ``graphdef`` (LoRA: the adapted graph, dropout off)."""
        cfg, splits = self.cfg, self.splits
        pairs = self.encoded("eval", cfg.eval.num_pairs)
        prompts = prompts_of(splits.rows["eval"][: cfg.eval.num_prompts])
        tokens, valid = encode_prompts(prompts, self.tokenizer, cfg.data.max_prompt_length, keep_end=True)
        return Evaluator(cfg, self.mesh, graphdef, self.tokenizer, pairs, (tokens, valid, prompts), splits.gold_rewards, splits.dimensions)


def train(cfg: Config, config_name: str = "run") -> RunResult:
    """SFT warm start (→ frozen reference), then preference optimisation, evaluating before and after.

    Resumes from the newest valid checkpoint in the run directory; SIGTERM/SIGINT save and raise
    :class:`Preempted`.
    """
    enable_compilation_cache(cfg.trainer.compilation_cache_dir)
    run_dir = resolve_run_dir(cfg, config_name)
    checkpoint_root = run_dir / "checkpoints"
    if not cfg.checkpoint.resume and checkpoint_root.exists():
        raise RunDirError(f"{checkpoint_root}: holds checkpoints of an earlier run; set checkpoint.resume=true to continue it or choose another run_dir")
    barrier("jaxspo: run directory checked")  # before any process creates checkpoints there
    run_dir.mkdir(parents=True, exist_ok=True)
    run = Run(cfg, run_dir)
    cfg = run.cfg
    if is_writer():
        dump_yaml(cfg, run_dir / "config.yaml")
        run.tokenizer.save_pretrained(str(run_dir / "tokenizer"))
    eval_key = jax.random.key(cfg.trainer.seed + 1)
    reference_dir = (checkpoint_root / "reference").resolve()
    base_reloads = cfg.lora.enabled and not cfg.trainer.sft_steps  # the LoRA base is model.path or the seeded init
    first_phase = "stage-1" if cfg.stages else "preference"  # stages: the sequential recipe (jaxspo/train/stages.py)
    resuming_preference = cfg.checkpoint.resume and (checkpoint_root / first_phase).is_dir() and (reference_dir.is_dir() or base_reloads)

    stages = _sequential_stages(run) if cfg.stages else None  # all data is checked before any step runs
    train_arrays = run.encoded("train") if stages is None else None
    sft_arrays = run.encoded("sft") if cfg.trainer.sft_steps and not resuming_preference else None
    with PreemptionGuard(cfg.checkpoint.preemption_grace_seconds) as guard:
        if resuming_preference and not base_reloads:
            run.params = restore_params(reference_dir, run.params)
        elif not resuming_preference:
            if cfg.trainer.sft_steps:
                sft = Phase(run, "sft", cfg.trainer.sft_steps, cfg.trainer.sft_learning_rate, cfg.trainer.sft_batch_size, sft_arrays)
                run.params = sft.run_steps(None, guard)
            if not base_reloads:
                save_params(run.params, reference_dir)
        if stages is not None:
            return stages.train(guard, eval_key)
        reference = run.params if run.reference_params is None else run.reference_params
        lora = LoRATraining(cfg, run.mesh, run.params, reference, base_record(cfg, run_dir, run.params)) if cfg.lora.enabled else None
        if lora is not None and is_writer():
            write_base_record(lora.record, run_dir)
        evaluated = lora.eval_states if lora else (lambda p: (p, reference))  # (policy, reference) for the evaluator
        evaluator = run.evaluator(lora.model.eval_graphdef if lora else run.graphdef)
        if selfsup.active(cfg.loss):  # degraded copies of the train and eval pairs (docs/methods/selfsup.md)
            degree = DegreeData(cfg, run.tokenizer, run.graphdef, run.mesh, reference, train_arrays)
            train_arrays = train_arrays | degree(train_arrays, with_reference=selfsup.REFERENCE_FIELD in batch_fields("preference", cfg.loss))
            evaluator.extra_metrics.append(LevelRewardMetrics(degree, evaluator.pairs))
        before = _logged_eval(run.log.path, 0) if resuming_preference else None
        if before is None:
            run.log.truncate(lambda r: r["phase"] == "sft")
            before = evaluator(*evaluated(lora.initial if lora else reference), eval_key)
            run.log.log("eval", 0, before)

        def periodic_eval(step: int, params: Any) -> None:
            if cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0 and step < cfg.trainer.steps:
                run.log.log("eval", step, evaluator(*evaluated(params), eval_key))
                release_freed_memory()  # the evaluator's temporaries (kept mapped under trainer.host_heap)

        train_arrays = run.with_precomputed_reference(train_arrays, reference)
        preference = Phase(run, "preference", cfg.trainer.steps, cfg.optimizer.learning_rate, cfg.trainer.batch_size, train_arrays, lora)
        params = preference.run_steps(lora.frozen if lora else reference, guard, periodic_eval)
    after = evaluator(*evaluated(params), eval_key)
    run.log.truncate(lambda r: not (r["phase"] == "eval" and r["step"] == cfg.trainer.steps))  # logged once
    run.log.log("eval", cfg.trainer.steps, after)
    write_outputs(run, params, (lambda: merged_params(lora.model, params, lora.base)) if lora else None)
    return RunResult(run_dir, before, after, params, reference)


def write_outputs(run: Run, params: Any, full_params: Callable[[], Any] | None = None) -> None:
    """Closes the metrics log; writes the final params, the optional HF export and the curves.

    ``full_params`` builds the whole model's params for the HF export (LoRA: base + merged adapters);
    None = ``params`` are the whole model.
    """
    cfg = run.cfg
    run.log.close()
    if cfg.checkpoint.save_final:
        save_params(params, run.run_dir / "params")  # LoRA: the adapters; RUN_DIR/base.json names their base
    if cfg.checkpoint.export_hf_dir:
        save_hf(
            full_params() if full_params else params,
            cfg.model,
            run.tokenizer,
            cfg.checkpoint.export_hf_dir,
            dtype=cfg.checkpoint.export_dtype,
            max_shard_size=cfg.checkpoint.export_max_shard_size,
        )
    if cfg.logging.plot and is_writer():
        plot_curves(run.run_dir / "metrics.jsonl", run.run_dir / "curves.png")


def _sequential_stages(run: Run):
    from jaxspo.train.stages import SequentialStages  # late import: stages.py builds on this module

    return SequentialStages(run)


def _logged_eval(metrics_path: Path, step: int) -> dict[str, float] | None:
    """The evaluation logged at ``step`` by an earlier (interrupted) process of this run, if any."""
    rows = [r for r in read_metrics(metrics_path) if r["phase"] == "eval" and r["step"] == step] if metrics_path.exists() else []
    return {k: v for k, v in rows[-1].items() if k not in ("phase", "step")} if rows else None
