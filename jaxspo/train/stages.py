"""The ``sequential`` recipe (docs/methods/sequential.md): stages trained one after another from the SFT policy π_0.

For stage n (1-based) of ``cfg.stages``:

1. **Pairs**: the task's train split turned into pairs labelled by the stage's dimension alone
   (:func:`~jaxspo.data.dimensions.dimension_pairs`), encoded by the objective (:meth:`Run.encode_rows
   <jaxspo.train.run.Run.encode_rows>`) and checked before any step of any stage runs.
2. **Frozen log-probs**: the objective's preparation of the stage's pairs
   (:func:`~jaxspo.objectives.stage_rows.stage_reference_and_offset`): one sharded pass over them under each
   frozen π_0 … π_{n−1}, cached on disk under ``loss.reference_cache_dir`` keyed by the hashes of the pairs,
   the weights and the tokenizer (:mod:`jaxspo.train.reference_cache`); π_{n−1}'s are the stage's precomputed
   reference, and the per-pair offset Σ_{i<n} λ_{n,i}[R_i(y_w) − R_i(y_l)] is computed from all of them. A
   stage holds one trainable model (plus π_{n−1} for evaluation) and these arrays.
3. **Training**: the ``sequential`` loss with β_n from π_{n−1}, as a preference phase named
   ``stage-n`` (metric rows ``"phase": "stage-n"``, checkpoints ``checkpoints/stage-n/<step>``).
4. **Evaluation** against π_{n−1} (gold reward of sampled responses on every dimension; pair metrics
   on held-out pairs of the stage's dimension), logged as ``"phase": "eval"`` rows whose ``step``
   counts steps over all stages; then π_n is saved to ``checkpoints/policy-n`` (Orbax).

The driver (:func:`jaxspo.train.loop.train`) runs the stages as the plan ``[sft, stage-1, …, stage-n]``:
steps 1–2 are a stage's before-phase hook, saving π_n its after-phase hook. Resume: stages whose
``policy-n`` exists are skipped (π_n is restored); the first one without it continues from its newest
valid checkpoint.

With LoRA (``lora.rank`` > 0) each stage trains one adapter on π_{n−1} (merged into the next stage's base
or stacked, ``lora.stages``) and ``policy-n`` holds that adapter: :mod:`jaxspo.lora.stages`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from jaxspo.checkpoint import save_params
from jaxspo.data.dimensions import dimension_pairs
from jaxspo.data.row_store import spill
from jaxspo.errors import DataError
from jaxspo.lora.choose import stage_views
from jaxspo.lora.stages import StageViews
from jaxspo.objectives import StageContext, build_objective
from jaxspo.objectives.base import EvalMetric, Frozen, Prepared
from jaxspo.objectives.stage_rows import stage_config
from jaxspo.train.evaluate import Evaluator
from jaxspo.train.plan import EvalMetrics, PhaseSetup, PlannedPhase
from jaxspo.train.run import Run

log = logging.getLogger("jaxspo")


class SequentialStages:
    """The stages as a plan of phases (:class:`~jaxspo.train.plan.PhasePlan`) from π_0 = ``run.params``.

    Every stage's pairs are encoded at construction (so bad data stops the run before any step).
    """

    def __init__(self, run: Run):
        self.run = run
        self.train_arrays = [self._encode("train", k) for k in range(len(run.cfg.stages))]
        self.eval_arrays = [self._encode("eval", k, run.cfg.eval.num_pairs) for k in range(len(run.cfg.stages))]
        self._evaluators: dict[nnx.GraphDef, Evaluator] = {}
        self.phases = [self._planned(k) for k in range(len(run.cfg.stages))]
        self.views: StageViews | None = None  # π_0 and the finished stages (full models, or LoRA adapters)
        self.eval_metrics: dict[int, list[EvalMetric]] = {}  # a stage's metrics its preparations add

    def _planned(self, index: int) -> PlannedPhase:
        scfg = stage_config(self.run.cfg, index)
        number, t = index + 1, scfg.trainer
        hooks = (
            functools.partial(self.before, index),
            functools.partial(self.after, index),
            functools.partial(self.finished, index),
        )
        return PlannedPhase(
            "preference", f"stage-{number}", t.steps, scfg.optimizer.learning_rate, t.batch_size, *hooks
        )

    def _encode(self, split: str, index: int, limit: int | None = None) -> dict[str, np.ndarray]:
        cfg = self.run.cfg
        stage = cfg.stages[index]
        source = f"{cfg.data.task}:{split}:stage-{index + 1}:{stage.dimension}"
        rows = dimension_pairs(
            self.run.splits.rows[split],
            stage.dimension,
            min_gap=stage.min_gap,
            pairs_per_prompt=stage.pairs_per_prompt,
            seed=cfg.trainer.seed,
        )[:limit]
        if not rows:
            raise DataError(
                f"{source}: no pair of responses differs by at least min_gap={stage.min_gap} on '{stage.dimension}'"
            )
        arrays = self.run.encode_rows(split, rows, source, source)
        return (
            spill(arrays, cfg.data.spill_dir, f"stage-{index + 1}")
            if cfg.data.spill_dir and split == "train"
            else arrays
        )

    def policy_dir(self, number: int) -> Path:
        """Where π_number is saved: π_0 is the SFT result (``checkpoints/reference``)."""
        root = self.run.run_dir / "checkpoints"
        return (root / ("reference" if number == 0 else f"policy-{number}")).resolve()

    def prepared(self, index: int, policy: Callable[[int], Frozen]) -> Prepared:
        """Stage ``index``'s train pairs as the objective prepares them once π_{n−1} exists (its log-probs and the
        offset: :func:`~jaxspo.objectives.stage_rows.stage_reference_and_offset`).

        ``policy(i)`` is the frozen π_i as (graph, params), i = 0 … n−1, asked for one at a time.
        """
        graphdef, reference = policy(index)
        recipe = self.run.cfg
        context = dataclasses.replace(
            self.run.host_context(reference),
            cfg=stage_config(recipe, index),  # the stage's β_n: its eval metrics rank on the rewards it trains on
            graphdef=graphdef,
            eval_pairs=self.eval_arrays[index],
            stage=StageContext(index, policy, recipe),
        )
        return build_objective(context.cfg).prepare(context, self.train_arrays[index])

    def evaluator(self, graphdef: nnx.GraphDef) -> Evaluator:
        """One evaluator (sampler and scorer compiles) per graph; pairs and β are set per stage."""
        if graphdef not in self._evaluators:
            self._evaluators[graphdef] = self.run.evaluator(graphdef)
        return self._evaluators[graphdef]

    def start(self) -> None:
        """π_0 = ``run.params`` (the warm start's result); with LoRA the stages' adapters go on it."""
        self.views = stage_views(self.run, self.policy_dir)

    def evaluate(self, index: int, graphdef: nnx.GraphDef, params: Any, reference: Any) -> EvalMetrics:
        """Held-out metrics of stage ``index``'s policy against its reference (its dimension's pairs, its β)."""
        evaluator = self.evaluator(graphdef)
        evaluator.cfg, evaluator.pairs = stage_config(self.run.cfg, index), self.eval_arrays[index]
        evaluator.extra_metrics = self.eval_metrics.get(index, [])
        return evaluator(params, reference, self.run.eval_key) | {"eval/stage": float(index + 1)}

    def start_eval(self) -> EvalMetrics:
        """π_0 against itself, on stage 1's pairs (with LoRA: stage 1's adapted graph at b = 0, exactly π_0)."""
        first = self.views.training(stage_config(self.run.cfg, 0), 0)
        return self.evaluate(0, first.eval_graphdef, *first.eval_states(first.initial)) | {"eval/stage": 0.0}

    def finished(self, index: int) -> bool:
        """Whether stage ``index`` finished (and was evaluated) before an interruption; if so restores π_n."""
        path = self.policy_dir(index + 1)
        if not path.is_dir():
            return False
        self.views.restore(path)
        return True

    def before(self, index: int) -> PhaseSetup:
        """Stage ``index``'s preparation: its pairs as the objective prepares them (π_{n−1}'s log-probs, the offset);
        the run as the stage sees it (its config) and its model view (from π_{n−1}, also its reference; LoRA: a
        fresh adapter on it)."""
        prepared = self.prepared(index, self.views.view)
        arrays = self.train_arrays[index] | prepared.fields
        self.eval_metrics[index] = prepared.eval_metrics
        run = copy.copy(self.run)
        run.cfg = stage_config(self.run.cfg, index)
        view = self.views.training(run.cfg, index)
        return PhaseSetup(run, arrays, view, lambda p: self.evaluate(index, view.eval_graphdef, *view.eval_states(p)))

    def after(self, index: int, policy: Any, metrics: EvalMetrics | None) -> None:
        """Saves π_n to ``checkpoints/policy-n`` (LoRA: the stage's adapter only); it is the next stage's start."""
        stage, scfg = self.run.cfg.stages[index], stage_config(self.run.cfg, index)
        save_params(policy, self.policy_dir(index + 1))
        gold = ", ".join(
            f"{k.removeprefix('eval/gold/')} {v:.3f}" for k, v in (metrics or {}).items() if k.startswith("eval/gold/")
        )
        log.info(
            "stage %d (%s, β=%g, λ=%s) done after %d steps: gold %s",
            index + 1,
            stage.dimension,
            scfg.loss.beta,
            stage.lambdas,
            scfg.trainer.steps,
            gold,
        )
        self.views.finish(policy)

    def result(self) -> tuple[Any, Callable[[], Any], Any]:
        return *self.views.result(), self.views.reference
