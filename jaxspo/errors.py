"""Errors that end a command with one line on stderr and a documented exit status.

Every user mistake raises a :class:`UserError` subclass whose message names where the problem is (the
file, row, key or folder), what is wrong and what to do. ``jaxspo.cli.main`` prints it as the single
line ``jaxspo: <kind>: <message>`` and exits with the class's ``exit_status``; any other exception is a
bug (a traceback, then a line asking to report it, status :data:`INTERNAL_ERROR_EXIT_CODE`).
"""

from __future__ import annotations

import signal

INPUT_ERROR_EXIT_CODE = 1  # a data file or row, model folder, checkpoint or run directory is wrong (or a step diverged)
CONFIG_ERROR_EXIT_CODE = 2  # a config key or value, or a command-line argument, is wrong
INTERNAL_ERROR_EXIT_CODE = 70  # a bug in jaxspo (sysexits' EX_SOFTWARE): traceback shown, please report it
PREEMPTED_EXIT_CODE = 75  # saved a checkpoint and stopped: run the same command again to resume
GRACE_EXPIRED_EXIT_CODE = 124  # the save did not finish within checkpoint.preemption_grace_seconds


class UserError(Exception):
    """A mistake in what the user gave jaxspo; the message says where, what and what to do."""

    kind = "error"  # the word(s) after ``jaxspo: `` on the error line
    exit_status = INPUT_ERROR_EXIT_CODE


class ConfigError(UserError, ValueError):
    """A config file, key or value is wrong; the message names it."""

    kind = "config error"
    exit_status = CONFIG_ERROR_EXIT_CODE


class UsageError(UserError):
    """A command-line argument is missing or wrong (argparse's complaint, as one line)."""

    kind = "usage error"
    exit_status = CONFIG_ERROR_EXIT_CODE


class DataError(UserError, ValueError):
    """A data file, split or row is malformed, or a dataset folder lacks files; the message names the source,
    the line or row and the field."""

    kind = "data error"


class CheckpointError(UserError, ValueError):
    """A model folder or checkpoint cannot be loaded (or a model cannot be exported); the message names the
    file and tensor."""

    kind = "checkpoint error"


class RunDirError(UserError):
    """A run directory is missing its files, or holds an earlier run that must not be overwritten."""

    kind = "run directory error"


class FileAccessError(UserError):
    """A path the user gave cannot be opened (missing, not permitted, a folder where a file belongs)."""

    kind = "file error"


class DistributedError(UserError, ValueError):
    """A launch option or multi-process environment variable is missing or wrong; the message names it."""

    kind = "launch error"


class BaseChangedError(UserError, RuntimeError):
    """A LoRA run's base weights no longer match the sha256 its checkpoints or adapters were made with."""

    kind = "checkpoint error"


class NonFiniteError(UserError, RuntimeError):
    """A step produced a non-finite loss or gradient and ``trainer.on_nonfinite`` is "stop"."""

    kind = "training stopped"


class Preempted(Exception):
    """Raised by the loop after the checkpoint for ``step`` of ``phase`` has been committed."""

    def __init__(self, phase: str, step: int, signum: int):
        super().__init__(
            f"{signal.Signals(signum).name} received: saved {phase} step {step}; run the same command to resume"
        )
        self.phase, self.step, self.signum = phase, step, signum
