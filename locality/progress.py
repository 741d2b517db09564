"""Progress of long work: a bar on a terminal, one line per finished unit elsewhere.

A tqdm bar redraws itself with carriage returns; redirected to a file it
leaves every redraw behind (a `compare` log held 55 KB of them). So the bar
is drawn only when the stream is a terminal. Otherwise each finished unit
(a run, a layout, a sweep point) prints one plain line, and fine-grained
units (steps) print at most one line every ``every`` seconds plus the last.

Every layer that shows progress uses ``progress(...)``; it has the subset of
tqdm's interface the project uses (update, set_postfix_str, set_postfix,
close, context manager).
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any


class _Lines:
    """One line per update (or per ``every`` seconds) on a stream that is not a terminal."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int, file: IO[str], every: float) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.file, self.every = file, every
        self.postfix = ""
        self.t0 = time.monotonic()
        self.last_print = float("-inf")
        self.printed_n = initial

    def _line(self) -> str:
        of = f"/{self.total}" if self.total is not None else ""
        extra = f" ({self.postfix})" if self.postfix else ""
        return f"{self.desc}: {self.n}{of} {self.unit}{'s' if self.unit and (self.total or self.n) != 1 else ''} done" \
               f"{extra} [{time.monotonic() - self.t0:.0f} s]"

    def _print(self) -> None:
        print(self._line(), file=self.file, flush=True)
        self.last_print = time.monotonic()
        self.printed_n = self.n

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.every <= 0 or time.monotonic() - self.last_print >= self.every:
            self._print()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_postfix(self, refresh: bool = True, **kw: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def close(self) -> None:
        if self.n != self.printed_n:  # the last unit of a throttled counter
            self._print()


class _Off:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def set_postfix(self, refresh: bool = True, **kw: Any) -> None:
        pass

    def close(self) -> None:
        pass


class Progress:
    """What ``progress()`` returns: forwards to a tqdm bar, a line printer, or nothing."""

    def __init__(self, impl: Any) -> None:
        self._impl = impl

    def update(self, n: int = 1) -> None:
        self._impl.update(n)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self._impl.set_postfix_str(s, refresh=refresh)

    def set_postfix(self, refresh: bool = True, **kw: Any) -> None:
        self._impl.set_postfix(refresh=refresh, **kw)

    def close(self) -> None:
        self._impl.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_terminal(file: IO[str]) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):
        return False


def progress(total: int | None, desc: str, unit: str = "it", *, initial: int = 0, enabled: bool = True,
             file: IO[str] | None = None, every: float = 0.0, leave: bool = True) -> Progress:
    """A progress display for ``total`` units of ``unit``.

    ``enabled=False`` (``--json``) shows nothing. ``every``: the least number
    of seconds between two plain lines (0: a line per update); use it for
    steps, keep 0 for runs and points.
    """
    stream = file if file is not None else sys.stderr
    if not enabled:
        return Progress(_Off())
    if is_terminal(stream):
        from tqdm import tqdm

        return Progress(tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream, dynamic_ncols=True, leave=leave))
    return Progress(_Lines(total, desc, unit, initial, stream, every))
