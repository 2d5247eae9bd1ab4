"""A LoRA run's policy: its adapters merged into their base (export, evaluation), or written in PEFT's format.

A sequential LoRA run (``stages``, merged or stacked) has one adapter per stage: the merged policy is the
final π_n = π_0 + Δ_1 + … + Δ_n (merged stage by stage), and PEFT's format is one folder per stage,
``OUT/stage-1`` … ``OUT/stage-n``, each on the HF base π_0, to be loaded and activated together.

The adapters are read from ``PARAMS`` (a run's ``RUN_DIR/params``), their base from the record beside it
(``RUN_DIR/base.json``, checked against its sha256).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flax import nnx
from jax.sharding import Mesh

from jaxspo.checkpoint import restore_params
from jaxspo.lora.base import load_base, read_base_record
from jaxspo.lora.merge import merged_params
from jaxspo.objectives import switches
from jaxspo.lora.model import AdaptedModel
from jaxspo.lora.peft import save_peft
from jaxspo.lora.stages import STAGE_KEY, LoRAStages, restore_stage_adapters
from jaxspo.lora.views import abstract_on


def merged_policy(cfg, params_dir: Path, mesh: Mesh, abstract: nnx.State, shardings: Any) -> nnx.State:
    """The run's final policy as whole-model params on ``shardings``: the base of ``params_dir``'s sibling
    ``base.json`` with the adapters of ``params_dir`` merged in."""
    record = read_base_record(params_dir.parent)
    base = load_base(record, cfg.model, abstract, shardings)
    if switches.staged(cfg):
        return _finished_stages(cfg, params_dir, mesh, base, record).merged()
    model = AdaptedModel.build(cfg.model, cfg.lora, cfg.loss.reference, mesh, cfg.mesh.rules)
    return merged_params(model, _adapters(model, params_dir), base)


def peft_export(
    cfg, params_dir: Path, mesh: Mesh, abstract: nnx.State, shardings: Any, out_dir: str | Path, dtype: str
) -> None:
    """Writes the adapters of ``params_dir`` in PEFT's format to ``out_dir`` (a sequential run: one folder per
    stage), on the HF base their record names (none for a random-init or SFT base)."""
    record = read_base_record(params_dir.parent)
    base_model = record.get("path", "") if record["kind"] == "hf" else ""
    if not switches.staged(cfg):
        model = AdaptedModel.build(cfg.model, cfg.lora, cfg.loss.reference, mesh, cfg.mesh.rules)
        save_peft(model, _adapters(model, params_dir), out_dir, base_model, dtype)
        return
    stages = _finished_stages(cfg, params_dir, mesh, load_base(record, cfg.model, abstract, shardings), record)
    for n, adapters in enumerate(stages.adapters):
        save_peft(stages.model(), adapters, Path(out_dir) / STAGE_KEY.format(n=n + 1), base_model, dtype)


def _adapters(model: AdaptedModel, params_dir: Path) -> nnx.State:
    return restore_params(params_dir, abstract_on(model.abstract_adapters, model.adapter_sharding))


def _finished_stages(cfg, params_dir: Path, mesh: Mesh, base: nnx.State, record: dict) -> LoRAStages:
    """A sequential LoRA run's stages, each finished with its saved adapters."""
    stages = LoRAStages(cfg, mesh, base, record)
    for adapters in restore_stage_adapters(params_dir, stages, len(cfg.stages)):
        stages.finish(adapters)
    return stages
