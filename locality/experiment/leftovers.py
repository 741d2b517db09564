"""What killed locality processes leave behind, found and removed.

A SIGKILLed run cannot clean up: its memory cgroup (``locality-<name>-<pid>``
under a cgroup hierarchy), zram swap it turned on for itself (its state in
/run/locality), half-written state temporaries, and temporary files in the
temp directory stay. Each of them names its owner PID; a leftover is one
whose owner is dead (or whose PID now belongs to a younger process).
Nothing whose owner runs, and nothing locality did not make, is ever listed
or removed. `locality doctor` lists them, `doctor --fix`, `swap off` and
the start of every run remove them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from locality.tempfiles import owner_alive, owner_of

CGROUP_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/memory"))
_CGROUP_NAME = re.compile(r"^locality-.+-(\d+)$")


@dataclass(frozen=True)
class Leftover:
    kind: str  # cgroup | zram-swap | zram-state | temp
    path: str
    owner_pid: int | None
    detail: str


def find() -> list[Leftover]:
    """Every leftover of a dead locality process on this machine."""
    return _cgroups() + _zram() + _temp_files()


def _cgroups() -> list[Leftover]:
    out = []
    for root in CGROUP_ROOTS:
        try:
            names = sorted(os.listdir(root))
        except OSError:
            continue
        for name in names:
            m = _CGROUP_NAME.match(name)
            path = root / name
            if m and path.is_dir() and not owner_alive(int(m.group(1)), path):
                tasks = _tasks(path)
                out.append(Leftover("cgroup", str(path), int(m.group(1)),
                                    f"memory cgroup of a dead run, {len(tasks)} task(s) left in it"))
    return out


def _tasks(path: Path) -> list[str]:
    try:
        return (path / "cgroup.procs").read_text().split()
    except OSError:
        return []


def _zram() -> list[Leftover]:
    from locality.kernel import swap as zram

    out = []
    state_dir = zram.STATE_FILE.parent
    try:
        names = sorted(os.listdir(state_dir))
    except OSError:
        return out
    for name in names:
        path = state_dir / name
        if name == zram.STATE_FILE.name:
            state = _read_json(path)
            if state is None or state.get("keep", True):
                continue  # turned on with `locality swap on`: meant to outlive the command
            pid = state.get("owner_pid")
            if pid and not owner_alive(int(pid), path):
                out.append(Leftover("zram-swap", str(path), int(pid),
                                    f"zram swap turned on at {state.get('turned_on')} by a process that died"))
        elif name.startswith(".zram-state."):
            pid = owner_of(name)
            if pid is not None and not owner_alive(pid, path):
                out.append(Leftover("zram-state", str(path), pid, "half-written zram state of a dead process"))
    return out


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _temp_files() -> list[Leftover]:
    out = []
    tmp = Path(tempfile.gettempdir())
    try:
        names = sorted(n for n in os.listdir(tmp) if n.startswith(("locality-", ".locality-")))
    except OSError:
        return out
    for name in names:
        pid = owner_of(name)
        path = tmp / name
        if pid is not None and not owner_alive(pid, path):
            out.append(Leftover("temp", str(path), pid, "temporary " + ("directory" if path.is_dir() else "file")))
    return out


def remove(item: Leftover) -> None:
    """Remove one leftover; raises OSError (or LocalityError for zram) if it cannot."""
    path = Path(item.path)
    if item.kind == "cgroup":
        _remove_cgroup(path)
    elif item.kind == "zram-swap":
        from locality.kernel.swap import zram_swap_off

        zram_swap_off()  # the owner is dead: allowed without --force
    elif path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _remove_cgroup(path: Path) -> None:
    # Tasks still inside (a child outliving its runner) move to the parent group first.
    parent_procs = path.parent / "cgroup.procs"
    for pid in _tasks(path):
        try:
            parent_procs.write_text(pid)
        except ProcessLookupError:
            pass
    path.rmdir()


def clean() -> tuple[list[Leftover], list[tuple[Leftover, str]]]:
    """Remove every leftover found: (removed, [(not removed, why)])."""
    from locality.errors import LocalityError

    removed, failed = [], []
    for item in find():
        try:
            remove(item)
            removed.append(item)
        except (OSError, LocalityError) as e:
            failed.append((item, getattr(e, "strerror", None) or str(e)))
    return removed, failed


def as_dicts(items: list[Leftover]) -> list[dict]:
    return [asdict(i) for i in items]
