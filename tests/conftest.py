"""Test set-up: 8 virtual CPU devices (set before jax is imported) and float32 matmuls."""

import collections
import json
import os
import resource
import shutil
import tempfile
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
# one persistent compilation cache per pytest run, shared by its xdist workers and the `jaxspo` runs they start
# (environment variables, which child processes inherit): a program compiled by one test (the same model, mesh
# and step) is read from disk by the next. The run's first process makes it empty and removes it at the end
# (pytest_unconfigure), so every run starts cold and no run reads another's programs; every program is cached.
# JAX_COMPILATION_CACHE_DIR set by the caller wins ("" = no cache).
OWN_COMPILATION_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    OWN_COMPILATION_CACHE = tempfile.mkdtemp(prefix="jaxspo-test-xla-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = OWN_COMPILATION_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# no size limit: the folder lives for one run, and a limit turns on eviction, whose bookkeeping reads every entry
# on each write (0.7 CPU-s per write at 4,000 entries)
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", "-1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_unconfigure(config) -> None:
    """Removes the compilation cache this process made (the xdist workers inherit it and end first)."""
    if OWN_COMPILATION_CACHE:
        shutil.rmtree(OWN_COMPILATION_CACHE, ignore_errors=True)


# Each test's CPU seconds in a whole `make test` run (JSON lines written by JAXSPO_TEST_CPU_LOG, below; `make
# test-profile`
# refreshes it). `make test` hands files to its workers in collection order (--dist loadfile --no-loadscope-reorder), so
# the files run longest first: a long file then never starts last while the other worker has nothing left to do. A test
# that cost more than SLOW_CPU_S is marked slow: `pytest -m "not slow"` is the quick inner loop (make test runs them
# all).
CPU_PROFILE = Path(__file__).with_name("cpu_profile.jsonl")
SLOW_CPU_S = 5.0


def measured_cpu_seconds() -> dict[str, float]:
    """Test node id → CPU seconds, from :data:`CPU_PROFILE` (empty if it is missing)."""
    if not CPU_PROFILE.exists():
        return {}
    rows = map(json.loads, CPU_PROFILE.read_text().splitlines())
    return {row["test"]: row["cpu_s"] for row in rows}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list) -> None:
    """Marks the tests measured above :data:`SLOW_CPU_S` slow; orders the files by measured CPU seconds, longest first
    (a file's tests keep their order; unmeasured files keep theirs, after the measured ones)."""
    cpu = measured_cpu_seconds()
    per_file = collections.Counter()
    for test, seconds in cpu.items():
        per_file[test.split("::")[0]] += seconds
    for item in items:
        if cpu.get(item.nodeid, 0.0) > SLOW_CPU_S:
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: -per_file[item.nodeid.split("::")[0]])


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
