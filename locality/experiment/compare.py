"""The main job: every layout on the same seeded workload, ready for one report.

Runs are made one after the other by the experiment runner (a child process
per layout, sampled from outside) and stored under ``runs/compare/<UTC time>/
<layout>``; ``locality.report.compare`` renders them with the `objects` run
as the baseline. A layout that fails is a failed run and the others go on;
Ctrl-C stops the current run (the runner marks it interrupted) and the
report is written from the runs that completed.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from locality.errors import InvalidArgument, LocalityError

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
    """Where a comparison's runs are; ``report.compare.write_compare_report`` renders it."""

    run_root: Path
    run_dirs: list[Path]  # one per layout that ran or was refused, in order (failed ones included)
    title: str
    notes: list[str]
    seconds: dict[str, float] = field(default_factory=dict)
    interrupted_at: str | None = None
    not_run: list[str] = field(default_factory=list)
    interrupted_running: bool = False  # the signal cut interrupted_at's run (else it came before that run began)

    @property
    def interruption(self) -> str | None:
        """'during slab' / 'before slab', or None when every layout ran."""
        if self.interrupted_at is None:
            return None
        return f"{'during' if self.interrupted_running else 'before'} {self.interrupted_at}"


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
    if "radius" in params:
        from locality.population.patterns import sheet_width

        # A small population's sheet is narrower than a patch: the patch covers the sheet.
        params = {**params, "radius": min(float(params["radius"]), float(sheet_width(workers)))}
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
    progress: bool = True,
    reclaim: str = "auto",
    swap: int | None = None,
    idle: Sequence[float] | None = None,
    adversarial: bool | None = None,
) -> CompareResult:
    """Run each layout, then the paging checks, one after the other, under ``runs/<UTC time>/<run id>``.

    The layouts run without reclaim on the workload (default: patches); then
    the baseline and the best pager on the adversarial wave sheet; then, when
    the reclaim plan measures (swap active, or --swap as root), the best pager
    with a real page-out at each idle threshold. A layout refused up front is
    stored as a failed run; a failed one stays failed and the others go on.
    SIGINT/SIGTERM, during a run or between two, stops after the current run
    (stored ``interrupted``), restores swap and returns what ran;
    CompareInterrupted if nothing finished.
    """
    from locality.experiment.reclaim_plan import plan_reclaim
    from locality.experiment.signals import StopSignals

    if workers <= 0:
        raise InvalidArgument(f"--workers must be > 0 (got {workers})")
    if steps is not None and steps <= 0:
        raise InvalidArgument(f"--steps must be > 0 (got {steps})")
    run_s = duration if duration is not None else (None if steps is not None else DEFAULT_DURATION)
    plan = plan_reclaim(reclaim, swap, idle, run_s, steps, step_interval)
    # Validate every layout's config before the first (long) run starts.
    common = dict(workers=workers, pattern=pattern, steps=steps, interval=interval, step_interval=step_interval,
                  duration=duration)
    configs = {name: compare_config(name, **common) for name in layouts}
    if adversarial is None:
        adversarial = pattern == DEFAULT_WORKLOAD
    from locality.experiment.estimate import check_memory

    check_memory([(f"layout {name}", cfg) for name, cfg in configs.items()], runs)
    run_root = timestamped_root(runs)

    job = _Job(run_root, progress)
    plan.announce()
    with StopSignals() as stop, plan.session():
        job.stop = stop
        job.run_all([(name, configs[name]) for name in layouts])
        if not job.interrupted_at and job.done:
            job.run_all(_paging_runs(job, layouts, common, plan, adversarial))

    not_run = list(layouts[len(job.done) + (1 if job.ran_interrupted else 0):]) if job.interrupted_at in layouts else []
    label = WORKLOADS.get(pattern, (pattern, {}, pattern))[2] or pattern
    radius = getattr(next(iter(configs.values())).pattern, "radius", None)
    if radius is not None and radius < WORKLOADS.get(pattern, ("", {}, ""))[1].get("radius", radius):
        label += f" (radius {radius:g} here: the sheet of {workers:,} workers is that wide)"
    length = f"{run_s:g} s per layout" if run_s is not None else f"{steps} steps"
    notes = [f"Same workload for every layout: {workers:,} workers, {label}; {length}, steps "
             f"{step_interval:g} s apart, seed {SEED}, sampled every {interval:g} s, no reclaim."]
    if adversarial:
        notes.append(f"Adversarial case: {WORKLOADS[ADVERSARIAL][2]}; {ADVERSARIAL_STEPS} steps (at most "
                     f"{ADVERSARIAL_DURATION:g} s), rows named {ADVERSARIAL}-<layout>.")
    notes += plan.notes
    if job.interrupted_at:
        when = "during" if job.ran_interrupted else "before"
        notes.append(f"Interrupted (Ctrl-C) {when} {job.interrupted_at}; this report shows only the runs that had finished."
                     + (f" Not run: {', '.join(not_run)}." if not_run else ""))
    if not job.done:
        raise CompareInterrupted(f"interrupted during {job.interrupted_at} before any run finished",
                                 f"runs so far are in {run_root}")
    title = f"locality compare: {len(layouts)} layouts, {workers:,} workers, {pattern}"
    return CompareResult(run_root, job.done, title, notes, job.seconds, job.interrupted_at, not_run, job.ran_interrupted)


