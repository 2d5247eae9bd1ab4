"""The host heap under XLA:CPU: keep freed memory mapped between steps, return it after compiles.

Two glibc behaviours cost a CPU run time or memory:

- XLA:CPU allocates each run's temporary buffer afresh (733 MiB for `make bench`'s medium step).
  glibc serves an allocation that large from a worker thread's arena by ``mmap`` and unmaps it at
  ``free``, so every step faults the whole buffer back in: 440,000 page faults and 1.0 s of kernel
  time in a 2.1 s step. :func:`hold_freed_memory` (one arena, no ``mmap``, no automatic trim) keeps
  freed memory mapped for the next step: 0.04 s of kernel time. A held heap needs the loop to run one
  step's temporaries at a time (:class:`StepPacer`); that is why holding is opt-in
  (``trainer.host_heap: hold``): on TPU/GPU it would only hold the host back.
- XLA's compiler frees hundreds of MiB of scratch per program, which glibc keeps in its RSS.
  :func:`release_freed_memory` (``malloc_trim(0)``) returns it after each compile, evaluation and
  checkpoint save.

The training loop knows none of this: :func:`install` (called by ``jaxspo train`` and ``eval`` before the
first device use) sets the heap and registers these as the loop's hooks (:mod:`jaxspo.train.hooks`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from jaxspo.config_sections import HOST_HEAP_MODES
from jaxspo.train.hooks import add_hook

log = logging.getLogger("jaxspo")

# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
INT_MAX = 2**31 - 1
# a held heap: one arena, no mmap'd blocks, no automatic trim — (mallopt parameter, glibc environment variable, value)
HELD_SETTINGS = (
    (M_ARENA_MAX, "MALLOC_ARENA_MAX", 1),
    (M_MMAP_MAX, "MALLOC_MMAP_MAX_", 0),
    (M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", INT_MAX),
)
_held = False  # whether hold_freed_memory set the heap up


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library if it is glibc (has ``malloc_trim`` and ``mallopt``), else None (macOS, musl)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (≥ 2.33): every field a ``size_t``."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def heap_bytes_in_use() -> int | None:
    """Bytes the heap has handed out and not had back (glibc ``mallinfo2().uordblks``; with a held heap,
    every thread's); None without glibc ≥ 2.33."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2  # the struct is returned by value
    return int(libc.mallinfo2().uordblks)


def release_freed_memory() -> None:
    """Returns the heap's free pages to the OS (glibc); does nothing where ``malloc_trim`` is missing."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def hold_freed_memory(mode: str) -> bool:
    """With ``mode`` "hold": sets glibc to keep freed heap memory mapped and returns True ("system":
    glibc's defaults, False). Call it before JAX starts its CPU client (before the first device use):
    threads that already own an arena keep mapping large blocks afresh. Does nothing without glibc.
    """
    if mode not in HOST_HEAP_MODES:
        raise ValueError(f"host heap mode must be one of {', '.join(HOST_HEAP_MODES)}, got '{mode}'")
    libc = _libc()
    if mode == "system" or libc is None:
        return False
    global _held
    for param, _, value in HELD_SETTINGS:
        if libc.mallopt(param, value) != 1:
            log.warning("mallopt(%d, %d) failed: the host heap keeps glibc's defaults", param, value)
            return False
    _held = True
    return True


def held_heap_environment() -> dict[str, str]:
    """:data:`HELD_SETTINGS` as glibc environment variables: the same heap for another process from its start."""
    return {name: str(value) for _, name, value in HELD_SETTINGS}


class StepPacer:
    """Under a held heap (:func:`hold_freed_memory`), lets a step start only once the previous one has
    finished and freed its temporaries; does nothing otherwise.

    XLA:CPU allocates a run's temporaries when the run is dispatched. A loop that dispatches step
    i + 1 while step i runs therefore holds both steps' temporaries at once; with glibc's defaults the
    new ones are fresh ``mmap`` pages that only become resident as step i + 1 runs, but a held heap
    serves them from pages step i - 1 already touched, so both sets stay resident (the loop on the
    medium bench pairs: peak RSS 3,014 MiB, against 1,956 with glibc's defaults). Before each dispatch
    :meth:`before_step` waits for the previous step's outputs, then until the heap's bytes in use are
    back within ``slack`` bytes of their level before that step was dispatched (the temporaries are
    freed just after the outputs are ready), for at most ``timeout`` seconds. A batch larger than any
    before (another bucket width) first trims the heap: the program's larger temporaries then reuse the
    freed pages instead of a new region.
    """

    def __init__(self, slack: int = 16 << 20, timeout: float = 0.2):
        self.slack, self.timeout = slack, timeout
        self.reset()

    def reset(self) -> None:
        """Forgets the previous step (a new phase starts)."""
        self.idle_bytes: int | None = None  # bytes in use just before the previous dispatch
        self._largest = 0  # the most elements a batch had so far

    def before_step(self, previous: Any, batch: Mapping[str, Any]) -> None:
        """Call just before dispatching a step on ``batch`` (field → array); ``previous``: the previous
        step's outputs (any pytree of arrays)."""
        if not _held:
            return
        import jax  # here: reading a config (HOST_HEAP_MODES) imports no jax

        batch_elements = sum(int(v.size) for v in batch.values())
        jax.block_until_ready(previous)
        if self.idle_bytes is not None:
            deadline = time.perf_counter() + self.timeout
            while (heap_bytes_in_use() or 0) > self.idle_bytes + self.slack and time.perf_counter() < deadline:
                time.sleep(0.0002)
        if batch_elements > self._largest:
            if self._largest:
                release_freed_memory()
            self._largest = batch_elements
        self.idle_bytes = heap_bytes_in_use()


def install(mode: str) -> Callable[[], None]:
    """Sets the host heap for ``trainer.host_heap`` = ``mode`` (:func:`hold_freed_memory`) and registers the
    loop hooks that go with it: trim the heap after each compile, evaluation and checkpoint save, and under a
    held heap pace the steps (:class:`StepPacer`, a fresh pace per phase). Call it before the first device
    use. Returns a function that removes the hooks again."""
    held = hold_freed_memory(mode)
    removers = [add_hook(point, _trim) for point in ("after_compile", "after_eval", "after_save")]
    if held:
        pacer = StepPacer()
        removers += [add_hook("phase_start", pacer.reset), add_hook("before_step", pacer.before_step)]

    def uninstall() -> None:
        for remove in removers:
            remove()

    return uninstall


def _trim() -> None:
    release_freed_memory()  # looked up at each call, so a test may replace it
