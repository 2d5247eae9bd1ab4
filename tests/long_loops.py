"""Compiling a test's long-running loop (thousands of optimiser steps) with XLA's optimising CPU back end."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

# tests/conftest.py compiles at LLVM -O0 with the elemental emitters: right for the suite's tiny programs, whose
# compile is most of their cost, but a loop of thousands of steps then runs 3-5x slower than it does optimised
OPTIMISED = {"xla_backend_optimization_level": 2, "xla_cpu_use_fusion_emitters": True}


def compile_optimised(fn: Callable, *args: Any) -> Callable:
    """``fn`` compiled for ``args`` (arrays or pytrees of them) with :data:`OPTIMISED`; call it with the same shapes."""
    return jax.jit(fn).lower(*args).compile(compiler_options=OPTIMISED)
