"""The one place that reads ``lora.rank`` for training: the full or the adapted view of a run's phases."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxspo.lora.adapted import AdaptedView
from jaxspo.lora.stages import FullStages, LoRAStages, StageViews
from jaxspo.lora.views import FullView, ModelView


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
