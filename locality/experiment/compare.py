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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from locality.errors import InvalidArgument, LocalityError

# Defaults chosen so that all layouts at 1,000,000 workers finish within
# 10 minutes on a 2-core machine (measured: see `locality compare --help`).
DEFAULT_WORKERS = 1_000_000
DEFAULT_STEPS = 80
DEFAULT_STEP_INTERVAL = 0.1  # 80 steps -> about 15 s of activity per layout at 1M workers (isolated: minutes)
DEFAULT_SAMPLE_INTERVAL = 1.0
COLD_THRESHOLDS = [1.0, 5.0, 10.0]  # all shorter than the run, so each is measured
SEED = 1


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


def compare_config(layout: str, *, workers: int, pattern: str, steps: int, interval: float, seed: int = SEED,
                   step_interval: float = DEFAULT_STEP_INTERVAL) -> Any:
    """The run config of one layout; everything but the layout is the same for all."""
    from locality.experiment.config import validate

    return validate({
        "workers": workers,
        "layout": layout,
        "scheduler": "lean",
        "arena": "anon",
        "pattern": {"name": pattern},
        "steps": steps,
        "step_interval": step_interval,
        "seed": seed,
        "sampling": {"interval": interval, "pages": True, "cold_thresholds": COLD_THRESHOLDS},
        "reclaim": {"policy": "none"},
        "name": f"compare-{layout}",
    })


def compare(
    layouts: Sequence[str],
    *,
    workers: int = DEFAULT_WORKERS,
    pattern: str = "sheet",
    steps: int = DEFAULT_STEPS,
    interval: float = DEFAULT_SAMPLE_INTERVAL,
    step_interval: float = DEFAULT_STEP_INTERVAL,
    runs: str | Path = "runs/compare",
    progress: bool = True,
) -> CompareResult:
    """Run each layout, one after the other, under ``runs/<UTC time>/<layout>``.

    A layout refused up front is stored as a failed run; a failed one stays
    failed and the others go on. SIGINT/SIGTERM, during a run or between two,
    stops after the current run (stored ``interrupted``) and returns what ran;
    CompareInterrupted if nothing finished.
    """
    from locality.experiment.lifecycle import record_refused
    from locality.experiment.runner import RunFailed, run
    from locality.experiment.signals import StopSignals

    if workers <= 0:
        raise InvalidArgument(f"--workers must be > 0 (got {workers})")
    if steps <= 0:
        raise InvalidArgument(f"--steps must be > 0 (got {steps})")
    # Validate every layout's config before the first (long) run starts.
    configs = {name: compare_config(name, workers=workers, pattern=pattern, steps=steps, interval=interval,
                                    step_interval=step_interval) for name in layouts}
    run_root = Path(runs) / dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    n = 1
    while run_root.exists():
        run_root = run_root.with_name(run_root.name.split("-")[0] + f"-{n}")
        n += 1
    run_root.mkdir(parents=True)

    done: list[Path] = []
    seconds: dict[str, float] = {}
    interrupted_at = None
    ran_interrupted = False
    bar = None
    if progress:
        from locality.progress import progress as progress_bar

        bar = progress_bar(len(layouts), "compare", "layout")
    try:
        with StopSignals() as stop:
            for name in layouts:
                if stop.signum is not None:  # arrived between two layouts
                    interrupted_at = name
                    break
                if bar is not None:
                    bar.set_postfix_str(name, refresh=True)
                t0 = time.monotonic()
                try:
                    run(configs[name], run_root, run_id=name, progress=progress)
                except RunFailed:
                    pass  # stored as failed
                except KeyboardInterrupt:
                    interrupted_at, ran_interrupted = name, True
                    break
                except LocalityError as e:  # refused up front (e.g. a kernel feature missing)
                    record_refused("run", run_root, name, configs[name].model_dump(mode="json"), str(e))
                done.append(run_root / name)
                seconds[name] = time.monotonic() - t0
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    not_run = list(layouts[len(done) + (1 if ran_interrupted else 0):])
    notes = [f"Same workload for every layout: {workers:,} workers, pattern {pattern}, {steps} steps "
             f"{step_interval:g} s apart, seed {SEED}, sampled every {interval:g} s, no reclaim."]
    if interrupted_at:
        notes.append(f"Interrupted (Ctrl-C) during {interrupted_at}; this report shows only the runs that had finished."
                     + (f" Not run: {', '.join(not_run)}." if not_run else ""))
    if not done:
        raise CompareInterrupted(f"interrupted during {interrupted_at} before any run finished", f"runs so far are in {run_root}")
    title = f"locality compare: {len(done)} layouts, {workers:,} workers, {pattern}"
    return CompareResult(run_root, done, title, notes, seconds, interrupted_at, not_run)


class CompareInterrupted(LocalityError):
    """Ctrl-C before any layout finished: there is nothing to report."""
