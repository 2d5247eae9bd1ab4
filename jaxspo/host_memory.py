"""Hands freed heap memory back to the operating system.

XLA's compiler frees hundreds of MiB of scratch per program, but glibc keeps freed memory of its
per-thread arenas mapped (``MALLOC_TRIM_THRESHOLD_`` trims only the main arena), so a process that
compiles several programs keeps their scratch in its RSS. ``malloc_trim(0)`` returns it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None on other C libraries (macOS, musl)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Returns the heap's free pages to the OS (glibc); does nothing where ``malloc_trim`` is missing."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
