"""`locality show RUN`: one stored run in the terminal."""

from __future__ import annotations

import json
from pathlib import Path

import click

from locality.cli.output import format_option, resolve


@click.command("show")
@click.argument("run_dir", type=click.Path(path_type=Path))
@format_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (run_dir, status, config, metrics, files).")
def show(run_dir: Path, fmt: str | None, as_json: bool) -> None:
    """Summarise the stored run RUN_DIR: status, the config essentials, the
    headline metrics (as the HTML report formats them) and where its files are.

    Works for every kind of run (run, probe, beam). Reads the run store only.

    \b
    Examples:
      locality show runs/compare/20261130T120000Z/slab
      locality show runs/thesis/layout=slab+... --format csv
    """
    from locality.report.summary import load, show_csv, show_doc, show_text

    run = load(run_dir)
    fmt = resolve(fmt, as_json)
    if fmt == "json":
        click.echo(json.dumps(show_doc(run), indent=2, sort_keys=True))
    elif fmt == "csv":
        click.echo(show_csv(run), nl=False)
    else:
        click.echo(show_text(run))
