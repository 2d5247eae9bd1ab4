"""The one place that reads ``lora.rank``: the full or the adapted view of a run's phases, of its step compiled
from shapes alone, and of a finished run's policy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from flax import nnx
from jax.sharding import Mesh

from jaxspo.checkpoint import restore_params
from jaxspo.lora.adapted import AdaptedView
from jaxspo.lora.export import merged_policy, peft_export
from jaxspo.lora.model import AdaptedModel
from jaxspo.lora.stages import FullStages, LoRAStages, StageViews
from jaxspo.lora.views import AbstractView, FullModel, FullView, ModelView, abstract_on
from jaxspo.models.hf_config import CheckpointError
from jaxspo.train.state import abstract_model, param_shardings


def preference_view(run: Any, reference: Any) -> ModelView:
    """The preference phase's view from π_0 = ``run.params``: the whole model, or with ``lora.rank`` > 0 one
    adapter on it (its base record is written to ``RUN_DIR/base.json``). ``reference``: the frozen reference."""
    if run.cfg.lora.enabled:
        return AdaptedView.started(run, reference)
    return FullView.of(run, reference, reference)


def stage_views(run: Any, policy_dir: Callable[[int], Path]) -> StageViews:
    """The sequential stages' views from π_0 = ``run.params``: the whole model per stage, or with
    ``lora.rank`` > 0 one adapter per stage. ``policy_dir(n)``: where stage n's policy is saved."""
    return LoRAStages.started(run) if run.cfg.lora.enabled else FullStages(run, policy_dir)


def base_rebuilt(cfg: Any) -> bool:
    """Whether π_0 needs no saving for a resume: a LoRA run without SFT rebuilds its base (``model.path`` or the
    seeded init) and checks it against its record."""
    return cfg.lora.enabled and not cfg.trainer.sft_steps


def abstract_view(cfg: Any, mesh: Mesh) -> AbstractView:
    """The preference phase's model from shapes alone (``jaxspo compile``): the whole model trained, or with
    ``lora.rank`` > 0 the adapters trained on a frozen base."""
    graphdef, params = abstract_model(cfg.model)
    if cfg.lora.enabled:
        model = AdaptedModel.build(cfg.model, cfg.lora, cfg.loss.reference, mesh, cfg.mesh.rules)
        return AbstractView(model, params, model.abstract_adapters, model.adapter_sharding, frozen_base=True)
    sharding = param_shardings(params, mesh, cfg.mesh.rules)
    return AbstractView(FullModel(graphdef), params, params, sharding, frozen_base=False)


def run_policy(cfg: Any, params_dir: Path, mesh: Mesh, abstract: nnx.State, shardings: Any) -> nnx.State:
    """A finished run's policy as whole-model params on ``shardings``: ``params_dir`` itself, or for a LoRA run its
    adapters merged into the base named by ``base.json`` beside it (:mod:`jaxspo.lora.export`)."""
    if cfg.lora.enabled:
        return merged_policy(cfg, params_dir, mesh, abstract, shardings)
    return restore_params(params_dir, abstract_on(abstract, shardings))


def write_peft(
    cfg: Any, params_dir: Path, mesh: Mesh, abstract: nnx.State, shardings: Any, out_dir, dtype: str
) -> None:
    """Writes a LoRA run's adapters (``params_dir``) in PEFT's format to ``out_dir``; a full run has none."""
    if not cfg.lora.enabled:
        raise CheckpointError(f"{params_dir.parent}: --peft needs a LoRA run (its lora.rank is 0)")
    peft_export(cfg, params_dir, mesh, abstract, shardings, out_dir, dtype)
