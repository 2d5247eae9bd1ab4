"""The sequential stages' model views: the whole model per stage (:class:`FullStages`), or with LoRA
(``stages`` and ``lora.rank`` > 0) one adapter per stage (:class:`LoRAStages`).

Stage n trains a fresh adapter (``b = 0``, init seed ``trainer.seed + n − 1``) on top of π_{n−1}, so its
policy starts at π_{n−1} exactly; π_0 is the base (the SFT result, ``model.path`` or the seeded init).

- ``lora.stages: merged``: at a stage's end its adapter is merged into the base
  (:func:`~jaxspo.lora.merge.merged_params`, float32, stored in the base's dtype); that merged model is π_n,
  the next stage's base and frozen reference, with its own base record (``kind: merged``, sha256).
- ``lora.stages: stacked``: the earlier stages' adapters stay separate and frozen (stacked into the base as
  ``frozen_a`` / ``frozen_b``, never in the optimizer state); π_n = base + Σ_{i≤n} adapter_i.

In both modes ``checkpoints/policy-n`` holds stage n's adapter only, and ``RUN_DIR/params`` all stages'
adapters (``{"stage-1": …, "stage-2": …}``) next to ``RUN_DIR/base.json`` (π_0's record). The merged
model of every stage, π_n = π_0 + Δ_1 + … + Δ_n merged one stage at a time, is :meth:`LoRAStages.merged`:
``jaxspo export`` writes it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import nnx, traverse_util
from jax.sharding import Mesh

from jaxspo.checkpoint import restore_params
from jaxspo.distributed import is_writer
from jaxspo.lora.adapted import AdaptedView
from jaxspo.lora.adapters import FrozenLoRAParam
from jaxspo.lora.base import base_record, params_sha256, write_base_record
from jaxspo.lora.merge import merged_params
from jaxspo.lora.model import AdaptedModel
from jaxspo.lora.views import FullView, ModelView, abstract_on
from jaxspo.train.state import param_shardings

STAGE_KEY = "stage-{n}"  # RUN_DIR/params of a sequential LoRA run: {"stage-1": adapters, …}


def stacked_frozen(model: AdaptedModel, earlier: list[nnx.State], mesh: Mesh, rules) -> nnx.State:
    """``model``'s frozen adapters (``frozen_a [L, S, *in, r]``, ``frozen_b [L, S, r, *out]``) from the
    ``S`` earlier stages' trained adapters, on the shardings of the matrices they adapt."""
    abstract = nnx.filter_state(model.abstract_base, FrozenLoRAParam)

    @functools.partial(jax.jit, out_shardings=param_shardings(abstract, mesh, rules))
    def stack(earlier: list[nnx.State]) -> nnx.State:
        flats = [traverse_util.flatten_dict(nnx.to_pure_dict(a)) for a in earlier]
        pure = {(*path[:-1], "frozen_" + path[-1]): jnp.stack([f[path] for f in flats], axis=1) for path in flats[0]}
        out = jax.tree.map(lambda leaf: leaf, abstract)
        nnx.replace_by_pure_dict(out, traverse_util.unflatten_dict(pure))
        return out

    return stack(earlier)


class StageViews(Protocol):
    """π_0 and the finished stages, as the sequential recipe asks for them."""

    reference: Any  # the frozen reference of the last stage started (π_0 before any)

    def training(self, stage_cfg, index: int) -> ModelView:
        """Stage ``index`` (0-based)'s view: trained from π_index, which is also its reference."""

    def view(self, number: int) -> tuple[nnx.GraphDef, nnx.State]:
        """(graph, params) of the frozen π_number, as the stages train on it (for the scoring pass)."""

    def restore(self, path: Path) -> None:
        """Adds a stage that finished before an interruption, from its saved policy ``path``."""

    def finish(self, trained: nnx.State) -> None:
        """Adds a finished stage's trained params."""

    def result(self) -> tuple[nnx.State, Callable[[], nnx.State]]:
        """(what ``RUN_DIR/params`` holds, a builder of the final policy's whole-model params)."""


class FullStages:
    """Full fine-tuning: stage n trains the whole model from π_{n−1}; only the last finished π is in memory."""

    def __init__(self, run: Any, policy_dir: Callable[[int], Path]):
        self.run, self.policy_dir = run, policy_dir
        self.previous = self.reference = run.params  # π_n of the last finished stage; the last stage's reference
        self.count = 0  # finished stages

    def training(self, stage_cfg, index: int) -> FullView:
        run = self.run  # the stages' references are precomputed: no frozen input in the step
        return FullView(run.graphdef, run.abstract_params, run.param_sharding, self.previous, self.previous)

    def view(self, number: int) -> tuple[nnx.GraphDef, nnx.State]:
        if number == self.count:
            return self.run.graphdef, self.previous
        return self.run.graphdef, restore_params(self.policy_dir(number), jax.tree.map(lambda x: x, self.previous))

    def restore(self, path: Path) -> None:
        self.finish(restore_params(path, jax.tree.map(lambda x: x, self.previous)))

    def finish(self, trained: nnx.State) -> None:
        self.reference, self.previous, self.count = self.previous, trained, self.count + 1

    def result(self) -> tuple[nnx.State, Callable[[], nnx.State]]:
        return self.previous, lambda: self.previous


