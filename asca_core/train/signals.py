"""Stop requests by signal: a training run stops cleanly at the next step boundary."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any


class StopFlag:
    """SIGINT/SIGTERM request a clean stop at the next step boundary; a second one interrupts."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._first = 0.0
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only (e.g. fit() called from a worker thread)
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if self.requested:
            # A signal sent to a whole process group (and forwarded by a launcher) arrives twice
            # within moments: only a later, deliberate second one interrupts at once.
            if now - self._first > 2.0:
                raise KeyboardInterrupt
            return
        self.requested = True
        self._first = now
        self.signal_name = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
