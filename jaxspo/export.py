"""``jaxspo export RUN_DIR --out DIR [--peft]``: a finished run's policy as a Hugging Face folder.

For a LoRA run (``lora.rank`` > 0) the run's params are adapters: they are merged into their base
(``W + (alpha / r) · a b``) and written as a whole model, or with ``--peft`` written as PEFT adapters.
A sequential LoRA run (``stages``, merged or stacked) has one adapter per stage: the merged export is the
final policy π_n = π_0 + Δ_1 + … + Δ_n (merged stage by stage), and ``--peft`` writes one PEFT folder per
stage, ``OUT/stage-1`` … ``OUT/stage-n``, each on the HF base π_0, to be loaded and activated together.
"""

from __future__ import annotations

from pathlib import Path

import transformers

from jaxspo.config import load_config
from jaxspo.models.hf_config import CheckpointError
from jaxspo.models.hf_io import save_hf
from jaxspo.sharding import make_mesh
from jaxspo.lora.choose import run_policy, write_peft
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
    mesh = make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    _, abstract = abstract_model(cfg.model)
    shardings = param_shardings(abstract, mesh, cfg.mesh.rules)
    if peft:
        write_peft(cfg, run_dir / "params", mesh, abstract, shardings, out_dir, dtype)
        return Path(out_dir)
    params = run_policy(cfg, run_dir / "params", mesh, abstract, shardings)
    return _save_model(cfg, run_dir, params, out_dir, dtype, max_shard_size)


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
