"""``jaxspo export RUN_DIR --out DIR``: a finished run's policy as a Hugging Face folder."""

from __future__ import annotations

from pathlib import Path

import jax
import transformers

from jaxspo.config import load_config
from jaxspo.models.hf_config import CheckpointError
from jaxspo.models.hf_io import save_hf
from jaxspo.sharding import make_mesh
from jaxspo.train.loop import restore_params
from jaxspo.train.state import abstract_model, param_shardings


def export_run(run_dir: str | Path, out_dir: str | Path, *, dtype: str = "", max_shard_size: str = "") -> Path:
    """Reads RUN_DIR/config.yaml, RUN_DIR/params (Orbax) and RUN_DIR/tokenizer; writes the HF folder ``out_dir``.

    Parameters are restored sharded over all local devices (``fsdp``) with the run's rules. ``dtype`` and
    ``max_shard_size`` default to the run's ``checkpoint.export_dtype`` / ``checkpoint.export_max_shard_size``.
    """
    run_dir = Path(run_dir)
    for needed in ("config.yaml", "params", "tokenizer"):
        if not (run_dir / needed).exists():
            raise CheckpointError(f"{run_dir / needed}: not found; is {run_dir} the directory of a finished run?")
    cfg = load_config(run_dir / "config.yaml")
    mesh = make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    _, abstract = abstract_model(cfg.model)
    shardings = param_shardings(abstract, mesh, cfg.mesh.rules)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    params = restore_params(run_dir / "params", target)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(run_dir / "tokenizer"), trust_remote_code=False)
    return save_hf(
        params,
        cfg.model,
        tokenizer,
        out_dir,
        dtype=dtype or cfg.checkpoint.export_dtype,
        max_shard_size=max_shard_size or cfg.checkpoint.export_max_shard_size,
    )
