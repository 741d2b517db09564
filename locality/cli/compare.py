"""`locality compare`: every layout on one seeded workload, the paging curve, then one report with a verdict."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click

from locality.cli import finite
from locality.cli.swap import SIZE
from locality.experiment.compare import (DEFAULT_DURATION, DEFAULT_SAMPLE_INTERVAL, DEFAULT_STEP_INTERVAL, DEFAULT_WORKERS,
                                     DEFAULT_WORKLOAD, WORKLOADS)


def _idle(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        seconds = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma list of seconds (e.g. 10,30)") from None
    if not all(math.isfinite(v) for v in seconds):
        raise click.BadParameter(f"{value!r}: each threshold must be a finite number of seconds (e.g. 10,30)")
    return seconds


@click.command("compare")
@click.option("--workers", type=click.IntRange(min=1), default=DEFAULT_WORKERS, show_default=True,
              help="Workers in each population.")
@click.option("--layouts", default="all", show_default=True, metavar="all|L1,L2",
              help="Layouts to compare: all, or a comma list (objects, slab, hot-cold, clustered, ...).")
@click.option("--pattern", type=click.Choice([*WORKLOADS, "uniform", "zipf", "sheet", "bursty"]), default=DEFAULT_WORKLOAD,
              show_default=True,
              help="Workload: patches (the default: persistent sheet patches, about 95% of workers idle for the "
                   "whole run), waves (the travelling-wave sheet, adversarial), or a pattern with its defaults.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None, callback=finite,
              help=f"Seconds each layout runs [default: {DEFAULT_DURATION:g}, unless --steps is given].")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Activation steps per layout (a cap with --duration).")
@click.option("--step-interval", type=click.FloatRange(min=0), default=DEFAULT_STEP_INTERVAL, show_default=True, callback=finite,
              help="Seconds the population idles between steps.")
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_SAMPLE_INTERVAL, show_default=True,
              callback=finite,
              help="Seconds between samples of the child's pages.")
@click.option("--reclaim", type=click.Choice(["auto", "none", "pageout-idle", "cgroup"]), default="auto", show_default=True,
              help="Measured paging points: auto pages out for real (MADV_PAGEOUT after --idle T) when swap is active, "
                   "or with --swap as root; otherwise the report has the simulated curve alone. cgroup limits memory "
                   "to what pageout-idle would keep.")
@click.option("--swap", type=SIZE, default=None, metavar="SIZE",
              help="Turn zram swap of SIZE on for the comparison (root) and restore the exact prior state at the end.")
@click.option("--idle", callback=_idle, default=None, metavar="T1,T2",
              help="Idle thresholds (s) of the real page-outs [default: the verdict's threshold].")
@click.option("--runs", "runs_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/compare"),
              show_default=True, help="Runs are stored under RUNS/<UTC time>/<layout>.")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=Path("reports/compare.html"),
              show_default=True, help="HTML report to write.")
@click.option("--json", "as_json", is_flag=True, help="Print the report path, run_dirs and each run's status as JSON; no progress bars.")
def compare(workers: int, layouts: str, pattern: str, duration: float | None, steps: int | None, step_interval: float,
            interval: float, reclaim: str, swap: int | None, idle: list[float] | None, runs_dir: Path, out: Path,
            as_json: bool) -> None:
    """Run every layout on the same seeded workload and write one report with a verdict.

    One run per layout, one after the other (each in its own child process,
    sampled from outside), all with the same workers, workload, length and
    seed. Each run's written-page trace gives its whole paging curve (memory
    a page-out-after-T policy holds out vs the pages it brings back, for
    every T) beside the oracle bound. The best layout and the baseline are
    also run on the travelling-wave sheet (the adversarial case), and with
    swap the best layout is paged out for real at the verdict's threshold to
    check the simulated curve. The defaults (1,000,000 workers, all 8
    layouts, 40 s each) are sized to finish in under 10 minutes on a 2-core
    machine. A layout that fails is a failed row in the report; Ctrl-C or
    SIGTERM keeps the finished runs, writes their report, restores swap
    (exit status 130).
    """
    from locality.experiment.compare import CompareInterrupted, compare as run_compare, parse_layouts
    from locality.experiment.outputs import check_output_dir, check_output_file
    from locality.experiment.signals import StopSignals
    from locality.report.compare import write_compare_report

    chosen = parse_layouts(layouts)
    check_output_file(out, "--out")
    check_output_dir(runs_dir, "--runs")
    # Held across the runs and the report: a Ctrl-C while the report is drawn
    # still leaves the report of the finished runs, then exits 130.
    with StopSignals() as stop:
        try:
            result = run_compare(chosen, workers=workers, pattern=pattern, steps=steps, duration=duration,
                                 interval=interval, step_interval=step_interval, runs=runs_dir, progress=not as_json,
                                 reclaim=reclaim, swap=swap, idle=idle)
        except CompareInterrupted as e:
            click.echo(f"locality: interrupted: {e}", err=True)
            sys.exit(130)
        rendered = write_compare_report(result, out)
        signalled = stop.signum is not None
    if as_json:
        click.echo(json.dumps({
            "report": str(rendered.report),
            "run_dirs": [str(r.path) for r in rendered.runs],
            "runs": {r.label: {"status": r.status, "run_dir": str(r.path), "seconds": result.seconds.get(r.label)}
                     for r in rendered.runs},
            "interrupted_at": result.interrupted_at,
            "not_run": result.not_run,
        }))
    else:
        for r in rendered.runs:
            took = result.seconds.get(r.label)
            click.echo(f"{r.status:<11} {r.label:<30} {f'{took:6.1f} s' if took is not None else '':>8}  {r.path}")
        if result.interrupted_at:
            click.echo(f"interrupted {result.interruption}; report of the finished runs:", err=True)
        elif signalled:
            click.echo("interrupted after the last run; its report was written", err=True)
        click.echo(f"report: {rendered.report}")
    if result.interrupted_at or signalled:
        sys.exit(130)
    if rendered.failed:
        sys.exit(1)
