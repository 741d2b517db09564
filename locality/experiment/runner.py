"""One run: a child process steps the population, the parent samples it from outside.

``run(config, out)`` creates ``out/<run-id>/`` (lifecycle.RunLifecycle),
starts ``python -m locality.experiment.child`` (channel.Channel: its own
session, so only the runner hears Ctrl-C), measures the child's PSS before
and after it spawns the workers, then samples its tracked pages every
``sampling.interval`` seconds while the child steps, applies the reclaim
policy after each sample, and writes the run store (docs/internals.md,
record.RunRecord). A SIGINT or SIGTERM at any moment stops the child and
keeps what was measured, marked ``interrupted``; a child that dies marks the
run ``failed`` with its stderr tail.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from locality import tempfiles
from locality.errors import LocalityError, Unsupported
from locality.experiment import leftovers
from locality.experiment.channel import Channel, ChildDied
from locality.experiment.config import ExperimentConfig
from locality.experiment.lifecycle import RunLifecycle
from locality.experiment.policies import make_policy
from locality.experiment.record import RunRecord
from locality.experiment.sampler import Sampler

SETUP_TIMEOUT_S = 3600.0  # spawning a million asyncio Tasks takes seconds, not hours
STOP_TIMEOUT_S = 10.0


class RunFailed(LocalityError):
    """The child process died, or the run could not be completed; the run dir says why."""


# The measured process gets the same environment wherever it runs. A Dask
# worker exports MALLOC_TRIM_THRESHOLD_=65536 and *_NUM_THREADS=1 to its
# children: the trim threshold changes how the heap grows and the BLAS thread
# pool adds stacks, so a run on Dask wrote 6.9% fewer pages per window and had
# 1.7% fewer bytes per worker than the same run started here. Allocator
# tunables are dropped; thread pools are pinned to one thread (the population
# steps in one thread; a pool's size would follow the machine's core count).
PINNED_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "NUMEXPR_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
DROPPED_ENV_PREFIXES = ("MALLOC_", "GLIBC_TUNABLES", "PYTHONMALLOC")


def child_env(environ: Any) -> dict[str, str]:
    """The child's environment: ``environ`` without allocator tunables, with PINNED_ENV."""
    env = {k: v for k, v in environ.items() if not k.startswith(DROPPED_ENV_PREFIXES)}
    env.update(PINNED_ENV)
    return env


def default_run_id(config: ExperimentConfig) -> str:
    return config.name or f"{config.layout}-{config.pattern.name}-{config.workers}"


def preflight(config: ExperimentConfig) -> dict[str, Any]:
    """Refuse a run that cannot work here, before anything is created; returns capabilities."""
    from locality.kernel.capabilities import capabilities

    caps = capabilities()
    if config.write_tracking:
        scan = caps.get("pagemap_scan", {})
        if not scan.get("available", False):
            raise Unsupported("write tracking (PAGEMAP_SCAN)", scan.get("reason", "unavailable"), scan.get("hint") or "set sampling.interval = 0 to run without sampling")
    make_policy(config).check(config, caps)
    return caps


def run(config: ExperimentConfig, out: str | os.PathLike, *, run_id: str | None = None, progress: bool = True,
        replace: bool = False, resume: bool = False) -> Path:
    """Run ``config`` in a child process, sample it, store ``out/<run-id>/``; returns the run dir.

    An existing ``out/<run_id>`` is refused unless ``replace`` (``resume``:
    a complete one is kept, store.RunDone). KeyboardInterrupt after an
    interrupted run, RunFailed after a failed one; the run dir says why.
    """
    caps = preflight(config)
    life = RunLifecycle("run", out, run_id, config.model_dump(mode="json"), capabilities=caps,
                        prefix=default_run_id(config), replace=replace, resume=resume)
    try:
        with life:
            _Run(config, life, progress).execute()
    except Exception as e:
        if life.status != "failed":  # refused before the run started (its directory exists, ...)
            raise
        first = (life.manifest.get("error") or str(e) or "unknown error").splitlines()[0]
        raise RunFailed(f"run {life.dir.name} failed: {first}", f"see {life.dir / 'manifest.json'}") from None
    assert life.dir is not None
    return life.dir


