"""A LoRA run's export: its adapters merged into their base, or written in PEFT's format.

A sequential LoRA run (``stages``, merged or stacked) has one adapter per stage: the merged export is the
final policy π_n = π_0 + Δ_1 + … + Δ_n (merged stage by stage), and PEFT's format is one folder per stage,
``OUT/stage-1`` … ``OUT/stage-n``, each on the HF base π_0, to be loaded and activated together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from jaxspo.checkpoint import restore_params
from jaxspo.lora.base import load_base, read_base_record
from jaxspo.lora.merge import merged_params
from jaxspo.objectives import switches
from jaxspo.lora.model import AdaptedModel
from jaxspo.lora.peft import save_peft
from jaxspo.lora.stages import STAGE_KEY, LoRAStages, restore_stage_adapters


def lora_export(
    cfg, run_dir: Path, mesh: Mesh, abstract: nnx.State, shardings: Any, out_dir: str | Path, peft: bool, dtype: str
) -> nnx.State | None:
    """The run's final policy as whole-model params on ``shardings`` (the base of ``RUN_DIR/base.json`` with the
    adapters of ``RUN_DIR/params`` merged in); with ``peft``, None after writing the adapters to ``out_dir``."""
    record = read_base_record(run_dir)
    base_model = record.get("path", "") if record["kind"] == "hf" else ""
    if switches.staged(cfg):
        base = load_base(record, cfg.model, abstract, shardings)
        return _export_stages(cfg, run_dir, mesh, base, record, out_dir, peft, base_model, dtype)
    model = AdaptedModel.build(cfg.model, cfg.lora, cfg.loss.reference, mesh, cfg.mesh.rules)
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), model.abstract_adapters, model.adapter_sharding
    )
    adapters = restore_params(run_dir / "params", target)
    if peft:
        save_peft(model, adapters, out_dir, base_model, dtype)
        return None
    return merged_params(model, adapters, load_base(record, cfg.model, abstract, shardings))


def _export_stages(
    cfg, run_dir: Path, mesh: Mesh, base: nnx.State, record: dict, out_dir, peft: bool, base_model: str, dtype: str
) -> nnx.State | None:
    """A sequential LoRA run: the merged π_n, or (``peft``) one PEFT folder per stage."""
    stages = LoRAStages(cfg, mesh, base, record)
    for adapters in restore_stage_adapters(run_dir / "params", stages, len(cfg.stages)):
        stages.finish(adapters)
    if not peft:
        return stages.merged()
    for n, adapters in enumerate(stages.adapters):
        save_peft(stages.model(), adapters, Path(out_dir) / STAGE_KEY.format(n=n + 1), base_model, dtype)
    return None
