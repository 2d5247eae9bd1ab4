"""Test set-up: 8 virtual CPU devices (set before jax is imported) and float32 matmuls."""

import json
import os
import resource
import time
from pathlib import Path

import pytest

# 8 virtual devices; LLVM at -O0 and XLA:CPU's older elemental code generator for fusions: the suite's programs
# are tiny, so compiling them is most of a test's time; -O0 (how LLVM optimises the generated CPU code) halves it,
# and the elemental emitters halve it again (a tiny DPO step: 20 s → 10 s on this 2-core machine, the same loss)
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false",
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# one persistent compilation cache for the test processes and the runs they start: a program compiled by one
# test (the same model, mesh and step) is read from disk by the next; .pytest_cache/ is not in git
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "xla")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


# The test files that take longest (a fresh-clone `make test`, 2-core machine, 2026-12-07), longest first. `make test`
# hands files to its workers in collection order (--dist loadfile --no-loadscope-reorder): starting these first keeps a
# long file from starting last while the other worker has nothing left to do.
LONGEST_FIRST = (
    "test_distributed.py",
    "test_context_parallel.py",
    "test_attention.py",
    "test_pack_pairs.py",
    "test_splash_packed.py",
    "test_lora.py",
    "test_lora_stages.py",
    "test_splash_context.py",
    "test_resume.py",
    "test_fast_logps.py",
    "test_soft_spo_step.py",
    "test_sequential_run.py",
    "test_selfsup_step.py",
    "test_train_step.py",
    "test_bucketing.py",
)


def pytest_collection_modifyitems(items: list) -> None:
    """Runs the files of :data:`LONGEST_FIRST` first, in that order; the others keep their order after them."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# JAXSPO_TEST_CPU_LOG=PATH: each test appends {"test", "cpu_s", "wall_s"} to PATH (JSON lines). CPU seconds count this
# process's threads and its finished child processes (whole runs), set-up and teardown included, so they rank the tests
# by the work they cost even while other jobs share the cores (wall time then measures the machine, not the test).
CPU_LOG = os.environ.get("JAXSPO_TEST_CPU_LOG")


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its waited-for children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Logs the test's CPU and wall seconds to :data:`CPU_LOG` when it is set."""
    cpu, wall = _cpu_seconds(), time.perf_counter()
    yield
    if CPU_LOG:
        with open(CPU_LOG, "a") as log:
            log.write(
                json.dumps(
                    {
                        "test": item.nodeid,
                        "cpu_s": round(_cpu_seconds() - cpu, 2),
                        "wall_s": round(time.perf_counter() - wall, 2),
                    }
                )
                + "\n"
            )
