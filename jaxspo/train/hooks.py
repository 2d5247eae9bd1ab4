"""Points of the training loop where code from outside it may run, such as the host-heap tuning of
:mod:`jaxspo.host_memory` (installed by ``jaxspo train`` / ``eval`` for ``trainer.host_heap``).

The loop calls :func:`run_hooks` at each point of :data:`HOOK_POINTS`; with nothing registered that is a no-op.

- ``phase_start()``: a phase (SFT, preference, a stage) is about to take its first step;
- ``before_step(previous, batch)``: just before a step is dispatched; ``previous`` is the previous step's
  outputs (a pytree of arrays), ``batch`` this step's host batch (field → array);
- ``after_compile()``: a program was compiled ahead of step 1;
- ``after_eval()``: a periodic evaluation finished;
- ``after_save()``: a checkpoint save was started.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

HOOK_POINTS = ("phase_start", "before_step", "after_compile", "after_eval", "after_save")
_registered: dict[str, list[Callable[..., None]]] = {point: [] for point in HOOK_POINTS}


def add_hook(point: str, hook: Callable[..., None]) -> Callable[[], None]:
    """Runs ``hook`` at ``point`` from now on (process-wide); returns a function that removes it again."""
    if point not in _registered:
        raise ValueError(f"unknown loop hook point '{point}'; one of {', '.join(HOOK_POINTS)}")
    _registered[point].append(hook)
    return lambda: _registered[point].remove(hook)


def run_hooks(point: str, *args: Any) -> None:
    """Calls every hook registered at ``point`` with ``args``, in the order they were added."""
    for hook in _registered[point]:
        hook(*args)
