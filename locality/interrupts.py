"""Ctrl-C and SIGTERM for the command line: KeyboardInterrupt, but never inside an import.

A KeyboardInterrupt raised while an extension module initialises (numpy,
pandas) can leave it half made and come out as an ImportError with a
traceback (seen in 1 of 40 SIGTERMs sent during `import pandas`). So a signal
that lands inside an import is held and delivered again once the import is
over (a SIGALRM timer retries every few milliseconds), to the handler current
then. Long work (runs, sweeps,
compare) holds signals as a flag instead (experiment/signals.py) and puts
these handlers back when it ends. Used by the entry points only.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

RETRY_S = 0.005
_pending: int | None = None


def _importing(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _importing(frame):
        _pending = signum
        signal.setitimer(signal.ITIMER_REAL, RETRY_S)
        return
    _pending = None
    raise KeyboardInterrupt


def _retry(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _pending is not None:
        # Delivered again, to whichever handler is current: by now a run may hold signals
        # as a flag (experiment/signals.py), and a KeyboardInterrupt would cut it anywhere.
        held, _pending = _pending, None
        signal.raise_signal(held)


def install() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the main thread, outside imports."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGALRM, _retry)
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _on_signal)
