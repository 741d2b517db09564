"""System DAMON monitors (kdamonds) read from sysfs, read only.

A system-wide DAMON scheme with action ``pageout`` can page out memory of
any process, including a measured one, so a run's residency may include
page-outs locality did not make. This module only reads
``/sys/kernel/mm/damon/admin``; it never writes a command there (not even
``update_schemes_stats``), so it can neither stop a kdamond nor change what
it does. Scheme statistics are therefore as of the owner's last update.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DAMON_ADMIN = Path("/sys/kernel/mm/damon/admin")
RECLAIMING_ACTIONS = frozenset({"pageout", "lru_deprio", "cold"})


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _numbered(path: Path) -> list[Path]:
    """The numbered children 0, 1, ... of a DAMON sysfs directory, in order."""
    try:
        return sorted((p for p in path.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    except OSError:
        return []


def _scheme(path: Path) -> dict[str, Any]:
    pattern = {f"{what}_{end}": _int(path / "access_pattern" / what / end)
               for what in ("sz", "nr_accesses", "age") for end in ("min", "max")}
    stats = {name: _int(path / "stats" / name) for name in ("nr_tried", "sz_tried", "nr_applied", "sz_applied", "qt_exceeds")}
    return {
        "action": _read(path / "action"),
        "access_pattern": pattern,
        "quota_bytes": _int(path / "quotas" / "bytes"),
        "quota_ms": _int(path / "quotas" / "ms"),
        "stats": stats,
    }


def kdamonds(root: str | Path = DAMON_ADMIN) -> list[dict[str, Any]]:
    """Every kdamond under ``root``: index, state, pid, and per context its operations and schemes.

    An empty list when DAMON's sysfs interface is absent (no CONFIG_DAMON_SYSFS)
    or unreadable. Includes kdamonds that are off (``state`` says so).
    """
    base = Path(root) / "kdamonds"
    out = []
    for kd in _numbered(base):
        contexts = []
        for ctx in _numbered(kd / "contexts"):
            contexts.append({
                "operations": _read(ctx / "operations"),
                "targets": len(_numbered(ctx / "targets")),
                "schemes": [_scheme(s) for s in _numbered(ctx / "schemes")],
            })
        pid = _int(kd / "pid")
        out.append({"index": int(kd.name), "state": _read(kd / "state"), "pid": pid if pid and pid > 0 else None,
                    "contexts": contexts})
    return out


def active_kdamonds(root: str | Path = DAMON_ADMIN) -> list[dict[str, Any]]:
    """The kdamonds that are on, or whose state cannot be read (the files are root-only): they may be on."""
    return [k for k in kdamonds(root) if k.get("state") in ("on", None)]


def reclaiming(kds: list[dict[str, Any]]) -> list[str]:
    """One line per scheme of a running kdamond that can move memory out (pageout, cold, lru_deprio)."""
    lines = []
    for k in kds:
        if k.get("state") != "on":
            continue
        for c in k.get("contexts", []):
            for s in c.get("schemes", []):
                if s.get("action") in RECLAIMING_ACTIONS:
                    lines.append(f"kdamond {k['index']} (pid {k.get('pid')}): {c.get('operations')} scheme action {s['action']}")
    return lines


def describe(k: dict[str, Any]) -> str:
    """One line: 'kdamond 0 on (pid 77): paddr, schemes: pageout'."""
    ctxs = "; ".join(
        f"{c.get('operations')}, schemes: {', '.join(str(s.get('action')) for s in c.get('schemes', [])) or 'none'}"
        for c in k.get("contexts", [])
    ) or "no contexts"
    pid = f" (pid {k['pid']})" if k.get("pid") else ""
    if k.get("state") is None:
        return f"kdamond {k['index']}: state unknown (its sysfs files are readable by root only)"
    return f"kdamond {k['index']} {k.get('state')}{pid}: {ctxs}"
