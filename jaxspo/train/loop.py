"""The driver: one loop over a run's plan of phases (:mod:`jaxspo.train.plan`), evaluating around the preference
phases."""

from __future__ import annotations

from typing import Any

from jaxspo.compilation_cache import enable_compilation_cache
from jaxspo.config import Config
from jaxspo.objectives import switches
from jaxspo.train.hooks import run_hooks
from jaxspo.train.metrics_log import logged_eval
from jaxspo.train.outputs import write_outputs
from jaxspo.train.phase import Phase
from jaxspo.train.plan import EvalMetrics, OnePreferencePhase, PhasePlan, PhaseSetup, PlannedPhase, warm_start
from jaxspo.train.preemption import PreemptionGuard
from jaxspo.train.run import Run, RunResult, open_run
from jaxspo.train.stages import SequentialStages


def train(cfg: Config, config_name: str = "run") -> RunResult:
    """SFT warm start (→ frozen reference), then preference optimisation (one phase, or the sequential
    ``stages``), evaluating before and after.

    Resumes from the newest valid checkpoint in the run directory; SIGTERM/SIGINT save and raise
    :class:`~jaxspo.errors.Preempted`.
    """
    enable_compilation_cache(cfg.trainer.compilation_cache_dir)
    run = open_run(cfg, config_name)
    plan: PhasePlan = (
        SequentialStages(run) if switches.staged(run.cfg) else OnePreferencePhase(run)
    )  # all data is checked before any step
    phases = [warm_start(run, plan.phases[0].name), *plan.phases]
    with PreemptionGuard(run.cfg.checkpoint.preemption_grace_seconds) as guard:
        before, after = run_phases(run, plan, phases, guard)
    params, full_params, reference = plan.result()
    write_outputs(run, params, full_params)
    return RunResult(run.run_dir, before, after, params, reference)


def run_phases(
    run: Run, plan: PhasePlan, phases: list[PlannedPhase], guard: PreemptionGuard
) -> tuple[EvalMetrics, EvalMetrics]:
    """Runs (or resumes) ``phases`` in order; returns the evaluations before the first preference phase and after the
    last.

    Evaluation rows (``"phase": "eval"``) count steps over all preference phases; each is logged once.
    """
    before: EvalMetrics | None = None
    after: EvalMetrics | None = None
    offset = 0  # preference steps of the phases before this one
    for position, planned in enumerate(phases):
        preference = planned.kind == "preference"
        if preference and before is None:
            plan.start()
            before = after = _start_eval(run, plan)
        if planned.finished():  # before an interruption: its result is restored, its evaluation was logged
            if preference:
                offset += planned.steps
                after = logged_eval(run.log.path, offset) or after
            continue
        setup = planned.before()
        earlier = tuple(p.name for p in phases[:position])
        no_warm_start = planned.kind == "sft" and not planned.steps  # π_0 is the starting model
        params = setup.run.params if no_warm_start else run_phase(planned, setup, guard, earlier, offset)
        metrics = None
        if preference:
            metrics = after = setup.evaluate(params)
            end = offset = offset + planned.steps
            run.log.truncate(lambda r: not (r["phase"] == "eval" and r["step"] == end))  # logged once
            run.log.log("eval", end, metrics)
        planned.after(params, metrics)
    return before, after


def _start_eval(run: Run, plan: PhasePlan) -> EvalMetrics:
    """The step-0 evaluation: as logged by an interrupted earlier process of this run, or evaluated and logged now."""
    before = logged_eval(run.log.path, 0)
    if before is None:
        run.log.truncate(lambda r: r["phase"] == "sft")
        before = plan.start_eval()
        run.log.log("eval", 0, before)
    return before


def run_phase(
    planned: PlannedPhase, setup: PhaseSetup, guard: PreemptionGuard, earlier: tuple[str, ...], offset: int
) -> Any:
    """Takes one phase's steps (resuming from its checkpoints) after the phases ``earlier``; returns its params.

    An evaluated phase logs an evaluation every ``trainer.eval_every`` steps, at ``offset`` + its step.
    """
    run = setup.run
    phase = Phase(
        run,
        planned.kind,
        planned.steps,
        planned.peak_lr,
        planned.batch_size,
        setup.arrays,
        setup.view,
        planned.name,
        earlier,
        offset,
    )
    every = run.cfg.trainer.eval_every if setup.evaluate is not None else 0

    def periodic_eval(step: int, params: Any) -> None:
        if every and step % every == 0 and step < planned.steps:
            run.log.log("eval", offset + step, setup.evaluate(params))
            run_hooks("after_eval")

    return phase.run_steps(setup.view.frozen, guard, periodic_eval)
