"""SIGTERM/SIGINT handling: the first signal asks the loop to checkpoint and exit; a second exits at once."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

from jaxspo.errors import GRACE_EXPIRED_EXIT_CODE


class PreemptionGuard:
    """Context manager installing the handlers (main thread only) and the grace-time watchdog."""

    def __init__(self, grace_seconds: float):
        self.grace_seconds = grace_seconds
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._timer: threading.Timer | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # second signal: leave now
            os._exit(128 + signum)
        self.signum = signum
        print(
            f"\njaxspo: {signal.Signals(signum).name}: saving a checkpoint, then exiting (again to exit at once)",
            file=sys.stderr,
            flush=True,
        )
        self._timer = threading.Timer(self.grace_seconds, os._exit, args=(GRACE_EXPIRED_EXIT_CODE,))
        self._timer.daemon = True
        self._timer.start()

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self._timer is not None:
            self._timer.cancel()
