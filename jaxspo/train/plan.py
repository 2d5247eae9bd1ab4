"""A run's plan of phases: the SFT warm start, then one preference phase or the sequential stages.

The driver (:func:`jaxspo.train.loop.train`) runs ``[sft, preference]`` or ``[sft, stage-1, …, stage-n]`` in
order. Each phase comes with hooks: before it, its preparation (data, model view, evaluation:
:class:`PhaseSetup`); after it, what keeps its result (π_0 saved, a stage's policy); and on resume, whether it
finished before an interruption (then its result is restored and it is skipped).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from jaxspo.checkpoint import restore_params, save_params
from jaxspo.lora.choose import base_rebuilt, preference_view
from jaxspo.lora.views import FullView, ModelView
from jaxspo.train.run import Run
from jaxspo.objectives import build_objective

EvalMetrics = dict[str, float]  # an evaluation: metric name -> value


@dataclasses.dataclass
class PhaseSetup:
    """What a before-phase hook prepares: the phase's view of the run (its config), its rows, the model view (what
    it trains, from which params, with which frozen input of the step) and its evaluation."""

    run: Run
    arrays: dict[str, np.ndarray]
    view: ModelView
    evaluate: Callable[[Any], EvalMetrics] | None = None  # trained params -> held-out metrics (None: not evaluated)


def never_finished() -> bool:
    return False


@dataclasses.dataclass
class PlannedPhase:
    """One phase of the plan: ``kind`` ("sft" or "preference"), ``name`` (checkpoints, metric rows), its
    schedule and hooks. ``after(params, metrics)`` gets the phase's evaluation (None for SFT)."""

    kind: str
    name: str
    steps: int
    peak_lr: float
    batch_size: int
    before: Callable[[], PhaseSetup]
    after: Callable[[Any, EvalMetrics | None], None]
    finished: Callable[[], bool] = never_finished  # restores the phase's result if it finished before an interruption


class PhasePlan(Protocol):
    """A recipe's preference phases and what the driver asks of it around them."""

    phases: list[PlannedPhase]

    def start(self) -> None:
        """After the warm start (π_0 = ``run.params``): builds what the phases share (model views, evaluators)."""

    def start_eval(self) -> EvalMetrics:
        """The held-out evaluation of the starting policy (logged at step 0)."""

    def result(self) -> tuple[Any, Callable[[], Any], Any]:
        """(final params, a builder of the whole model's params for the HF export, the last reference)."""


def warm_start(run: Run, first: str) -> PlannedPhase:
    """The SFT warm start (``trainer.sft_steps``; 0: none) giving π_0, saved to ``checkpoints/reference``.

    Finished when the first preference phase ``first`` has checkpoints to resume from (π_0 is restored). π_0
    is neither saved nor restored when it is rebuilt anyway (:func:`~jaxspo.lora.choose.base_rebuilt`). Its
    rows are encoded here, after the recipe's, so bad data stops the run before any step.
    """
    cfg = run.cfg
    root = run.run_dir / "checkpoints"
    reference_dir = (root / "reference").resolve()
    base_reloads = base_rebuilt(cfg)
    resuming = cfg.checkpoint.resume and (root / first).is_dir() and (reference_dir.is_dir() or base_reloads)
    arrays = run.encoded("sft") if cfg.trainer.sft_steps and not resuming else {}

    def finished() -> bool:
        if resuming and not base_reloads:
            run.params = restore_params(reference_dir, run.params)
        return resuming

    def after(params: Any, _: EvalMetrics | None) -> None:
        run.params = params
        if not base_reloads:
            save_params(run.params, reference_dir)

    t = cfg.trainer
    return PlannedPhase(
        "sft",
        "sft",
        t.sft_steps,
        t.sft_learning_rate,
        t.sft_batch_size,
        lambda: PhaseSetup(run, arrays, FullView.of(run)),
        after,
        finished,
    )


class OnePreferencePhase:
    """``[sft, preference]``: one preference phase from π_0 (full fine-tuning, or one LoRA adapter on π_0)."""

    def __init__(self, run: Run):
        self.run = run
        self.arrays = run.encoded("train")
        t = run.cfg.trainer
        self.phases = [
            PlannedPhase(
                "preference",
                "preference",
                t.steps,
                run.cfg.optimizer.learning_rate,
                t.batch_size,
                self.before,
                self.after,
            )
        ]
        self.params: Any = None

    def start(self) -> None:
        """The reference (π_0 unless ``model.reference_path``), the model view, the evaluator and the objective's
        host-side preparation of the train rows (e.g. precomputed reference log-probs, selfsup's degraded copies;
        with the eval metrics it adds)."""
        run = self.run
        self.reference = run.params if run.reference_params is None else run.reference_params
        self.view = preference_view(run, self.reference)
        self.evaluator = run.evaluator(self.view.eval_graphdef)
        prepared = build_objective(run.cfg).prepare(run.host_context(self.reference), self.arrays)
        self.arrays = self.arrays | prepared.fields
        self.evaluator.extra_metrics += prepared.eval_metrics

    def evaluate(self, params: Any) -> EvalMetrics:
        """Held-out metrics of the policy's trained ``params`` (LoRA: adapters) against the reference."""
        return self.evaluator(*self.view.eval_states(params), self.run.eval_key)

    def start_eval(self) -> EvalMetrics:
        return self.evaluate(self.view.initial)

    def before(self) -> PhaseSetup:
        """The train rows as the objective prepared them."""
        return PhaseSetup(self.run, self.arrays, self.view, self.evaluate)

    def after(self, params: Any, _: EvalMetrics | None) -> None:
        self.params = params

    def result(self) -> tuple[Any, Callable[[], Any], Any]:
        view, params = self.view, self.params
        return params, lambda: view.full_params(params), self.reference
