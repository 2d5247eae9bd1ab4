"""A run's base model record: where the base of its adapters comes from, and its sha256.

``RUN_DIR/base.json`` sits next to ``RUN_DIR/params`` (the adapters); checkpoints carry the same record, and
resume and export check the base still hashes the same.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from flax import nnx

from jaxspo.checkpoint import restore_params
from jaxspo.errors import BaseChangedError
from jaxspo.lora.views import abstract_on
from jaxspo.models import ModelConfig
from jaxspo.models.hf_config import CheckpointError
from jaxspo.models.hf_io import load_params
from jaxspo.train.reference_cache import hash_params
from jaxspo.train.state import init_params

BASE_FILE = "base.json"  # RUN_DIR/base.json, next to RUN_DIR/params (the adapters)


def params_sha256(params: nnx.State) -> str:
    """sha256 of every parameter (name, dtype, shape, bytes), gathered one leaf at a time."""
    digest = hashlib.sha256()
    hash_params(digest, params)
    return digest.hexdigest()


def base_record(cfg, run_dir: Path, base: nnx.State) -> dict[str, Any]:
    """Where the base comes from — the SFT result (``checkpoints/reference``), ``model.path``, or the seeded
    random init — and its sha256."""
    if cfg.trainer.sft_steps:
        pointer = {"kind": "orbax", "path": str((run_dir / "checkpoints" / "reference").resolve())}
    elif cfg.model.path:
        pointer = {"kind": "hf", "path": str(Path(cfg.model.path).resolve())}
    else:
        pointer = {"kind": "init", "seed": cfg.trainer.seed}
    return pointer | {"sha256": params_sha256(base)}


def check_base(record: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    """Raises :class:`BaseChangedError` unless the base's sha256 equals the one recorded in ``where``."""
    if record["sha256"] != expected["sha256"]:
        source = expected.get("path") or f"random init (seed {expected.get('seed')})"
        raise BaseChangedError(
            f"{where} was made on a base model with sha256 {expected['sha256'][:16]}…, but the base now "
            f"({source}) has sha256 {record['sha256'][:16]}…; the adapters only fit the base they were trained on"
        )


def load_base(record: dict[str, Any], model_cfg: ModelConfig, abstract: nnx.State, sharding: Any) -> nnx.State:
    """The base params a :func:`base_record` points to, checked against its sha256."""
    if record["kind"] == "hf":
        base = load_params(record["path"], model_cfg, abstract, sharding)
    elif record["kind"] == "orbax":
        base = restore_params(Path(record["path"]), abstract_on(abstract, sharding))
    else:
        base = init_params(model_cfg, record["seed"], sharding)
    check_base({"sha256": params_sha256(base)}, record, "these adapters")
    return base


def write_base_record(record: dict[str, Any], run_dir: Path) -> None:
    (run_dir / BASE_FILE).write_text(json.dumps(record, indent=2) + "\n")


def read_base_record(run_dir: Path) -> dict[str, Any]:
    path = run_dir / BASE_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path}: not found; RUN_DIR/params of a LoRA run holds adapters only, and this file names their base"
        )
    return json.loads(path.read_text())