class _Run:
    """The conversation with the child: start, spawn, sample until done, stop."""

    def __init__(self, config: ExperimentConfig, life: RunLifecycle, progress: bool) -> None:
        assert life.dir is not None
        self.config = config
        self.life = life
        self.manifest = life.manifest
        self.progress = progress
        self.interval = float(config.sampling.interval)
        self.policy = make_policy(config, life.dir.name)
        self.record = RunRecord(config, life.dir)
        self.chan: Channel | None = None
        self.sampler: Sampler | None = None
        self.t0: float | None = None
        self.child_done: dict[str, Any] | None = None
        self.pss_empty: int | None = None
        self.pss_spawned: int | None = None
        # Whole smaps_rollup before and after spawn: bytes_per_worker is the growth of what the child owns.
        self.rollup_empty: dict[str, int] | None = None
        self.rollup_spawned: dict[str, int] | None = None
        # Aligned windows: sample when the child reports window_steps more steps ("window").
        self.window_steps = config.window_steps
        self.window_due = False
        self.spawn_s: float | None = None
        self.register_failures: list[Any] = []
        self.state_info: dict[str, Any] | None = None  # the child's state page set: count, source, seconds
        self.portions: Any = None  # experiment.portions.PortionCounter once the child walked its portions
        self.bar: Any = None
        life.on_end = self._finish_manifest
        # A system DAMON scheme may page the child out behind our back: recorded, reports warn.
        from locality.kernel import active_kdamonds

        self.damon = active_kdamonds()

    def execute(self) -> None:
        leftovers.clean()  # what killed runs left behind (their owners are dead)
        tmp = Path(tempfile.mkdtemp(prefix=tempfiles.prefix("run")))
        latency_path, state_path = tmp / "latency.npy", tmp / "state-pages.npy"
        try:
            with self.policy:
                try:
                    self._start(latency_path)
                    self._setup(state_path)
                    self._loop()
                finally:
                    self._stop_child()
        finally:
            self.record.write(child=self.child_done or {}, latency_path=latency_path, sampler=self.sampler,
                              pss_empty=self.pss_empty, pss_spawned=self.pss_spawned, spawn_s=self.spawn_s,
                              state_info=self.state_info, portions=self.portions, rollup_empty=self.rollup_empty,
                              rollup_spawned=self.rollup_spawned)
            for p in (latency_path, state_path):
                p.unlink(missing_ok=True)
            tmp.rmdir()
            if self.bar is not None:
                self.bar.close()

    def _finish_manifest(self, life: RunLifecycle, status: str) -> None:
        child = self.child_done or {}
        if status == "failed" and self.chan is not None:
            tail = self.chan.stderr_tail()
            if tail:
                life.error_detail = f"child stderr (tail):\n{tail}"
        self.manifest.update(
            reclaim=self.policy.info(),
            stop_reason=child.get("reason") if status == "complete" else status,
            register_failures=self.register_failures[:20],
        )
        if self.sampler is not None:
            self.manifest["regions"] = [
                {"name": r.name, "start": r.start, "length": r.length, "alive": r.alive, "error": r.error} for r in self.sampler.regions
            ]
        self.manifest.setdefault("page_sizes_seen", [])
        self.manifest.setdefault("system_damon", self.damon)

    # -- child process -------------------------------------------------------
    def _start(self, latency_path: Path) -> None:
        self.life.check()
        env = child_env(os.environ)
        self.manifest["child_env"] = {k: env[k] for k in sorted(PINNED_ENV)}
        # No address randomization in the measured process: where mmap puts the
        # heap's arenas decided how objects share pages, which moved the
        # whole-process WSS by 2.75% between repeats (36,352- vs 36,864-page VMAs).
        self.chan = Channel([sys.executable, "-m", "locality.experiment.child"], name="child", env=env, fixed_layout=True)
        self.policy.attach(self.chan.pid)
        self.chan.send("config", config=self.config.model_dump(mode="json"), latency_path=str(latency_path),
                       window_steps=self.window_steps)
        self.manifest["child_pid"] = self.chan.pid
        self.manifest["reclaim"] = self.policy.info()
        self.life.save()

    def _wait_for(self, kind: str, timeout: float) -> dict[str, Any]:
        assert self.chan is not None
        return self.chan.expect(kind, timeout, handle=self._handle, stop=lambda: self.life.stopping)

    def _next(self, timeout: float) -> None:
        assert self.chan is not None
        m = self.chan.recv(timeout)
        if m is not None:
            self._handle(m)

    def _handle(self, m: dict[str, Any]) -> None:
        kind = m.get("msg")
        if kind == "steps":
            self.record.steps(m)
            if self.bar is not None:
                self.bar.update(int(m["steps"]))
        elif kind == "registered":
            now = time.monotonic()
            names = m.get("names") or []
            for i, (start, length) in enumerate(m["ranges"]):
                self._track(names[i] if i < len(names) else "anon", start, length, now)
            self.register_failures += m.get("failed", [])
            if self.sampler is not None:
                self.sampler.pending = []
                # Not asked again: a range the kernel refused once stays refused.
                self.sampler.refused += [(int(f[0]), int(f[1])) for f in m.get("failed", [])]
        elif kind == "window":
            self.window_due = True
        elif kind == "done":
            self.child_done = m
        elif kind == "error":
            raise RunFailed(f"the child failed: {m['error']}")

    def _track(self, name: str, start: int, length: int, now: float) -> None:
        if self.sampler is not None:
            self.sampler.add_region(name, int(start), int(length), now, writes=self.config.write_tracking)

    def _setup(self, state_path: Path) -> None:
        from locality.kernel import rollup

        assert self.chan is not None
        self._wait_for("empty", SETUP_TIMEOUT_S)
        self.rollup_empty = rollup(self.chan.pid)
        self.pss_empty = self.rollup_empty["pss"]
        self.chan.send("spawn")
        m = self._wait_for("spawned", SETUP_TIMEOUT_S)
        self.rollup_spawned = rollup(self.chan.pid)
        self.pss_spawned = self.rollup_spawned["pss"]
        self.spawn_s = float(m["spawn_s"])
        self.register_failures += m.get("failed", [])
        self.manifest["regions"] = m["regions"]
        book = m.get("bookkeeping")
        if book:
            self.manifest["bookkeeping"] = {"start": int(book[0]), "length": int(book[1])}
        now = time.monotonic()
        if self.config.sampled:
            self.sampler = Sampler(self.chan.pid, self.config.sampling.cold_thresholds, keep_pages=self.config.sampling.pages)
            if book:
                self.sampler.ignored.append((int(book[0]), int(book[1])))
            for r in m["regions"]:
                self._track(r["name"], r["start"], r["length"], now)
            self._state_pages(state_path)
            from locality.experiment.portions import request

            self.portions, self.manifest["portions"] = request(self.chan.send, self._wait_for, self.chan.pid, self.sampler, SETUP_TIMEOUT_S)
        if self.progress:
            from locality.progress import progress

            self.bar = progress(self.config.steps, self.life.dir.name, "step", every=10.0)
        self.t0 = time.monotonic()
        self._sample(self.t0)
        self.chan.send("go")

    def _state_pages(self, state_path: Path) -> None:
        """Ask the child which pages hold worker state; the sampler counts their writes apart."""
        assert self.sampler is not None and self.chan is not None
        self.chan.send("state_pages", path=str(state_path))
        m = self._wait_for("state_pages", SETUP_TIMEOUT_S)
        try:
            pages = np.load(state_path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise RunFailed(f"cannot read the child's state page list {state_path}: {e}") from None
        if pages.size != int(m["count"]):
            raise RunFailed(f"the child's state page list has {pages.size} pages, it announced {m['count']}")
        self.sampler.set_state_pages(pages)
        self.state_info = {"count": int(pages.size), "source": m.get("source"), "seconds": float(m.get("seconds", 0.0)),
                           "tracked": self.sampler.state_tracked_pages}
        self.manifest["state_pages"] = self.state_info

    def _loop(self) -> None:
        assert self.t0 is not None and self.chan is not None
        next_sample = self.t0 + self.interval if self.config.sampled else float("inf")
        while self.child_done is None:
            if self.life.stopping:
                self.life.cut()
                self.chan.send("stop")
                self._drain_until_done(STOP_TIMEOUT_S)
                break
            now = time.monotonic()
            if self.window_steps:
                if self.window_due:
                    self.window_due = False
                    self._sample(now)
                    self._ask_for_new_vmas()
                    self.chan.send("sampled")
                else:
                    self._next(0.1)
                continue
            if now >= next_sample:
                self._sample(now)
                self._ask_for_new_vmas()
                next_sample += self.interval
                if next_sample <= now:  # a slow sample: skip the missed ticks, keep the cadence
                    next_sample = now + self.interval
                continue
            self._next(min(0.1, next_sample - now))
        if self.child_done is not None:
            self._sample(time.monotonic())
            if self.portions is not None:
                self.portions.finish(self.chan.pid)

    def _drain_until_done(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        try:
            while self.child_done is None and time.monotonic() < deadline:
                self._next(0.1)
        except (ChildDied, RunFailed):
            pass

    def _ask_for_new_vmas(self) -> None:
        from locality.kernel import vmas

        if self.sampler is None or self.sampler.pending or self.chan is None or not self.config.heap_tracking:
            return
        try:
            new = self.sampler.untracked(vmas(self.chan.pid))
        except LocalityError:
            return
        if new and not self.config.write_tracking:
            now = time.monotonic()  # residency only: nothing to register in the child
            for name, s, ln in new:
                self._track(name, s, ln, now)
        elif new:
            self.sampler.pending = [(s, ln) for _, s, ln in new]
            self.chan.send("register", ranges=[[s, ln] for _, s, ln in new], names=[n for n, _, _ in new])

    def _sample(self, now: float) -> None:
        assert self.chan is not None and self.t0 is not None
        row = self.record.sample(self.chan.pid, now - self.t0, now, self.sampler, self.policy)
        if row is not None and self.portions is not None:
            self.portions.count(now - self.t0)
        if row is not None and self.bar is not None:
            self.bar.set_postfix_str(f"RSS {row['rss_bytes'] / 2**20:,.0f} MiB", refresh=False)

    def _stop_child(self) -> None:
        chan = self.chan
        if chan is None:
            return
        try:
            if self.child_done is not None:
                self.manifest["page_sizes_seen"] = _page_sizes(chan.pid)
        except LocalityError:
            pass
        if self.sampler is not None:
            self.sampler.close()
        chan.send("exit")
        chan.close(STOP_TIMEOUT_S)


def _page_sizes(pid: int) -> list[int]:
    from locality.kernel import PAGE_SIZE, smaps

    sizes = {int(PAGE_SIZE)}
    for e in smaps(pid):
        if e.anon_huge:
            sizes.add(2 << 20)
        if e.kernel_page_size:
            sizes.add(int(e.kernel_page_size))
    return sorted(sizes)
