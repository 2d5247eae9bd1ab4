"""The host heap under XLA:CPU: keep freed memory mapped between steps, return it after compiles.

Two glibc behaviours cost a CPU run time or memory:

- XLA:CPU allocates each run's temporary buffer afresh (733 MiB for `make bench`'s medium step).
  glibc serves an allocation that large from a worker thread's arena by ``mmap`` and unmaps it at
  ``free``, so every step faults the whole buffer back in: 440,000 page faults and 1.0 s of kernel
  time in a 2.1 s step. :func:`hold_freed_memory` (one arena, no ``mmap``, no automatic trim) keeps
  freed memory mapped for the next step: 0.04 s of kernel time. Programs of several batch widths
  need temporaries of several sizes, and each width's would keep its own region (medium, widths 96
  and 128: peak RSS 2,260 MiB instead of 1,650), so the loop trims the heap when the width changes
  (1,659 MiB); only those steps fault their temporaries in again. The catch, and why holding is
  opt-in (``trainer.host_heap: hold``): XLA:CPU allocates a run's temporaries when the run is
  enqueued, so when the next step is enqueued before the previous one has freed its own, the two
  take turns in two regions, both resident: peak RSS up to one more step's temporaries (medium
  padded step: 3,570 MiB instead of 2,330 in some runs, not in others).
- XLA's compiler frees hundreds of MiB of scratch per program, which glibc keeps in its RSS.
  :func:`release_freed_memory` (``malloc_trim(0)``) returns it; the loop calls it after each compile,
  evaluation and checkpoint save.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger("jaxspo")

# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
INT_MAX = 2**31 - 1
# a held heap: one arena, no mmap'd blocks, no automatic trim — (mallopt parameter, glibc environment variable, value)
HELD_SETTINGS = ((M_ARENA_MAX, "MALLOC_ARENA_MAX", 1), (M_MMAP_MAX, "MALLOC_MMAP_MAX_", 0), (M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", INT_MAX))
HOST_HEAP_MODES = ("system", "hold")
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


def release_freed_memory() -> None:
    """Returns the heap's free pages to the OS (glibc); does nothing where ``malloc_trim`` is missing."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def heap_is_held() -> bool:
    """Whether :func:`hold_freed_memory` set this process's heap to keep freed memory."""
    return _held


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
