"""The main job: every layout on the same seeded workload, one report comparing them.

Runs are made one after the other by the experiment runner (a child process
per layout, sampled from outside), stored under ``runs/compare/<UTC time>/
<layout>``, then rendered with the `objects` run as the baseline. A layout
that fails is a failed row in the report and the others go on; Ctrl-C stops
the current run (the runner marks it interrupted) and the report is written
from the runs that completed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from locality.errors import InvalidArgument, LocalityError
from locality.experiment import store
from locality.report.data import RunData, label_runs, load_run_data

# Defaults chosen so that all layouts at 1,000,000 workers finish within
# 10 minutes on a 2-core machine (measured: see `locality compare --help`).
DEFAULT_WORKERS = 1_000_000
DEFAULT_STEPS = None  # runs last DEFAULT_DURATION; --steps caps them
DEFAULT_DURATION = 40.0  # s per layout: the longest idle threshold (30 s) plus 10 s of page-out after it
DEFAULT_STEP_INTERVAL = 0.1
DEFAULT_SAMPLE_INTERVAL = 1.0
COLD_THRESHOLDS = [1.0, 10.0, 30.0]  # all shorter than the run, so each is measured
SEED = 1

# The main job's workload, in the thesis regime (docs/paging.md): persistent
# patches of activity on the sheet. 1% of workers per step in discs of radius
# 16 (797 workers) that stay at their centre for 100 steps (11-16 s here), no
# travelling waves: about 95% of workers are never woken twice within the
# run, so they stay idle longer than the longest threshold (30 s). A patch
# spans many pages, so page granularity costs little against the oracle.
WORKLOADS: dict[str, tuple[str, dict[str, Any], str]] = {
    "patches": ("sheet", {"p": 0.01, "radius": 16.0, "waves": 0, "lifetime": 100},
                "persistent sheet patches: 1% of workers per step in radius-16 discs (797 workers) that live "
                "100 steps, no waves"),
    "waves": ("sheet", {}, "travelling-wave sheet (the adversarial case): 1% per step, radius-3 bursts moving "
                           "every step and two waves sweeping the sheet"),
}
DEFAULT_WORKLOAD = "patches"
ADVERSARIAL = "waves"
ADVERSARIAL_STEPS = 80  # the wave sheet wakes every worker within seconds: a short run shows it
ADVERSARIAL_DURATION = 20.0  # and a slow layout (isolated: a page fault per activation) stops at this


@dataclass
class CompareResult:
    report: Path
    run_root: Path
    runs: list[RunData]
    seconds: dict[str, float] = field(default_factory=dict)
    interrupted_at: str | None = None
    not_run: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [r.label for r in self.runs if r.failed]


def layout_names() -> list[str]:
    from locality.experiment.config import layout_names as names

    return list(names())


def parse_layouts(text: str) -> list[str]:
    known = layout_names()
    if text.strip() == "all":
        return known
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [n for n in chosen if n not in known]
    if unknown or not chosen:
        raise InvalidArgument(f"--layouts: unknown {', '.join(unknown) or repr(text)}", f"allowed: all, or a comma list of {', '.join(known)}")
    if len(set(chosen)) != len(chosen):
        raise InvalidArgument("--layouts: a layout is named twice", "name each layout once")
    return chosen


def compare_config(layout: str, *, workers: int, pattern: str, steps: int | None, interval: float, seed: int = SEED,
                   step_interval: float = DEFAULT_STEP_INTERVAL, duration: float | None = None,
                   reclaim: dict[str, Any] | None = None, name: str | None = None) -> Any:
    """The run config of one layout; everything but the layout (and reclaim) is the same for all."""
    from locality.experiment.config import validate

    pattern_name, params, _ = WORKLOADS.get(pattern, (pattern, {}, ""))
    cfg: dict[str, Any] = {
        "workers": workers,
        "layout": layout,
        "scheduler": "lean",
        "arena": "anon",
        "pattern": {"name": pattern_name, **params},
        "step_interval": step_interval,
        "seed": seed,
        "sampling": {"interval": interval, "pages": True, "cold_thresholds": COLD_THRESHOLDS},
        "reclaim": reclaim or {"policy": "none"},
        "name": name or f"compare-{layout}",
    }
    if steps is not None:
        cfg["steps"] = steps
    if duration is not None or steps is None:
        cfg["duration"] = duration or DEFAULT_DURATION
    return validate(cfg)


def _failed_placeholder(run_root: Path, layout: str, config: Any, error: str) -> RunData:
    """A layout refused before its run directory existed: still a (failed) row in the report."""
    manifest = {"id": layout, "kind": "run", "status": "failed", "error": error, "created": store.utcnow(),
                "finished": store.utcnow(), "config": config.model_dump(mode="json") if config is not None else {"layout": layout},
                "machine": store.machine(), "versions": store.versions(), "capabilities": {}}
    return RunData(path=run_root / layout, manifest=manifest)


def compare(
    layouts: Sequence[str],
    *,
    workers: int = DEFAULT_WORKERS,
    pattern: str = DEFAULT_WORKLOAD,
    steps: int | None = None,
    duration: float | None = None,
    interval: float = DEFAULT_SAMPLE_INTERVAL,
    step_interval: float = DEFAULT_STEP_INTERVAL,
    runs: str | Path = "runs/compare",
    out: str | Path = "reports/compare.html",
    progress: bool = True,
    reclaim: str = "auto",
    swap: int | None = None,
    idle: Sequence[float] | None = None,
    adversarial: bool | None = None,
) -> CompareResult:
    """Run each layout, then the paging checks, then write the report; returns where everything is."""
    from locality.experiment.reclaim_plan import plan_reclaim

    if workers <= 0:
        raise InvalidArgument(f"--workers must be > 0 (got {workers})")
    if steps is not None and steps <= 0:
        raise InvalidArgument(f"--steps must be > 0 (got {steps})")
    run_s = duration if duration is not None else (None if steps is not None else DEFAULT_DURATION)
    plan = plan_reclaim(reclaim, swap, idle, run_s, steps, step_interval)
    # Validate every config before the first (long) run starts.
    common = dict(workers=workers, pattern=pattern, steps=steps, interval=interval, step_interval=step_interval,
                  duration=duration)
    configs = {name: compare_config(name, **common) for name in layouts}
    if adversarial is None:
        adversarial = pattern == DEFAULT_WORKLOAD
    run_root = Path(runs) / dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    n = 1
    while run_root.exists():
        run_root = run_root.with_name(run_root.name.split("-")[0] + f"-{n}")
        n += 1
    run_root.mkdir(parents=True)

    job = _Job(run_root, progress)
    plan.announce()
    try:
        with plan.session(), _sigterm_as_interrupt():
            _run_job(job, layouts, configs, common, plan, adversarial)
    except KeyboardInterrupt:  # between runs: the same as during one
        job.interrupted_at = job.interrupted_at or "between runs"

    not_run = list(layouts[len(job.done) + (1 if job.interrupted_at else 0):]) if job.interrupted_at in layouts else []
    label = WORKLOADS.get(pattern, (pattern, {}, pattern))[2] or pattern
    length = f"{run_s:g} s per layout" if run_s is not None else f"{steps} steps"
    notes = [f"Same workload for every layout: {workers:,} workers, {label}; {length}, steps "
             f"{step_interval:g} s apart, seed {SEED}, sampled every {interval:g} s, no reclaim."]
    if adversarial:
        notes.append(f"Adversarial case: {WORKLOADS[ADVERSARIAL][2]}; {ADVERSARIAL_STEPS} steps (at most "
                     f"{ADVERSARIAL_DURATION:g} s), rows named {ADVERSARIAL}-<layout>.")
    notes += plan.notes
    if job.interrupted_at:
        notes.append(f"Interrupted (Ctrl-C) during {job.interrupted_at}; this report shows only the runs that had finished."
                     + (f" Not run: {', '.join(not_run)}." if not_run else ""))
    if not job.done:
        raise CompareInterrupted(f"interrupted during {job.interrupted_at} before any run finished", f"runs so far are in {run_root}")
    from locality.report.html import write_report

    label_runs(job.done)
    for r in job.done:  # run ids name layout and case (objects, waves-objects, clustered-pageout-idle-30s)
        r.label = r.id
    report = write_report(job.done, out, title=f"locality compare: {len(layouts)} layouts, {workers:,} workers, {pattern}",
                          notes=notes)
    return CompareResult(report, run_root, job.done, job.seconds, job.interrupted_at, not_run)


def _run_job(job: "_Job", layouts: Sequence[str], configs: dict[str, Any], common: dict[str, Any], plan: Any,
             adversarial: bool) -> None:
    """The layouts without reclaim, then the adversarial workload, then real page-outs of the best layout."""
    job.run_all([(name, configs[name]) for name in layouts], bar_total=len(layouts))
    if job.interrupted_at or not job.done:
        return
    best = _best_paging_layout(job.done)
    extra = []
    if adversarial:
        for name in dict.fromkeys([baseline_layout(layouts), best]):
            if name:
                extra.append((f"{ADVERSARIAL}-{name}", compare_config(
                    name, **{**common, "pattern": ADVERSARIAL, "steps": ADVERSARIAL_STEPS,
                                       "duration": ADVERSARIAL_DURATION},
                    name=f"compare-{ADVERSARIAL}-{name}")))
    if plan.measured and best:
        for T in plan.thresholds(job.done, best):
            extra.append((f"{best}-{plan.mode}-{T:g}s", compare_config(
                best, **common, reclaim=plan.reclaim_config(T, job.done, best), name=f"compare-{best}-{plan.mode}")))
    job.run_all(extra, bar_total=len(extra))


def baseline_layout(layouts: Sequence[str]) -> str | None:
    return "objects" if "objects" in layouts else (layouts[0] if layouts else None)


def _best_paging_layout(done: list[RunData]) -> str | None:
    from locality.experiment.verdict import best_paging

    metrics = {r.id: r.metrics for r in done if not r.failed}
    # Within 2x the oracle if any layout manages it, else the one closest to the oracle.
    best = best_paging(metrics)
    if best:
        return best["layout"]
    from locality.experiment.verdict import lowest_on_curve

    low = lowest_on_curve(metrics, "amplification")
    return metrics[low["run"]].get("layout", low["run"]) if low else None


class _Job:
    """Runs one after the other; a failed run is a failed row, Ctrl-C stops and keeps what finished."""

    def __init__(self, run_root: Path, progress: bool) -> None:
        self.run_root = run_root
        self.progress = progress
        self.done: list[RunData] = []
        self.seconds: dict[str, float] = {}
        self.interrupted_at: str | None = None

    def run_all(self, items: list[tuple[str, Any]], bar_total: int) -> None:
        from locality.experiment.runner import RunFailed, run

        if not items or self.interrupted_at:
            return
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=bar_total, unit="run", desc="compare", file=sys.stderr, position=0, dynamic_ncols=True)
        try:
            for run_id, config in items:
                if bar is not None:
                    bar.set_postfix_str(run_id, refresh=True)
                t0 = time.monotonic()
                try:
                    run_dir = run(config, self.run_root, run_id=run_id, progress=self.progress)
                    self.done.append(load_run_data(run_dir))
                except RunFailed:
                    self.done.append(_load_or_placeholder(self.run_root, run_id, config, "the run failed"))
                except KeyboardInterrupt:
                    self.interrupted_at = run_id
                    break
                except LocalityError as e:  # refused up front (e.g. a kernel feature missing)
                    self.done.append(_load_or_placeholder(self.run_root, run_id, config, str(e)))
                self.seconds[run_id] = time.monotonic() - t0
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM between runs ends the job like Ctrl-C: finished runs kept, swap restored, report written."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class CompareInterrupted(LocalityError):
    """Ctrl-C before any layout finished: there is nothing to report."""


def _load_or_placeholder(run_root: Path, name: str, config: Any, error: str) -> RunData:
    path = run_root / name
    if (path / "manifest.json").exists():
        try:
            return load_run_data(path)
        except LocalityError:
            pass
    return _failed_placeholder(run_root, name, config, error)
