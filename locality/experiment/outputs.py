"""Outputs are checked before any work starts: can this file or directory be written?

Every command with an output (`-o`/`--out`/`--runs`) calls one of these
first, so a typo in a path costs nothing instead of a traceback after minutes
of runs. The check is a real write, because permission bits alone do not
tell (root may write anywhere but /proc and /sys, and read-only mounts refuse
everyone): a temporary file written and removed in the directory, or, when it
does not exist yet, a temporary directory made and removed in its nearest
existing ancestor. Nothing the command would create is created by the check,
so a refused command leaves nothing behind, and two commands checking one new
directory at once do not remove it under each other.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from locality import tempfiles
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
    prefix = "." + tempfiles.prefix("write-check")
    if missing:
        # Not created here: a directory made and removed again by this check can vanish under
        # another command that found it (two `sweep --resume` on one new --out). A directory
        # made and removed in the nearest existing one takes the same permission.
        top = missing[-1]
        try:
            name_max = os.pathconf(d, "PC_NAME_MAX")
        except (OSError, ValueError):
            name_max = 255
        too_long = [m for m in missing if len(os.fsencode(m.name)) > name_max]
        try:
            if too_long:
                raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
            os.rmdir(tempfile.mkdtemp(dir=d, prefix=prefix))
        except OSError as e:
            raise InvalidArgument(f"{option} {str(given)!r}: cannot create {str(top)!r} ({e.strerror})", _HINT) from None
        return
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise InvalidArgument(f"{option} {str(given)!r}: cannot write in {str(directory)!r} ({e.strerror})", _HINT) from None
