"""Typed run configuration: :func:`load_config` and the section dataclasses (:mod:`jaxspo.config_sections`).

``load_config("configs/demo.yaml", ["trainer.steps=50", "run_dir=/tmp/r"])`` reads the YAML (and the
files it ``extends``, merged depth-first), applies the overrides, and builds :class:`Config`. Unknown
keys and wrong types raise :class:`ConfigError` naming the key and suggesting the closest valid one
(:mod:`jaxspo.config_parsing`); cross-field checks are in :mod:`jaxspo.config_checks`. Reading a config imports
no jax, flax or transformers, so ``jaxspo --help`` and a config error return at once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from jaxspo.config_checks import REFERENCE_MODES, validate
from jaxspo.config_parsing import apply_override, build_section, read_yaml
from jaxspo.config_sections import (
    DataConfig,
    LossConfig,
    OptimizerConfig,
    MeshConfig,
    TrainerConfig,
    EvalConfig,
    CheckpointConfig,
    LoggingConfig,
    StageConfig,
    Config,
)
from jaxspo.errors import ConfigError
from jaxspo.moved_keys import reject_moved_keys

__all__ = [
    "DataConfig",
    "LossConfig",
    "OptimizerConfig",
    "MeshConfig",
    "TrainerConfig",
    "EvalConfig",
    "CheckpointConfig",
    "LoggingConfig",
    "StageConfig",
    "Config",
    "ConfigError",
    "REFERENCE_MODES",
    "config_from_dict",
    "dump_yaml",
    "load_config",
    "to_dict",
    "validate",
]


def config_from_dict(tree: dict[str, Any]) -> Config:
    """Builds and validates a :class:`Config` from a plain nested mapping."""
    reject_moved_keys(tree)
    cfg = build_section(Config, tree)
    validate(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Reads a YAML recipe (or none: the defaults) and applies dotted ``key=value`` overrides."""
    tree = read_yaml(Path(path)) if path else {}
    defaults = to_dict(Config())
    for override in overrides:
        apply_override(tree, override, defaults)
    try:
        return config_from_dict(tree)
    except ConfigError as err:
        if not path or str(Path(path).resolve()) in str(err):
            raise
        raise ConfigError(
            f"{err} (config {Path(path).resolve()}{' with its overrides' if overrides else ''})"
        ) from None


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (for writing the resolved config)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config, path: Path) -> None:
    """Writes the resolved config, loadable again with :func:`load_config`."""
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
