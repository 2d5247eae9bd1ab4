"""Errors that end a run with a one-line message (and, for preemption, a documented exit status)."""

from __future__ import annotations

import signal

PREEMPTED_EXIT_CODE = 75  # saved a checkpoint and stopped: run the same command again to resume
GRACE_EXPIRED_EXIT_CODE = 124  # the save did not finish within checkpoint.preemption_grace_seconds


class DataError(ValueError):
    """A data row is malformed; the message names the source, the row and the field."""


class DistributedError(ValueError):
    """A launch option or multi-process environment variable is missing or wrong; the message names it."""


class BaseChangedError(RuntimeError):
    """A LoRA run's base weights no longer match the sha256 its checkpoints or adapters were made with."""


class NonFiniteError(RuntimeError):
    """A step produced a non-finite loss or gradient and ``trainer.on_nonfinite`` is "stop"."""


class Preempted(Exception):
    """Raised by the loop after the checkpoint for ``step`` of ``phase`` has been committed."""

    def __init__(self, phase: str, step: int, signum: int):
        super().__init__(f"{signal.Signals(signum).name} received: saved {phase} step {step}; run the same command to resume")
        self.phase, self.step, self.signum = phase, step, signum
