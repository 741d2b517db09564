"""`locality report RUN_DIR...`: one self-contained HTML file comparing stored runs."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=Path("reports/report.html"),
              show_default=True, help="HTML file to write (its directory is created).")
@click.option("--title", help="Heading of the report (default: experiment name, number of runs and the grid's axes).")
@click.option("--baseline", metavar="NAME",
              help="Each group's baseline: a layout (objects), a run label or a run id [default: the group's "
                   "objects run, else its first].")
@click.option("--json", "as_json", is_flag=True, help="Print the report path, run_dirs and what was skipped as JSON.")
def report(run_dirs: tuple[Path, ...], out: Path, title: str | None, baseline: str | None, as_json: bool) -> None:
    """Write ONE self-contained HTML report from stored RUN_DIRS.

    A RUN_DIR may also be a directory that holds runs at any depth (a
    sweep's --out, runs/compare/, a whole runs/ tree): it stands for every
    run below it; the report (and this command) says how many were found
    and which directories were skipped, and why.

    Works for worker runs (`locality run`, `compare`, `sweep`), `locality
    probe` runs of any PID and `locality beam` runs. The file has inline SVG
    figures, no scripts and no external requests, so it opens from file://.
    Rows are grouped by the axes the runs differ in besides the layout
    (pattern, policy, workers, ...); each group's ratios are taken against
    its own baseline (--baseline, else its `objects` run, else its first).
    Figures whose data no run has are omitted with a note.
    """
    from locality.experiment.outputs import check_output_file

    check_output_file(out, "--out")  # before matplotlib is imported: a bad --out is the one line said
    from locality.report.data import find_runs
    from locality.report.html import write_report

    found = find_runs(list(run_dirs))
    notes = [found.summary()] if found.summary() else []
    path = write_report(found.runs, out, title=title, notes=notes, baseline=baseline)
    if as_json:
        click.echo(json.dumps({"report": str(path), "run_dirs": [str(r.path) for r in found.runs],
                               "skipped": [{"path": str(p), "reason": why} for p, why in found.skipped]}))
        return
    if found.summary():
        click.echo(found.summary(), err=True)
    click.echo(f"report: {path}")