class LoRAStages:
    """π_0 and the finished stages' adapters; builds each stage's LoRA pieces and the frozen π_i's views."""

    def __init__(self, cfg, mesh: Mesh, base: nnx.State, record: dict[str, Any]):
        self.cfg, self.mesh, self.base, self.record = cfg, mesh, base, record
        self.reference = base  # the last stage's reference
        self.stacked = cfg.lora.stages == "stacked"
        self.adapters: list[nnx.State] = []  # trained adapters of stages 1 … n
        self._models: dict[int, AdaptedModel] = {}
        self._merged = base  # merged mode: π_n of the last finished stage

    @classmethod
    def started(cls, run: Any) -> "LoRAStages":
        """From π_0 = ``run.params``; writes π_0's record to ``RUN_DIR/base.json`` (``RUN_DIR/params`` holds
        every stage's adapters)."""
        stages = cls(run.cfg, run.mesh, run.params, base_record(run.cfg, run.run_dir, run.params))
        if is_writer():
            write_base_record(stages.record, run.run_dir)
        return stages

    def model(self, frozen: int = 0) -> AdaptedModel:
        """The adapted model with ``frozen`` earlier adapters stacked into its base (0: plain LoRA)."""
        if frozen not in self._models:
            cfg = self.cfg
            self._models[frozen] = AdaptedModel.build(
                cfg.model, cfg.lora, cfg.loss.reference, self.mesh, cfg.mesh.rules, frozen
            )
        return self._models[frozen]

    def frozen_base(self, number: int) -> nnx.State:
        """Stacked mode: π_number's arrays for :meth:`model` (``number``)'s base: π_0 + the first ``number``
        adapters."""
        if not number:
            return self.base
        return nnx.merge_state(
            self.base, stacked_frozen(self.model(number), self.adapters[:number], self.mesh, self.cfg.mesh.rules)
        )

    def merged(self, number: int | None = None) -> nnx.State:
        """π_number (default: the last finished stage) as whole-model params: π_0 with the adapters of stages
        1 … number merged one after another (what merged mode trains on)."""
        number = len(self.adapters) if number is None else number
        if not self.stacked and number == len(self.adapters):
            return self._merged
        params = self.base
        for adapters in self.adapters[:number]:
            params = merged_params(self.model(), adapters, params)
        return params

    def view(self, number: int) -> tuple[nnx.GraphDef, nnx.State]:
        """(graph, params) of the frozen π_number, as the stages train on it (for the scoring pass)."""
        if self.stacked:
            return self.model(number).base_graphdef, self.frozen_base(number)
        return self.model().base_graphdef, self.merged(number)

    def training(self, stage_cfg, index: int) -> AdaptedView:
        """Stage ``index`` (0-based)'s LoRA pieces: a fresh adapter on π_index, which is also its reference."""
        number = len(self.adapters)
        assert number == index, f"stage {index + 1} starts after {number} finished stages"
        frozen = index if self.stacked else 0
        base = self.frozen_base(index) if self.stacked else self._merged
        record = self.record
        if index:  # the base the stage's checkpoints belong to: π_0's record with the earlier adapters, new hash
            record = {
                "kind": f"{self.cfg.lora.stages} stages",
                "stages": index,
                "from": self.record,
                "sha256": params_sha256(base),
            }
        self.reference = base
        return AdaptedView(stage_cfg, self.mesh, base, base, record, frozen=frozen, seed=self.cfg.trainer.seed + index)

    def finish(self, adapters: nnx.State) -> None:
        """Adds a finished stage's adapters (merged mode: merges them into the next stage's base)."""
        if not self.stacked:
            self._merged = merged_params(self.model(), adapters, self._merged)
        self.adapters.append(adapters)

    def restore(self, path: Path) -> None:
        self.finish(restore_params(path, self.abstract_adapters()))

    def result(self) -> tuple[nnx.State, Callable[[], nnx.State]]:
        return self.saved(), self.merged

    def abstract_adapters(self) -> nnx.State:
        """One stage's adapters as a restore target (their shapes do not depend on the stage)."""
        model = self.model()
        return abstract_on(model.abstract_adapters, model.adapter_sharding)

    def saved(self) -> nnx.State:
        """All stages' adapters, as written to ``RUN_DIR/params``."""
        return nnx.State({STAGE_KEY.format(n=n + 1): a for n, a in enumerate(self.adapters)})


def restore_stage_adapters(path: Path, stages: LoRAStages, count: int) -> list[nnx.State]:
    """The ``count`` stages' adapters of ``RUN_DIR/params`` (see :meth:`LoRAStages.saved`)."""
    one = stages.abstract_adapters()
    target = nnx.State({STAGE_KEY.format(n=n + 1): jax.tree.map(lambda x: x, one) for n in range(count)})
    restored = restore_params(path, target)
    return [restored[STAGE_KEY.format(n=n + 1)] for n in range(count)]
