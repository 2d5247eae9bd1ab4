"""JAX's persistent compilation cache: compiled programs are kept on disk, so a second start skips XLA."""

from __future__ import annotations

import os
from pathlib import Path

import jax


def enable_compilation_cache(directory: str) -> Path | None:
    """Points JAX's persistent cache at ``directory`` (``~`` expanded; ``""`` = off) and caches every program.

    The environment variable ``JAX_COMPILATION_CACHE_DIR``, if set, wins (JAX reads it itself).
    Returns the directory in use, or None.
    """
    chosen = os.environ.get("JAX_COMPILATION_CACHE_DIR") or directory
    if not chosen:
        return None
    path = Path(chosen).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
