"""``jaxspo export RUN_DIR --out DIR [--peft]``: a finished run's policy as a Hugging Face folder.

For a LoRA run (``lora.rank`` > 0) the run's params are adapters: they are merged into their base
(``W + (alpha / r) · a b``) and written as a whole model, or with ``--peft`` written as PEFT adapters.
A sequential LoRA run (``stages``, merged or stacked) has one adapter per stage: the merged export is the
final policy π_n = π_0 + Δ_1 + … + Δ_n (merged stage by stage), and ``--peft`` writes one PEFT folder per
stage, ``OUT/stage-1`` … ``OUT/stage-n``, each on the HF base π_0, to be loaded and activated together.
"""

from __future__ import annotations

from pathlib import Path

import jax
import transformers

from jaxspo.config import load_config
from jaxspo.models.hf_config import CheckpointError
from jaxspo.models.hf_io import save_hf
from jaxspo.sharding import make_mesh
from jaxspo.peft_export import save_peft
from jaxspo.train.lora import AdaptedModel, load_base, merged_params, read_base_record
from jaxspo.train.lora_stages import STAGE_KEY, LoRAStages, restore_stage_adapters
from jaxspo.checkpoint import restore_params
from jaxspo.train.state import abstract_model, param_shardings


def export_run(
    run_dir: str | Path, out_dir: str | Path, *, dtype: str = "", max_shard_size: str = "", peft: bool = False
) -> Path:
    """Reads RUN_DIR/config.yaml, RUN_DIR/params (Orbax) and RUN_DIR/tokenizer; writes the HF folder ``out_dir``.

    Parameters are restored sharded over all local devices (``fsdp``) with the run's rules. ``dtype`` and
    ``max_shard_size`` default to the run's ``checkpoint.export_dtype`` / ``checkpoint.export_max_shard_size``.
    ``peft``: write a LoRA run's adapters in PEFT's format instead of the merged model.
    """
    run_dir = Path(run_dir)
    for needed in ("config.yaml", "params", "tokenizer"):
        if not (run_dir / needed).exists():
            raise CheckpointError(f"{run_dir / needed}: not found; is {run_dir} the directory of a finished run?")
    cfg = load_config(run_dir / "config.yaml")
    if peft and not cfg.lora.enabled:
        raise CheckpointError(f"{run_dir}: --peft needs a LoRA run (its lora.rank is 0)")
    mesh = make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    _, abstract = abstract_model(cfg.model)
    shardings = param_shardings(abstract, mesh, cfg.mesh.rules)
    target = lambda tree, shard: jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shard
    )  # noqa: E731
    if cfg.lora.enabled:
        record = read_base_record(run_dir)
        if cfg.stages:
            return _export_stages(cfg, run_dir, record, mesh, abstract, shardings, out_dir, dtype, max_shard_size, peft)
        model = AdaptedModel.build(cfg.model, cfg.lora, cfg.loss.reference, mesh, cfg.mesh.rules)
        adapters = restore_params(run_dir / "params", target(model.abstract_adapters, model.adapter_sharding))
        if peft:
            return save_peft(model, adapters, out_dir, record.get("path", "") if record["kind"] == "hf" else "", dtype)
        params = merged_params(model, adapters, load_base(record, cfg.model, abstract, shardings))
    else:
        params = restore_params(run_dir / "params", target(abstract, shardings))
    return _save_model(cfg, run_dir, params, out_dir, dtype, max_shard_size)


def _export_stages(
    cfg, run_dir: Path, record: dict, mesh, abstract, shardings, out_dir, dtype: str, max_shard_size: str, peft: bool
) -> Path:
    """A sequential LoRA run: the merged π_n, or one PEFT folder per stage (see the module docstring)."""
    stages = LoRAStages(cfg, mesh, load_base(record, cfg.model, abstract, shardings), record)
    for adapters in restore_stage_adapters(run_dir / "params", stages, len(cfg.stages)):
        stages.finish(adapters)
    if peft:
        base_model = record.get("path", "") if record["kind"] == "hf" else ""
        for n, adapters in enumerate(stages.adapters):
            save_peft(stages.model(), adapters, Path(out_dir) / STAGE_KEY.format(n=n + 1), base_model, dtype)
        return Path(out_dir)
    return _save_model(cfg, run_dir, stages.merged(), out_dir, dtype, max_shard_size)


def _save_model(cfg, run_dir: Path, params, out_dir, dtype: str, max_shard_size: str) -> Path:
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(run_dir / "tokenizer"), trust_remote_code=False)
    return save_hf(
        params,
        cfg.model,
        tokenizer,
        out_dir,
        dtype=dtype or cfg.checkpoint.export_dtype,
        max_shard_size=max_shard_size or cfg.checkpoint.export_max_shard_size,
    )
