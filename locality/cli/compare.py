"""`locality compare`: every layout on one seeded workload, then one report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from locality.experiment.compare import DEFAULT_SAMPLE_INTERVAL, DEFAULT_STEP_INTERVAL, DEFAULT_STEPS, DEFAULT_WORKERS


@click.command("compare")
@click.option("--workers", type=click.IntRange(min=1), default=DEFAULT_WORKERS, show_default=True,
              help="Workers in each population.")
@click.option("--layouts", default="all", show_default=True, metavar="all|L1,L2",
              help="Layouts to compare: all, or a comma list (objects, slab, hot-cold, clustered, ...).")
@click.option("--pattern", type=click.Choice(["uniform", "zipf", "sheet", "bursty"]), default="sheet", show_default=True,
              help="Activation pattern, with its default parameters (1% of workers per step).")
@click.option("--steps", type=click.IntRange(min=1), default=DEFAULT_STEPS, show_default=True,
              help="Activation steps per layout.")
@click.option("--step-interval", type=click.FloatRange(min=0), default=DEFAULT_STEP_INTERVAL, show_default=True,
              help="Seconds the population idles between steps.")
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_SAMPLE_INTERVAL, show_default=True,
              help="Seconds between samples of the child's pages.")
@click.option("--runs", "runs_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/compare"),
              show_default=True, help="Runs are stored under RUNS/<UTC time>/<layout>.")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=Path("reports/compare.html"),
              show_default=True, help="HTML report to write.")
@click.option("--json", "as_json", is_flag=True, help="Print the report path, run_dirs and each layout's status as JSON; no progress bars.")
def compare(workers: int, layouts: str, pattern: str, steps: int, step_interval: float, interval: float, runs_dir: Path,
            out: Path, as_json: bool) -> None:
    """Run every layout on the same seeded workload and write one report.

    One run per layout, one after the other (each in its own child process,
    sampled from outside), all with the same workers, pattern, steps and
    seed; then one self-contained HTML report with the `objects` layout as
    the baseline. The defaults (1,000,000 workers, all 8 layouts, 80 steps)
    are sized to finish in under 10 minutes on a 2-core machine; the
    isolated layout (a page fault per activation) takes longest. A layout that
    fails is a failed row in the report; Ctrl-C keeps the finished runs and
    writes their report (exit status 130).
    """
    from locality.experiment.compare import CompareInterrupted, compare as run_compare, parse_layouts
    from locality.experiment.signals import StopSignals
    from locality.report.compare import write_compare_report

    chosen = parse_layouts(layouts)
    # Held across the runs and the report: a Ctrl-C while the report is drawn
    # still leaves the report of the finished runs, then exits 130.
    with StopSignals() as stop:
        try:
            result = run_compare(chosen, workers=workers, pattern=pattern, steps=steps, interval=interval,
                                 step_interval=step_interval, runs=runs_dir, progress=not as_json)
        except CompareInterrupted as e:
            click.echo(f"locality: interrupted: {e}", err=True)
            sys.exit(130)
        rendered = write_compare_report(result, out)
        signalled = stop.signum is not None
    if as_json:
        click.echo(json.dumps({
            "report": str(rendered.report),
            "run_dirs": [str(r.path) for r in rendered.runs],
            "runs": {r.label: {"status": r.status, "seconds": result.seconds.get(r.label)} for r in rendered.runs},
            "interrupted_at": result.interrupted_at,
            "not_run": result.not_run,
        }))
    else:
        for r in rendered.runs:
            took = result.seconds.get(r.label)
            click.echo(f"{r.status:<11} {r.label:<18} {f'{took:6.1f} s' if took is not None else '':>8}  {r.path}")
        if result.interrupted_at:
            click.echo(f"interrupted during {result.interrupted_at}; report of the finished runs:", err=True)
        elif signalled:
            click.echo("interrupted after the last run; its report was written", err=True)
        click.echo(f"report: {rendered.report}")
    if result.interrupted_at or signalled:
        sys.exit(130)
    if rendered.failed:
        sys.exit(1)
