"""Ctrl-C and SIGTERM as a flag that long loops check between samples.

A sample is never cut in half, so an interrupted run can still write every
file whole and mark itself ``interrupted``.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class StopSignals:
    """Context manager: while active, SIGINT/SIGTERM set ``signum`` instead of raising.

    Off the main thread (where Python cannot install handlers) it does
    nothing, and a KeyboardInterrupt arrives as usual.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
