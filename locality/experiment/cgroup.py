"""A memory-limited cgroup that lives exactly as long as one run.

cgroup v2 (``memory.max``) when its memory controller is usable, else the v1
memory hierarchy (``memory.limit_in_bytes``). On this project's machines v2
is mounted at /sys/fs/cgroup/unified without a memory controller, and v1
memory at /sys/fs/cgroup/memory.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from locality.errors import Unsupported

V2_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))
V1_ROOT = Path("/sys/fs/cgroup/memory")
HINT = "mount a cgroup v2 hierarchy with the memory controller, or cgroup v1 memory at /sys/fs/cgroup/memory (needs root)"


def _v2_root() -> Path | None:
    for root in V2_ROOTS:
        try:
            controllers = (root / "cgroup.controllers").read_text().split()
        except OSError:
            continue
        if "memory" in controllers:
            return root
    return None


def available() -> tuple[int, Path] | None:
    """(version, root) of a usable memory cgroup hierarchy, or None."""
    root = _v2_root()
    if root is not None:
        return 2, root
    if (V1_ROOT / "memory.limit_in_bytes").exists():
        return 1, V1_ROOT
    return None


class RunCgroup:
    """``with RunCgroup(name, limit) as cg: cg.add(pid)``; removed on exit, also on errors."""

    def __init__(self, name: str, limit_bytes: int) -> None:
        found = available()
        if found is None:
            raise Unsupported("cgroup memory limit", "no cgroup hierarchy with the memory controller is mounted", HINT)
        self.version, root = found
        self.limit_bytes = int(limit_bytes)
        self.path = root / f"locality-{name}-{os.getpid()}"
        self._created = False

    def __enter__(self) -> "RunCgroup":
        try:
            if self.version == 2:
                # The parent must hand the memory controller down to its children.
                ctl = self.path.parent / "cgroup.subtree_control"
                if "memory" not in ctl.read_text().split():
                    ctl.write_text("+memory")
            self.path.mkdir()
            self._created = True
            limit_file = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
            (self.path / limit_file).write_text(str(self.limit_bytes))
        except PermissionError:
            self.remove()
            raise Unsupported("cgroup memory limit", f"cannot create {self.path} (permission denied)", "run as root") from None
        except OSError as e:
            self.remove()
            raise Unsupported("cgroup memory limit", f"cannot set up {self.path}: {e.strerror}", HINT) from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def stat(self) -> dict[str, int]:
        """Counters of the cgroup (v1 memory.stat / v2 memory.stat), bytes."""
        out = {}
        try:
            for line in (self.path / "memory.stat").read_text().splitlines():
                k, _, v = line.partition(" ")
                out[k] = int(v)
        except (OSError, ValueError):
            pass
        return out

    def remove(self) -> None:
        """Move any remaining task to the parent group, then delete the cgroup."""
        if not self._created:
            return
        parent_procs = self.path.parent / "cgroup.procs"
        for _ in range(50):
            try:
                pids = (self.path / "cgroup.procs").read_text().split()
            except FileNotFoundError:
                self._created = False
                return
            for pid in pids:
                try:
                    parent_procs.write_text(pid)
                except OSError:
                    pass
            try:
                self.path.rmdir()
                self._created = False
                return
            except FileNotFoundError:
                self._created = False
                return
            except OSError:
                time.sleep(0.02)  # an exiting task can linger for a moment

    def info(self) -> dict[str, object]:
        return {"version": self.version, "path": str(self.path), "limit_bytes": self.limit_bytes}
