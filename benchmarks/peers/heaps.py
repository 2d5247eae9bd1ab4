"""The heap dimension of the benchmark: every configuration runs under every glibc heap setting below.

- ``glibc``: glibc's defaults, no ``MALLOC_*`` variable (and no ``glibc.malloc.*`` tunable) in the runner's environment;
- ``make``: the thresholds the Makefile's ``RUN_ENV`` sets for ``make demo/test/bench`` (read from the Makefile);
- ``held``: the heap jaxspo's ``trainer.host_heap=hold`` sets (one arena, no ``mmap``, no automatic trim). A peer gets
  it from its environment (``held_heap_environment()``, in force from the process's start); jaxspo gets it the way a
  user does, with the ``trainer.host_heap=hold`` override (``mallopt`` before JAX starts, plus its step pacing) and no
  ``MALLOC_*`` variable. Under ``glibc`` and ``make`` jaxspo runs with ``trainer.host_heap=system``.

The harness itself may run under the Makefile's variables (``make bench``): :func:`runner_environment` builds each
runner's environment from the harness's minus every glibc allocator setting, plus the heap's own.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path

from jaxspo.host_memory import held_heap_environment

MAKEFILE = Path(__file__).resolve().parents[2] / "Makefile"
ALLOCATOR_PREFIX = "MALLOC_"
TUNABLES = "GLIBC_TUNABLES"


def makefile_heap_environment(makefile: Path = MAKEFILE) -> dict[str, str]:
    """The ``MALLOC_*`` assignments of the Makefile's ``RUN_ENV := ...`` line (empty when it sets none)."""
    for line in makefile.read_text().splitlines():
        name, sep, value = line.partition(":=")
        if sep and name.strip() == "RUN_ENV":
            pairs = (word.partition("=") for word in shlex.split(value))
            return {k: v for k, _, v in pairs if k.startswith(ALLOCATOR_PREFIX)}
    raise ValueError(f"{makefile}: no 'RUN_ENV := ...' line; the 'make' heap reads its MALLOC_* settings from there")


def heap_table(makefile: Path = MAKEFILE) -> dict[str, dict[str, str]]:
    """Heap name → the glibc variables a peer gets. ``make`` is left out when the Makefile sets no ``MALLOC_*``
    (it would be ``glibc`` again)."""
    table = {"glibc": {}, "make": makefile_heap_environment(makefile), "held": held_heap_environment()}
    return {name: env for name, env in table.items() if name == "glibc" or env}


def without_allocator_settings(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` minus every ``MALLOC_*`` variable and every ``glibc.malloc.*`` entry of ``GLIBC_TUNABLES``."""
    out = {k: v for k, v in env.items() if not k.startswith(ALLOCATOR_PREFIX) and k != TUNABLES}
    kept = [t for t in env.get(TUNABLES, "").split(":") if t and not t.startswith("glibc.malloc.")]
    if kept:
        out[TUNABLES] = ":".join(kept)
    return out


def runner_environment(
    base: Mapping[str, str], heap: str, system: str, heaps: Mapping[str, Mapping[str, str]]
) -> dict[str, str]:
    """The environment of one runner process under ``heap``: ``base`` (the harness's) without allocator settings,
    plus the heap's variables — for jaxspo under ``held`` none (its override sets the heap, see the module
    docstring)."""
    env = without_allocator_settings(base)
    if not (system == "jaxspo" and heap == "held"):
        env |= heaps[heap]
    return env


def jaxspo_heap_overrides(heap: str) -> list[str]:
    """jaxspo's own setting for ``heap``: ``trainer.host_heap=hold`` under ``held``, ``system`` otherwise."""
    return [f"trainer.host_heap={'hold' if heap == 'held' else 'system'}"]
