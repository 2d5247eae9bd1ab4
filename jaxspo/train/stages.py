"""The ``sequential`` recipe (docs/methods/sequential.md): stages trained one after another from the SFT policy π_0.

For stage n (1-based) of ``cfg.stages``:

1. **Pairs**: the task's train split turned into pairs labelled by the stage's dimension alone
   (:func:`~jaxspo.data.dimensions.dimension_pairs`), checked before any step of any stage runs.
2. **Frozen log-probs**: one sharded pass (:class:`~jaxspo.train.scoring.PairScorer`) over the stage's
   pairs under each frozen π_0 … π_{n−1}, cached on disk under ``loss.reference_cache_dir`` keyed by the
   hashes of the pairs, the weights and the tokenizer (:mod:`jaxspo.train.reference_cache`); π_{n−1}'s
   are the stage's precomputed reference, and the per-pair offset Σ_{i<n} λ_{n,i}[R_i(y_w) − R_i(y_l)]
   is computed from all of them (:func:`~jaxspo.losses.sequential.stage_offset`, float64). A stage
   holds one trainable model (plus π_{n−1} for evaluation) and these arrays.
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
from jaxspo.config import Config
from jaxspo.data.dimensions import dimension_pairs
from jaxspo.data.encode import encode_preference_rows
from jaxspo.data.row_store import spill
from jaxspo.data.screen import encode_screened, write_reports
from jaxspo.distributed import is_writer
from jaxspo.errors import DataError
from jaxspo.losses.sequential import stage_offset
from jaxspo.train.evaluate import Evaluator
from jaxspo.lora.choose import stage_views
from jaxspo.lora.stages import StageViews
from jaxspo.train.plan import EvalMetrics, PhaseSetup, PlannedPhase
from jaxspo.train.reference_cache import cached_reference_logps
from jaxspo.train.run import Run
from jaxspo.train.scoring import PairScorer
from jaxspo.objectives.batches import OFFSET_FIELD, PRECOMPUTED_FIELDS

log = logging.getLogger("jaxspo")


def stage_config(cfg: Config, index: int) -> Config:
    """The config stage ``index`` (0-based) trains with: its β_n, peak learning rate and steps."""
    stage = cfg.stages[index]
    return dataclasses.replace(
        cfg,
        loss=dataclasses.replace(cfg.loss, beta=stage.beta or cfg.loss.beta),
        optimizer=dataclasses.replace(cfg.optimizer, learning_rate=stage.learning_rate or cfg.optimizer.learning_rate),
        trainer=dataclasses.replace(cfg.trainer, steps=stage.steps or cfg.trainer.steps),
    )


class SequentialStages:
    """The stages as a plan of phases (:class:`~jaxspo.train.plan.PhasePlan`) from π_0 = ``run.params``.

    Every stage's pairs are encoded at construction (so bad data stops the run before any step).
    """

    def __init__(self, run: Run):
        self.run = run
        self.train_arrays = [self._encode("train", k) for k in range(len(run.cfg.stages))]
        self.eval_arrays = [self._encode("eval", k, run.cfg.eval.num_pairs) for k in range(len(run.cfg.stages))]
        self._scorers: dict[nnx.GraphDef, PairScorer] = {}
        self._evaluators: dict[nnx.GraphDef, Evaluator] = {}
        self.phases = [self._planned(k) for k in range(len(run.cfg.stages))]
        self.views: StageViews | None = None  # π_0 and the finished stages (full models, or LoRA adapters)

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
        encode = functools.partial(encode_preference_rows, tokenizer=self.run.tokenizer, max_length=cfg.data.max_length)
        arrays, report = encode_screened(rows, encode, source, cfg.data.on_bad_row)
        self.run.data_reports[source] = report
        if is_writer():
            write_reports(list(self.run.data_reports.values()), self.run.run_dir / "data_report.json")
        return (
            spill(arrays, cfg.data.spill_dir, f"stage-{index + 1}")
            if cfg.data.spill_dir and split == "train"
            else arrays
        )

    def policy_dir(self, number: int) -> Path:
        """Where π_number is saved: π_0 is the SFT result (``checkpoints/reference``)."""
        root = self.run.run_dir / "checkpoints"
        return (root / ("reference" if number == 0 else f"policy-{number}")).resolve()

    def frozen_fields(self, index: int, view: Callable[[int], tuple[nnx.GraphDef, Any]]) -> dict[str, np.ndarray]:
        """Reference log-probs (π_{n−1}) and the offset ``[N]`` float32 of stage ``index``'s train pairs.

        ``view(i)`` is the frozen π_i as (graph, params), i = 0 … n−1, asked for one at a time.
        """
        cfg, arrays = self.run.cfg, self.train_arrays[index]
        chosen, rejected = [], []
        for number in range(index + 1):
            graphdef, params = view(number)
            logps, _ = cached_reference_logps(
                cfg.loss.reference_cache_dir, self.scorer(graphdef), params, arrays, self.run.tokenizer
            )
            chosen.append(logps["reference_chosen_logps"].astype(np.float64))
            rejected.append(logps["reference_rejected_logps"].astype(np.float64))
        earlier = cfg.stages[:index]
        betas = [stage_config(cfg, k).loss.beta for k in range(index)]
        offset = stage_offset(chosen, rejected, betas, [s.lambdas for s in earlier], cfg.stages[index].lambdas)
        fields = dict(zip(PRECOMPUTED_FIELDS, (chosen[-1].astype(np.float32), rejected[-1].astype(np.float32))))
        return fields | {OFFSET_FIELD: np.asarray(offset, dtype=np.float32)}

    def scorer(self, graphdef: nnx.GraphDef) -> PairScorer:
        """One pair scorer (one compile) per graph: the full model, or a stacked LoRA stage's π_i."""
        if graphdef not in self._scorers:
            self._scorers[graphdef] = PairScorer(
                graphdef, self.run.mesh, self.run.cfg.mesh.rules, self.run.cfg.trainer.batch_size
            )
        return self._scorers[graphdef]

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
        """Stage ``index``'s preparation: its pairs with π_{n−1}'s log-probs and the offset; the run as the stage
        sees it (its config) and its model view (from π_{n−1}, also its reference; LoRA: a fresh adapter on it)."""
        arrays = self.train_arrays[index] | self.frozen_fields(index, self.views.view)
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
