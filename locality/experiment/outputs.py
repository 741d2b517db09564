"""Outputs are checked before any work starts: can this file or directory be written?

Every command with an output (`-o`/`--out`/`--runs`) calls one of these
first, so a typo in a path costs nothing instead of a traceback after minutes
of runs. The check is a real write: missing directories are created and a
temporary file is written and removed, because permission bits alone do not
tell (root may write anywhere but /proc and /sys, and read-only mounts refuse
everyone). Directories the check created are removed again, so a refused
command leaves nothing behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from locality.errors import InvalidArgument

_HINT = "choose a path in a writable directory"


def check_output_file(path: str | os.PathLike, option: str) -> Path:
    """Refuse ``path`` as an output file unless it can be (re)written; returns it as a Path."""
    p = _nonempty(path, option)
    if p.is_dir():
        raise InvalidArgument(f"{option} {str(p)!r} is a directory", "give a file name, e.g. reports/report.html")
    if p.exists() and not os.access(p, os.W_OK):
        raise InvalidArgument(f"{option} {str(p)!r} is not writable", _HINT)
    _probe(p.parent, option, p)
    return p


def check_output_dir(path: str | os.PathLike, option: str) -> Path:
    """Refuse ``path`` as an output directory unless files can be created in it; returns it as a Path."""
    p = _nonempty(path, option)
    if p.exists() and not p.is_dir():
        raise InvalidArgument(f"{option} {str(p)!r} is a file, not a directory", "give a directory")
    _probe(p, option, p)
    return p


def _nonempty(path: str | os.PathLike, option: str) -> Path:
    if not os.fspath(path).strip():
        raise InvalidArgument(f"{option}: the path is empty", _HINT)
    return Path(path)


def _probe(directory: Path, option: str, given: Path) -> None:
    missing = []
    d = directory.absolute()
    while not os.path.lexists(d):
        missing.append(d)
        d = d.parent
    if not d.is_dir():
        raise InvalidArgument(f"{option} {str(given)!r}: {str(d)!r} is a file, not a directory", _HINT)
    created: list[Path] = []
    try:
        for m in reversed(missing):
            try:
                m.mkdir()
            except OSError as e:
                raise InvalidArgument(f"{option} {str(given)!r}: cannot create {str(m)!r} ({e.strerror})", _HINT) from None
            created.append(m)
        try:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".locality-write-check-")
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            raise InvalidArgument(f"{option} {str(given)!r}: cannot write in {str(directory)!r} ({e.strerror})", _HINT) from None
    finally:
        for c in reversed(created):
            try:
                c.rmdir()
            except OSError:
                pass
