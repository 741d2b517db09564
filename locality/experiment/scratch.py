"""A temporary directory that a Ctrl-C neither leaks nor leaves half removed.

``tempfile.TemporaryDirectory`` outside a run's lifecycle has two windows a
KeyboardInterrupt can land in: after mkdtemp made the directory but before
the ``with`` owns it, and inside the rmtree of its cleanup. Both leave a
``locality-<kind>-<pid>-*`` directory behind (seen once in the fault tests:
a SIGINT during a memory estimate's calibration run). Here creation and
removal hold the signal (signals.held) and deliver it right after.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from locality import tempfiles
from locality.experiment.signals import held

__all__ = ["scratch_directory"]


@contextlib.contextmanager
def scratch_directory(kind: str) -> Iterator[Path]:
    """A new directory named ``locality-<kind>-<pid>-*``, removed whole on leaving, also on Ctrl-C."""
    path: Path | None = None
    try:
        with held():  # a signal held here is raised on leaving, with path set: the finally removes it
            path = Path(tempfile.mkdtemp(prefix=tempfiles.prefix(kind)))
        yield path
    finally:
        if path is not None:
            with held():
                shutil.rmtree(path, ignore_errors=True)
