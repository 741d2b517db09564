"""Temporary files and directories that name the process owning them.

Every temporary name locality creates starts with ``locality-<kind>-<pid>-``
(or ``.<kind>.<pid>.`` for the hidden temporaries beside a file being
replaced), so a file left behind by a killed process can be told from one in
use: `locality doctor` lists those whose owner is dead, and `doctor --fix`,
`swap off` and the next run remove them. Used by every layer, like errors.py.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import psutil

__all__ = ["prefix", "owner_of", "owner_alive"]

_OWNED = re.compile(r"^\.?locality-[a-z0-9-]+?-(\d+)-|^\.[a-z0-9-]+\.(\d+)\.")


def prefix(kind: str) -> str:
    """``locality-<kind>-<pid>-``: the start of every temporary name of this process."""
    return f"locality-{kind}-{os.getpid()}-"


def owner_of(name: str) -> int | None:
    """The PID recorded in a temporary name made with ``prefix`` (or ``.<kind>.<pid>.``), else None."""
    m = _OWNED.match(name)
    if not m:
        return None
    return int(m.group(1) or m.group(2))


def owner_alive(pid: int, path: Path | None = None) -> bool:
    """Whether process ``pid`` runs and could have made ``path``.

    A PID reused by a process started after the file was last changed is not
    its owner (files are created by a running process, never before it).
    """
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = proc.create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True
    if path is None:
        return True
    try:
        changed = path.lstat().st_ctime
    except FileNotFoundError:
        return False
    return started <= changed + 1.0  # create_time is rounded to clock ticks
