"""Reclaim policies: what the harness does to the child's memory during a run.

- ``none``: nothing; the run measures what could be reclaimed.
- ``pageout-idle T``: after each sample, page out (process_madvise
  MADV_PAGEOUT from the parent) every present tracked page not written for
  T seconds (``scope = "state"``: only the pages holding worker state). The user chose it explicitly, so writing to the child is allowed.
  Anonymous memory needs swap; without it the run is refused up front.
- ``cgroup LIMIT``: the child runs in its own memory cgroup with that limit,
  created for the run and removed afterwards (also on error and Ctrl-C).

Each policy is a context manager around the run: ``check`` runs before
anything is created, ``attach(pid)`` right after the child starts,
``after_sample`` after every sample.
"""

from __future__ import annotations

from typing import Any, Mapping

from locality.errors import Unsupported

SWAP_HINT = "turn swap on with `locality swap on`, or use arena = \"file\""


class NoReclaim:
    name = "none"

    def check(self, config: Any, caps: Mapping[str, Mapping[str, Any]]) -> None:
        pass

    def __enter__(self) -> "NoReclaim":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def attach(self, pid: int) -> None:
        pass

    def after_sample(self, sampler: Any, now: float) -> int:
        return 0

    def info(self) -> dict[str, Any]:
        return {"policy": self.name}


class PageoutIdle(NoReclaim):
    name = "pageout-idle"

    def __init__(self, idle_seconds: float, scope: str = "all") -> None:
        self.idle_seconds = float(idle_seconds)
        self.scope = scope
        self.pid: int | None = None
        self.advised_bytes = 0
        self.calls = 0

    def check(self, config: Any, caps: Mapping[str, Mapping[str, Any]]) -> None:
        pm = caps.get("process_madvise", {})
        if not pm.get("available", False):
            raise Unsupported("reclaim policy pageout-idle", pm.get("reason", "process_madvise is unavailable"), pm.get("hint"))
        if config.arena == "anon" or config.layout == "objects":
            swap = caps.get("swap", {})
            if not swap.get("available", False):
                reason = swap.get("reason") or "no swap device is active"
                raise Unsupported(
                    "reclaim policy pageout-idle",
                    f"{reason}; anonymous memory cannot be paged out without swap",
                    SWAP_HINT,
                )

    def attach(self, pid: int) -> None:
        self.pid = pid

    def after_sample(self, sampler: Any, now: float) -> int:
        from locality.kernel import process_pageout

        ranges = sampler.idle_ranges(now, self.idle_seconds, state_only=self.scope == "state")
        if not ranges or self.pid is None:
            return 0
        advised = process_pageout(self.pid, ranges)
        sampler.after_pageout()
        self.advised_bytes += advised
        self.calls += 1
        return advised

    def info(self) -> dict[str, Any]:
        return {"policy": self.name, "idle_seconds": self.idle_seconds, "scope": self.scope, "advised_bytes": self.advised_bytes, "pageout_calls": self.calls}


class CgroupLimit(NoReclaim):
    name = "cgroup"

    def __init__(self, limit_bytes: int, run_name: str) -> None:
        self.limit_bytes = int(limit_bytes)
        self.run_name = run_name
        self.cgroup: Any = None

    def check(self, config: Any, caps: Mapping[str, Mapping[str, Any]]) -> None:
        from locality.experiment import cgroup

        if cgroup.available() is None:
            raise Unsupported("reclaim policy cgroup", "no cgroup hierarchy with the memory controller is mounted", cgroup.HINT)

    def __enter__(self) -> "CgroupLimit":
        from locality.experiment.cgroup import RunCgroup

        self.cgroup = RunCgroup(self.run_name, self.limit_bytes).__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cgroup is not None:
            self.cgroup.remove()

    def attach(self, pid: int) -> None:
        self.cgroup.add(pid)

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"policy": self.name, "limit_bytes": self.limit_bytes}
        if self.cgroup is not None:
            out["cgroup"] = self.cgroup.info()
        return out


def make_policy(config: Any, run_name: str = "run") -> NoReclaim:
    r = config.reclaim
    if r.policy == "pageout-idle":
        return PageoutIdle(r.idle_seconds, r.scope)
    if r.policy == "cgroup":
        return CgroupLimit(r.limit, run_name)
    return NoReclaim()
