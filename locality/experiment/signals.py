"""Ctrl-C and SIGTERM as a flag that long loops check between samples and between units.

A sample is never cut in half, so an interrupted run can still write every
file whole and mark itself ``interrupted``. The flag is process-wide and the
handlers nest: a sweep or compare holds them across its units, each run holds
them again inside, and a signal that lands between two units stays pending
for the loop to see instead of being dropped.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_lock = threading.Lock()
_depth = 0
_signum: int | None = None
_previous: dict[int, object] = {}


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _signum
    if _signum is None:
        _signum = signum


class StopSignals:
    """Context manager: while active, SIGINT/SIGTERM set ``signum`` instead of raising.

    The outermost one installs the handlers and, on leaving, restores them and
    forgets the signal (the caller has seen it by then). Off the main thread
    (where Python cannot install handlers) it does nothing, and a
    KeyboardInterrupt arrives as usual.
    """

    def __init__(self) -> None:
        self._active = False

    @property
    def signum(self) -> int | None:
        """The first signal received while active, or None."""
        return _signum if self._active else None

    def __enter__(self) -> "StopSignals":
        global _depth, _signum
        if threading.current_thread() is threading.main_thread():
            with _lock:
                if _depth == 0:
                    _signum = None
                    for s in (signal.SIGINT, signal.SIGTERM):
                        _previous[s] = signal.signal(s, _on_signal)
                _depth += 1
            self._active = True
        return self

    def __exit__(self, *exc: object) -> None:
        global _depth, _signum
        if not self._active:
            return
        with _lock:
            _depth -= 1
            if _depth == 0:
                for s, handler in _previous.items():
                    signal.signal(s, handler)
                _previous.clear()
                _signum = None
        self._active = False


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM over a short section that must not be cut in half.

    A signal that arrives inside is delivered when the section ends: as
    KeyboardInterrupt (what the command line's handler would have raised),
    or, under an enclosing StopSignals, left pending for its loop to see.
    """
    outer = _depth > 0
    with StopSignals() as s:
        yield
        got = s.signum
    if got is not None and not outer:
        raise KeyboardInterrupt