def _paging_runs(job: "_Job", layouts: Sequence[str], common: dict[str, Any], plan: Any,
                 adversarial: bool) -> list[tuple[str, Any]]:
    """The adversarial workload for the baseline and the best pager, then real page-outs of the best pager."""
    metrics = _metrics(job.done)
    best = _best_paging_layout(metrics)
    extra = []
    if adversarial:
        for name in dict.fromkeys([baseline_layout(layouts), best]):
            if name:
                extra.append((f"{ADVERSARIAL}-{name}", compare_config(
                    name, **{**common, "pattern": ADVERSARIAL, "steps": ADVERSARIAL_STEPS,
                             "duration": ADVERSARIAL_DURATION}, name=f"compare-{ADVERSARIAL}-{name}")))
    if plan.measured and best:
        for T in plan.thresholds(metrics, best):
            extra.append((f"{best}-{plan.mode}-{T:g}s", compare_config(
                best, **common, reclaim=plan.reclaim_config(T, job.run_root / best, metrics[best]),
                name=f"compare-{best}-{plan.mode}")))
    return extra


def _metrics(run_dirs: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """metrics.json of each finished run, by run id (failed and refused runs have none)."""
    out = {}
    for d in run_dirs:
        try:
            out[d.name] = json.loads((d / "metrics.json").read_text())
        except (OSError, ValueError):
            continue
    return out


def baseline_layout(layouts: Sequence[str]) -> str | None:
    return "objects" if "objects" in layouts else (layouts[0] if layouts else None)


def _best_paging_layout(metrics: dict[str, dict[str, Any]]) -> str | None:
    from locality.experiment.verdict import best_paging, lowest_on_curve

    # Within 2x the oracle if any layout manages it, else the one closest to the oracle.
    best = best_paging(metrics)
    if best:
        return best["layout"]
    low = lowest_on_curve(metrics, "amplification")
    return metrics[low["run"]].get("layout", low["run"]) if low else None


class _Job:
    """Runs one after the other; a failed run stays failed, a signal stops and keeps what finished."""

    def __init__(self, run_root: Path, progress: bool) -> None:
        self.run_root = run_root
        self.progress = progress
        self.done: list[Path] = []
        self.seconds: dict[str, float] = {}
        self.interrupted_at: str | None = None
        self.ran_interrupted = False
        self.stop: Any = None

    def run_all(self, items: list[tuple[str, Any]]) -> None:
        from locality.experiment.lifecycle import record_refused
        from locality.experiment.runner import RunFailed, run

        if not items or self.interrupted_at:
            return
        bar = None
        if self.progress:
            from locality.progress import progress as progress_bar

            bar = progress_bar(len(items), "compare", "run")
        try:
            for run_id, config in items:
                if self.stop is not None and self.stop.signum is not None:  # arrived between two runs
                    self.interrupted_at = run_id
                    break
                if bar is not None:
                    bar.set_postfix_str(run_id, refresh=True)
                t0 = time.monotonic()
                try:
                    run(config, self.run_root, run_id=run_id, progress=self.progress)
                except RunFailed:
                    pass  # stored as failed
                except KeyboardInterrupt:
                    self.interrupted_at, self.ran_interrupted = run_id, True
                    break
                except LocalityError as e:  # refused up front (e.g. a kernel feature missing)
                    record_refused("run", self.run_root, run_id, config.model_dump(mode="json"), str(e))
                self.done.append(self.run_root / run_id)
                self.seconds[run_id] = time.monotonic() - t0
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()


def timestamped_root(runs: str | Path) -> Path:
    """A new directory ``runs/<UTC time>`` (``-1``, ``-2``, ... if taken) for one comparison's runs."""
    run_root = Path(runs) / dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    n = 1
    while run_root.exists():
        run_root = run_root.with_name(run_root.name.split("-")[0] + f"-{n}")
        n += 1
    run_root.mkdir(parents=True)
    return run_root


class CompareInterrupted(LocalityError):
    """Ctrl-C before any layout finished: there is nothing to report."""
