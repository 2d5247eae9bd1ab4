"""Test set-up: 8 virtual CPU devices (set before jax is imported) and float32 matmuls."""

import os
from pathlib import Path

# 8 virtual devices; LLVM at -O0: the suite's programs are tiny, so XLA:CPU's compile time is most of a test's
# time and -O0 (how LLVM optimises the generated CPU code) halves it
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# one persistent compilation cache for the test processes and the runs they start: a program compiled by one
# test (the same model, mesh and step) is read from disk by the next; .pytest_cache/ is not in git
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
