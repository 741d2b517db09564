"""`locality report RUN_DIR...`: one self-contained HTML file comparing stored runs."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=Path("reports/report.html"),
              show_default=True, help="HTML file to write (its directory is created).")
@click.option("--title", help="Heading of the report (default: the run labels).")
@click.option("--json", "as_json", is_flag=True, help="Print where the report went as JSON instead of a sentence.")
def report(run_dirs: tuple[Path, ...], out: Path, title: str | None, as_json: bool) -> None:
    """Write ONE self-contained HTML report from stored RUN_DIRS.

    A RUN_DIR may also be a directory of runs (a sweep's --out, or one
    `locality compare` under runs/compare/), which stands for all its runs.

    Works for worker runs (`locality run`, `compare`, `sweep`), `locality
    probe` runs of any PID and `locality beam` runs. The file has inline SVG
    figures, no scripts and no external requests, so it opens from file://.
    The baseline for ratios is the `objects` layout run if present, else the
    first run. Figures whose data no run has are omitted with a note.
    """
    from locality.report.html import write_report

    path = write_report(list(run_dirs), out, title=title)
    if as_json:
        click.echo(json.dumps({"report": str(path), "run_dirs": [str(p) for p in run_dirs]}))
    else:
        click.echo(f"report: {path}")
