"""JAX's persistent compilation cache: compiled programs are kept on disk, so a second start skips XLA."""

from __future__ import annotations

import os
from pathlib import Path

import jax

AUTO = "auto"
DEFAULT_DIRECTORY = "~/.cache/jaxspo/xla"
CACHED_BACKENDS = ("tpu", "gpu")  # where ``auto`` turns the cache on (docs/speed.md says why not on CPU)


def cache_directory(setting: str, backend: str) -> str:
    """The directory ``trainer.compilation_cache_dir`` means on ``backend`` (``jax.default_backend()``):
    ``auto`` → :data:`DEFAULT_DIRECTORY` on TPU and GPU, ``""`` (off) elsewhere; any other value as given."""
    if setting == AUTO:
        return DEFAULT_DIRECTORY if backend in CACHED_BACKENDS else ""
    return setting


def enable_compilation_cache(setting: str) -> Path | None:
    """Points JAX's persistent cache at the directory ``setting`` names (see :func:`cache_directory`; ``~``
    expanded; ``""`` = off) and caches every program.

    The environment variable ``JAX_COMPILATION_CACHE_DIR``, if set, wins (JAX reads it itself).
    Returns the directory in use, or None.
    """
    chosen = os.environ.get("JAX_COMPILATION_CACHE_DIR") or cache_directory(setting, jax.default_backend())
    if not chosen:
        return None
    path = Path(chosen).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
