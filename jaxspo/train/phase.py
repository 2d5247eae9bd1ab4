"""One optimisation phase ("sft" or "preference"): its step, batches, logging, checkpoints and resume."""

from __future__ import annotations

import logging
import time
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from jaxspo.checkpoint import PhaseCheckpoints
from jaxspo.data.bucketing import bucket_widths
from jaxspo.data.layout import layout_arrays
from jaxspo.data.pair_packing import PAIR_FIELD, PairPacker
from jaxspo.data.pipeline import make_batches
from jaxspo.objectives.batches import PackedPairBatch
from jaxspo.distributed import from_process_rows, is_writer
from jaxspo.errors import ConfigError, NonFiniteError, Preempted
from jaxspo.perf import model_flops, throughput
from jaxspo.lora.views import ModelView
from jaxspo.objectives import Objective, build_objective
from jaxspo.train.hooks import run_hooks
from jaxspo.train.precompile import precompile
from jaxspo.train.preemption import PreemptionGuard
from jaxspo.train.run import Run
from jaxspo.train.initialise import initialise
from jaxspo.train.step_flops import step_forwards

log = logging.getLogger("jaxspo")


class Phase:
    """Runs one optimisation phase ("sft" or "preference"): steps, logging, checkpoints, resume.

    ``name`` (default: ``phase``) labels its checkpoints (``checkpoints/<name>/``) and metric rows; on resume the
    metrics log keeps the rows of the ``earlier`` phases of the plan and, for a preference phase, the evaluations
    up to ``eval_offset`` + the resumed step (evaluation rows count steps over all preference phases).
    """

    def __init__(
        self,
        run: Run,
        phase: str,
        steps: int,
        peak_lr: float,
        batch_size: int,
        arrays: dict[str, np.ndarray],
        view: ModelView,
        name: str = "",
        earlier: tuple[str, ...] = ("sft",),
        eval_offset: int = 0,
    ):
        cfg = run.cfg
        self.run, self.phase, self.steps, self.name = run, phase, steps, name or phase
        self.earlier, self.eval_offset, self.view = earlier, eval_offset, view
        objective = build_objective(cfg, phase)
        self.state, self.step = initialise(
            cfg,
            run.mesh,
            view.model,
            view.abstract,
            view.sharding,
            view.initial,
            objective,
            steps,
            peak_lr,
            batch_size,
            view.frozen,
        )
        self._build_batches(objective, arrays, batch_size)
        self.checkpoints = PhaseCheckpoints(run.run_dir / "checkpoints" / self.name, cfg.checkpoint)
        self.skipped = 0  # steps whose update was dropped as non-finite
        run_hooks("phase_start")
        self.augment = None  # the objective's per-step additions (the KL regulariser's policy samples)
        if objective.augmenter is not None:
            shardings = self.step.batch_sharding.fields()
            self.augment = objective.augmenter(run.mesh, view.eval_graphdef, run.tokenizer, run.splits.rows, shardings)

    def _build_batches(self, objective: Objective, arrays: dict[str, np.ndarray], batch_size: int) -> None:
        """The batch pipeline of this process's rows of the objective's host fields (packed or bucketed)."""
        cfg = self.run.cfg
        multiple = cfg.mesh.width_multiple()  # every width splits over mesh.context
        packed = objective.batch_type is PackedPairBatch
        arrays = layout_arrays(arrays, cfg.data, multiple) if packed else arrays
        packing = PAIR_FIELD in objective.fields
        # this process reads only its devices' rows of each batch; the pair packer makes packed_pair per batch
        fields = {k: arrays[k] for k in objective.host_fields if k != PAIR_FIELD}
        buckets, lengths = bucket_widths(fields, cfg.data.buckets, cfg.data.auto_buckets, batch_size, multiple)
        packer = self._pair_packer(fields, batch_size) if packing else None
        shardings = self.step.batch_sharding.fields()
        self.batches = make_batches(
            fields,
            batch_size,
            cfg.trainer.seed,
            buckets,
            shardings,
            cfg.data.workers,
            cfg.data.prefetch,
            lengths,
            packer,
        )
        if packing:
            log.info(
                "data.pack_pairs: %s batches of %d pairs in rows of %d slots, %s rows",
                self.name,
                batch_size,
                self.batches.packer.width,
                self.batches.packer.row_counts(),
            )
        if cfg.data.auto_buckets:
            log.info(
                "data.auto_buckets=%d: %s batches at widths %s; %.1f%% of the slots they compute hold "
                "tokens (%.1f%% at one width)",
                cfg.data.auto_buckets,
                self.name,
                self.batches.widths,
                100 * self.batches.token_fraction(),
                100 * self.batches.token_fraction(one_width=True),
            )

    def _pair_packer(self, fields: dict[str, np.ndarray], batch_size: int) -> PairPacker:
        """``data.pack_pairs``: packs each batch's pairs so micro-batches and the batch's shards hold whole pairs."""
        cfg = self.run.cfg
        pair_sharding = self.step.batch_sharding.soft_label  # split like every per-pair field
        shards = batch_size // pair_sharding.shard_shape((batch_size,))[0]
        try:
            return PairPacker.build(
                cfg.data, fields, batch_size, cfg.trainer.grad_accum_steps, shards, cfg.mesh.width_multiple()
            )
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
        self.view.check_checkpoint(data, f"checkpoint {self.checkpoints.directory / str(step)}")
        self.batches.restore(data["batches"])
        self.skipped = int(data["skipped"])
        log.info("resuming %s at step %d from %s", self.name, step, self.checkpoints.directory)
        return step

    def _logged_before(self, row: dict[str, Any], step: int) -> bool:
        """Whether a metrics row predates this phase's ``step`` (rows after it are logged again)."""
        if row["phase"] == self.name:
            return row["step"] <= step
        if self.phase == "sft":  # the warm start comes first and evaluates nothing
            return False
        if row["phase"] == "eval":
            return row["step"] <= self.eval_offset + step
        return row["phase"] in self.earlier

    def _check_finite(self, fetched: list[tuple[int, dict]]) -> None:
        for i, metrics in fetched:
            if not metrics["nonfinite"]:
                continue
            rows = self.batches.rows(i - 1).tolist()
            where = f"non-finite loss or gradient at {self.name} step {i} (batch {i - 1}, data rows {rows})"
            if self.run.cfg.trainer.on_nonfinite == "stop":
                self.checkpoints.wait()
                last = self.checkpoints.latest_step()
                kept = (
                    f"the last good checkpoint is step {last} in {self.checkpoints.directory}"
                    if last
                    else "no checkpoint was written yet"
                )
                raise NonFiniteError(f"{where}; the update was not applied and {kept}")
            self.skipped += 1
            log.warning("%s; update skipped (trainer.on_nonfinite=skip)", where)

    def take_step(self, i: int, reference: Any) -> tuple[dict[str, jax.Array], dict[str, np.ndarray]]:
        """Step ``i`` (1-based) on the next batch, dispatched without waiting for it (after the ``before_step``
        hooks, e.g. a held heap's :class:`~jaxspo.host_memory.StepPacer`); returns its metrics (device arrays)
        and this process's rows of the batch. ``reference``: as the step takes it (None unless resident)."""
        local = next(self.batches)
        run_hooks("before_step", self.state, local)
        rows = self.batches.global_rows(local)
        shardings = self.step.batch_sharding.fields()
        batch = {k: from_process_rows(a, shardings[k], rows[k]) for k, a in local.items()}
        if self.augment is not None:
            batch |= self.augment(i, self.view.eval_states(self.state.params)[0])
        self.state, metrics = self.step.fn(self.state, reference, self.step.objective.batch(batch))
        return metrics, local

    def precompile(self, reference: Any) -> None:
        """With ``trainer.precompile`` and several batch widths: compiles the step for each before step 1."""
        shapes = self.batches.shapes()
        if not self.run.cfg.trainer.precompile or len(shapes) < 2:
            return
        seconds = precompile(self.step, self.state, reference, shapes)
        if self.batches.packer is None:
            log.info("compiled the %s step for batch widths %s in %.1f s", self.name, self.batches.widths, seconds)
        else:
            log.info(
                "compiled the %s step for batch row counts %s in %.1f s",
                self.name,
                self.batches.packer.row_counts(),
                seconds,
            )

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
        bar = tqdm(
            total=self.steps,
            initial=start,
            desc=self.name,
            disable=not (cfg.logging.progress_bar and is_writer()),
            dynamic_ncols=True,
        )
        window_start, window_tokens, window_steps = time.perf_counter(), 0.0, 0
        window_computed = window_flops = 0.0  # counted on the host from each batch as it is dispatched
        pending: list[tuple[int, dict]] = []
        for i in range(start + 1, self.steps + 1):
            metrics, local = self.take_step(i, reference)
            forwards = step_forwards(cfg, self.step.objective, local, self.batches.batch_size, self.view.frozen_base)
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
                row |= throughput(
                    window_tokens, window_computed, window_flops, elapsed, window_steps, self.run.peak_flops
                ) | {"skipped_steps": float(self.skipped)}
                row |= self.augment.drain_metrics(window_steps) if self.augment is not None else {}
                self.run.log.log(self.name, i, row)
                mfu = {"mfu": f"{row['perf/mfu']:.1%}"} if "perf/mfu" in row else {}
                bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['perf/tokens_per_second']:.0f}", **mfu)
                window_start, window_tokens, window_steps = time.perf_counter(), 0.0, 0
                window_computed = window_flops = 0.0
            bar.update(1)
            if on_step is not None:
                on_step(i, self.state.params)
            if save_now:
                extras = {"batches": self.batches.state(), "skipped": self.skipped} | self.view.checkpoint_extras()
                self.checkpoints.save(i, self.state, extras)
                run_hooks("after_save")
            if guard.requested:
                self.checkpoints.wait()
                bar.close()
                raise Preempted(self.name, i, guard.signum)
        bar.close()
        return self.state.params
