"""The platform the model is built and lowered for: the default backend, or the AOT target of ``jaxspo compile``."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax

_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar("jaxspo_target_platform", default=None)


def target_platform() -> str:
    """``"tpu"``, ``"gpu"`` or ``"cpu"``: the :func:`compiling_for` platform if one is active, else
    ``jax.default_backend()``."""
    return _TARGET.get() or jax.default_backend()


@contextlib.contextmanager
def compiling_for(platform: str) -> Iterator[None]:
    """While active, models are built and traced for ``platform`` (ahead-of-time compilation for another backend)."""
    token = _TARGET.set(platform)
    try:
        yield
    finally:
        _TARGET.reset(token)
