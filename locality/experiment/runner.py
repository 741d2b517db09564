"""One run: a child process steps the population, the parent samples it from outside.

``run(config, out)`` creates ``out/<run-id>/``, starts
``python -m locality.experiment.child``, measures the child's PSS before and
after it spawns the workers, then samples its tracked pages every
``sampling.interval`` seconds while the child steps, applies the reclaim
policy after each sample, and writes the run store (docs/internals.md).
Ctrl-C or SIGTERM stops the child, writes every file and marks the run
``interrupted``; a child that dies marks it ``failed`` with its stderr tail.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from locality.errors import InvalidArgument, LocalityError, Unsupported
from locality.experiment import store
from locality.experiment.signals import StopSignals
from locality.experiment.config import ExperimentConfig
from locality.experiment.metrics import _tkey, compute
from locality.experiment.policies import make_policy
from locality.experiment.sampler import Sampler

RUN_FILES = ("timeline.csv", "pages.npz", "latency.csv", "metrics.json")
SETUP_TIMEOUT_S = 3600.0  # spawning a million asyncio Tasks takes seconds, not hours
STOP_TIMEOUT_S = 10.0
STDERR_TAIL = 2000


class RunFailed(LocalityError):
    """The child process died, or the run could not be completed; the run dir says why."""


class _Stop(Exception):
    pass


def default_run_id(config: ExperimentConfig) -> str:
    return config.name or f"{config.layout}-{config.pattern.name}-{config.workers}"


def preflight(config: ExperimentConfig) -> dict[str, Any]:
    """Refuse a run that cannot work here, before anything is created; returns capabilities."""
    from locality.kernel.capabilities import capabilities

    caps = capabilities()
    if config.sampling.interval > 0 and config.sampling.writes:
        scan = caps.get("pagemap_scan", {})
        if not scan.get("available", False):
            raise Unsupported("write tracking (PAGEMAP_SCAN)", scan.get("reason", "unavailable"), scan.get("hint") or "set sampling.interval = 0 to run without sampling")
    make_policy(config).check(config, caps)
    return caps


def run(config: ExperimentConfig, out: str | os.PathLike, *, run_id: str | None = None, progress: bool = True) -> Path:
    """Run ``config`` in a child process, sample it, store ``out/<run-id>/``; returns the run dir."""
    caps = preflight(config)
    try:
        run_dir = store.new_run_dir(out, default_run_id(config), run_id)
    except OSError as e:
        raise InvalidArgument(f"cannot create a run directory under {os.fspath(out)!r}: {e.strerror}", "pass a writable --out") from None
    for name in RUN_FILES:  # a re-run of a resumed point starts clean
        try:
            (run_dir / name).unlink()
        except FileNotFoundError:
            pass
    manifest = store.start_manifest("run", run_dir.name, config.model_dump(mode="json"), caps)
    store.write_manifest(run_dir, manifest)
    return _Run(config, run_dir, manifest, progress).execute()


class _Run:
    def __init__(self, config: ExperimentConfig, run_dir: Path, manifest: dict[str, Any], progress: bool) -> None:
        self.config = config
        self.run_dir = run_dir
        self.manifest = manifest
        self.progress = progress
        self.interval = float(config.sampling.interval)
        self.policy = make_policy(config, run_dir.name)
        self.messages: queue.Queue = queue.Queue()
        self.stop = StopSignals()
        self.proc: subprocess.Popen | None = None
        self.sampler: Sampler | None = None
        self.rows: list[dict[str, Any]] = []
        self.t0: float | None = None
        self.step = 0
        self.window = {"activations": 0, "useful_bytes": 0}
        self.child_done: dict[str, Any] | None = None
        self.pss_empty: int | None = None
        self.pss_spawned: int | None = None
        self.spawn_s: float | None = None
        self.pageout_bytes = 0
        self.register_failures: list[Any] = []
        self.state_path: Path | None = None
        self.state_info: dict[str, Any] | None = None  # the child's state page set: count, source, seconds
        self.bar: Any = None
        self.last_flush = 0.0


    def execute(self) -> Path:
        latency_path = Path(tempfile.mkstemp(prefix="locality-latency-", suffix=".npy")[1])
        self.state_path = Path(tempfile.mkstemp(prefix="locality-state-pages-", suffix=".npy")[1])
        stderr_file = tempfile.TemporaryFile()
        try:
            with self.stop:
                try:
                    with self.policy:
                        status, error = self._body(stderr_file, latency_path)
                except LocalityError as e:  # the policy could not be set up or torn down
                    status, error = "failed", str(e)
                tail = _tail(stderr_file)
                if status == "failed" and tail:
                    error = f"{error}\nchild stderr (tail):\n{tail}"
                self._write(status, error, latency_path)
        finally:
            stderr_file.close()
            latency_path.unlink(missing_ok=True)
            self.state_path.unlink(missing_ok=True)
            if self.bar is not None:
                self.bar.close()
        if status == "interrupted":
            raise KeyboardInterrupt
        if status == "failed":
            first = (error or "unknown error").splitlines()[0]
            raise RunFailed(f"run {self.run_dir.name} failed: {first}", f"see {self.run_dir / 'manifest.json'}")
        return self.run_dir

    def _body(self, stderr_file: Any, latency_path: Path) -> tuple[str, str | None]:
        try:
            self._start(stderr_file, latency_path)
            self._setup()
            self._loop()
            return ("interrupted" if self.stop.signum is not None else "complete"), None
        except _Stop:
            return "interrupted", None
        except LocalityError as e:
            return "failed", str(e)
        except Exception as e:  # still write what we have; the error goes in the manifest
            return "failed", f"{type(e).__name__}: {e}"
        finally:
            self._finish_child()

    # -- child process -------------------------------------------------------
    def _start(self, stderr_file: Any, latency_path: Path) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "locality.experiment.child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            env=env,
            text=True,
            bufsize=1,
        )
        self.policy.attach(self.proc.pid)
        threading.Thread(target=self._read, daemon=True).start()
        self._send("config", config=self.config.model_dump(mode="json"), latency_path=str(latency_path))
        self.manifest["child_pid"] = self.proc.pid
        self.manifest["reclaim"] = self.policy.info()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.messages.put(json.loads(line))
            except json.JSONDecodeError:
                self.messages.put({"msg": "garbage", "line": line[:200]})
        self.messages.put(None)

    def _send(self, cmd: str, **fields: Any) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the child is gone; the reader reports it

    def _wait_for(self, kind: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            if self.stop.signum is not None:
                raise _Stop
            m = self._next(min(0.1, max(0.0, deadline - time.monotonic())))
            if m is not None and m.get("msg") == kind:
                return m
            if time.monotonic() > deadline:
                raise RunFailed(f"the child did not answer {kind!r} within {timeout:.0f} s")

    def _next(self, timeout: float) -> dict[str, Any] | None:
        """One message (handled on the way), or None after ``timeout``."""
        try:
            m = self.messages.get(timeout=timeout)
        except queue.Empty:
            return None
        if m is None:
            rc = self.proc.wait() if self.proc else None
            raise RunFailed(f"the child {_exit_text(rc)} before the run ended")
        self._handle(m)
        return m

    def _handle(self, m: dict[str, Any]) -> None:
        kind = m.get("msg")
        if kind == "steps":
            self.step = int(m["step"])
            self.window["activations"] += int(m["activations"])
            self.window["useful_bytes"] += int(m["useful_bytes"])
            if self.bar is not None:
                self.bar.update(int(m["steps"]))
        elif kind == "registered":
            now = time.monotonic()
            names = m.get("names") or []
            for i, (start, length) in enumerate(m["ranges"]):
                name = names[i] if i < len(names) else "anon"
                self._track(name, start, length, now)
            self.register_failures += m.get("failed", [])
            if self.sampler is not None:
                self.sampler.pending = []
                # Not asked again: a range the kernel refused once stays refused.
                self.sampler.refused += [(int(f[0]), int(f[1])) for f in m.get("failed", [])]
        elif kind == "done":
            self.child_done = m
        elif kind == "error":
            raise RunFailed(f"the child failed: {m['error']}")
        elif kind == "garbage":
            raise RunFailed(f"protocol error from the child: {m['line']!r}")

    def _track(self, name: str, start: int, length: int, now: float) -> None:
        if self.sampler is not None:
            self.sampler.add_region(name, int(start), int(length), now, writes=self.config.sampling.writes)

    def _setup(self) -> None:
        from locality.kernel import rollup

        assert self.proc is not None
        self._wait_for("empty", SETUP_TIMEOUT_S)
        self.pss_empty = rollup(self.proc.pid)["pss"]
        self._send("spawn")
        m = self._wait_for("spawned", SETUP_TIMEOUT_S)
        self.pss_spawned = rollup(self.proc.pid)["pss"]
        self.spawn_s = float(m["spawn_s"])
        self.register_failures += m.get("failed", [])
        self.manifest["regions"] = m["regions"]
        now = time.monotonic()
        if self.interval > 0:
            self.sampler = Sampler(self.proc.pid, self.config.sampling.cold_thresholds, keep_pages=self.config.sampling.pages)
            for r in m["regions"]:
                self._track(r["name"], r["start"], r["length"], now)
            self._state_pages()
        if self.progress:
            from locality.progress import progress

            self.bar = progress(self.config.steps, self.run_dir.name, "step", every=10.0)
        self.t0 = time.monotonic()
        self._sample(self.t0)
        self._send("go")

    def _state_pages(self) -> None:
        """Ask the child which pages hold worker state; the sampler counts their writes apart."""
        assert self.sampler is not None and self.state_path is not None
        self._send("state_pages", path=str(self.state_path))
        m = self._wait_for("state_pages", SETUP_TIMEOUT_S)
        try:
            pages = np.load(self.state_path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise RunFailed(f"cannot read the child's state page list {self.state_path}: {e}") from None
        if pages.size != int(m["count"]):
            raise RunFailed(f"the child's state page list has {pages.size} pages, it announced {m['count']}")
        self.sampler.set_state_pages(pages)
        self.state_info = {"count": int(pages.size), "source": m.get("source"), "seconds": float(m.get("seconds", 0.0)),
                           "tracked": self.sampler.state_tracked_pages}
        self.manifest["state_pages"] = self.state_info

    def _loop(self) -> None:
        assert self.t0 is not None
        next_sample = self.t0 + self.interval if self.interval > 0 else float("inf")
        while self.child_done is None:
            if self.stop.signum is not None:
                self._send("stop")
                self._drain_until_done(STOP_TIMEOUT_S)
                break
            now = time.monotonic()
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

    def _drain_until_done(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        try:
            while self.child_done is None and time.monotonic() < deadline:
                self._next(0.1)
        except RunFailed:
            pass

    def _ask_for_new_vmas(self) -> None:
        from locality.kernel import vmas

        if self.sampler is None or self.sampler.pending or self.proc is None or not self.config.sampling.heap:
            return
        try:
            new = self.sampler.untracked(vmas(self.proc.pid))
        except LocalityError:
            return
        if new and not self.config.sampling.writes:
            now = time.monotonic()  # residency only: nothing to register in the child
            for name, s, ln in new:
                self._track(name, s, ln, now)
        elif new:
            self.sampler.pending = [(s, ln) for _, s, ln in new]
            self._send("register", ranges=[[s, ln] for _, s, ln in new], names=[n for n, _, _ in new])

    def _sample(self, now: float) -> None:
        from locality.kernel import faults, rollup

        assert self.proc is not None and self.t0 is not None
        try:
            roll = rollup(self.proc.pid)
            minflt, majflt = faults(self.proc.pid)
        except LocalityError:
            return  # the child is gone; the reader thread reports how
        row: dict[str, Any] = {
            "t": now - self.t0,
            "step": self.step,
            "activations": self.window["activations"],
            "useful_bytes": self.window["useful_bytes"],
            "rss_bytes": roll.get("rss", 0),
            "pss_bytes": roll.get("pss", 0),
            "swap_bytes": roll.get("swap", 0),
            "major_faults": majflt,
            "minor_faults": minflt,
        }
        self.window = {"activations": 0, "useful_bytes": 0}
        if self.sampler is not None:
            s = self.sampler.sample(now)
            t_pol = time.perf_counter()
            advised = self.policy.after_sample(self.sampler, now)
            self.pageout_bytes += advised
            row.update(
                written_pages=s.written_pages,
                resident_pages=s.resident_pages,
                swapped_pages=s.swapped_pages,
                populated_pages=s.populated_pages,
                refaulted_pages=s.refaulted_pages,
                paged_out_pages=s.paged_out_pages,
                tracked_pages=s.tracked_pages,
                pageout_bytes=advised,
                # Kept apart: the policy's MADV_PAGEOUT of gigabytes would otherwise be
                # reported as the sampler's own cost.
                sample_ms=s.sample_s * 1e3,
                policy_ms=(time.perf_counter() - t_pol) * 1e3,
            )
            if s.written_state_pages is not None:
                row["written_state_pages"] = s.written_state_pages
            for t, c in s.cold_pages.items():
                row[f"cold_pages_{_tkey(t)}"] = c
        self.rows.append(row)
        if self.bar is not None:
            self.bar.set_postfix_str(f"RSS {row['rss_bytes'] / 2**20:,.0f} MiB", refresh=False)
        # Keep timeline.csv current, so even a killed parent leaves a readable timeline.
        if now - self.last_flush >= 5.0:
            store.atomic_write_csv(self.run_dir / "timeline.csv", pd.DataFrame(self.rows))
            self.last_flush = now

    def _finish_child(self) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            if self.child_done is not None:
                self.manifest["page_sizes_seen"] = _page_sizes(proc.pid)
        except LocalityError:
            pass
        if self.sampler is not None:
            self.sampler.close()
        self._send("exit")
        try:
            if proc.stdin:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    # -- store ---------------------------------------------------------------
    def _write(self, status: str, error: str | None, latency_path: Path) -> None:
        d = self.run_dir
        timeline = pd.DataFrame(self.rows)
        if len(timeline):
            store.atomic_write_csv(d / "timeline.csv", timeline)
        else:
            store.atomic_write_csv(d / "timeline.csv", pd.DataFrame(columns=["t", "rss_bytes", "pss_bytes", "swap_bytes"]))
        try:
            lat = np.load(latency_path) if latency_path.stat().st_size else np.empty(0, np.int64)
        except (OSError, ValueError):
            lat = np.empty(0, np.int64)
        store.atomic_write_csv(d / "latency.csv", pd.DataFrame({"latency_ns": lat.astype(np.int64)}))
        if self.sampler is not None and self.config.sampling.pages and self.sampler.times:
            store.atomic_write_npz(d / "pages.npz", **self.sampler.page_matrices())
        from locality.kernel import PAGE_SIZE

        child = self.child_done or {}
        if len(timeline):
            metrics = compute(
                timeline,
                child,
                config=self.config,
                page_size=int(PAGE_SIZE),
                pss_empty=self.pss_empty,
                pss_spawned=self.pss_spawned,
                latencies_ns=lat,
                cold_thresholds=list(self.config.sampling.cold_thresholds),
                interval=self.interval,
                state_pages=self.state_info["count"] if self.state_info else None,
                state_tracked_pages=self.state_info["tracked"] if self.state_info else None,
            )
            metrics["spawn_s"] = self.spawn_s
            metrics["pageout_bytes"] = self.pageout_bytes
            store.atomic_write_json(d / "metrics.json", metrics)
        self.manifest.update(
            status=status,
            error=error,
            finished=store.utcnow(),
            reclaim=self.policy.info(),
            stop_reason=child.get("reason") if status == "complete" else status,
            register_failures=self.register_failures[:20],
        )
        if self.sampler is not None:
            self.manifest["regions"] = [
                {"name": r.name, "start": r.start, "length": r.length, "alive": r.alive, "error": r.error} for r in self.sampler.regions
            ]
        self.manifest.setdefault("page_sizes_seen", [])
        store.write_manifest(d, self.manifest)


def _page_sizes(pid: int) -> list[int]:
    from locality.kernel import PAGE_SIZE, smaps

    sizes = {int(PAGE_SIZE)}
    for e in smaps(pid):
        if e.anon_huge:
            sizes.add(2 << 20)
        if e.kernel_page_size:
            sizes.add(int(e.kernel_page_size))
    return sorted(sizes)


def _exit_text(rc: int | None) -> str:
    if rc is not None and rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else f"signal {-rc}"
        why = " (out of memory? a cgroup limit kills with SIGKILL)" if rc == -signal.SIGKILL else ""
        return f"was killed by {name}{why}"
    return f"exited with status {rc}"


def _tail(f: Any) -> str:
    try:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - STDERR_TAIL))
        return f.read().decode(errors="replace").strip()
    except OSError:
        return ""
