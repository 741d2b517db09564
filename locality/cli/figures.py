"""`locality figures EXPERIMENT.toml`: the thesis figures, from stored runs alone."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _formats(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    from locality.report.thesis import FORMATS

    fmts = [f.strip().lower() for f in value.split(",") if f.strip()]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise click.BadParameter(f"unknown format {', '.join(bad) or value!r} (allowed: {', '.join(FORMATS)})")
    return fmts


@click.command("figures")
@click.argument("experiment", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "formats", callback=_formats, metavar="pdf,svg,png",
              help="Comma-separated output formats [default: the file's figures.format, else pdf,svg].")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the figure files [default: the file's figures.out, else reports/figures/].")
@click.option("--runs", "runs_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Directory holding the runs [default: the file's figures.runs, else its out].")
@click.option("--json", "as_json", is_flag=True, help="Print the files written as JSON.")
def figures(experiment: Path, formats: list[str] | None, out: Path | None, runs_dir: Path | None, as_json: bool) -> None:
    """Regenerate every thesis figure of EXPERIMENT from its stored runs (no re-run).

    EXPERIMENT is a TOML file such as experiments/thesis.toml: a `locality
    run` config, a [grid] that `locality sweep` runs, and a [figures] table
    naming the figures. If any run is missing or not complete, nothing is
    drawn: the error names the runs and the `locality sweep` command that
    produces them (exit status 2). The same runs give byte-identical SVG.
    """
    from locality.report.thesis import load_figure_set, write_figures

    fs = load_figure_set(experiment, formats=formats, out=out)
    if runs_dir is not None:
        fs.runs_dir = runs_dir
    from locality.experiment.outputs import check_output_dir

    check_output_dir(fs.out, "--out")
    written, notes = write_figures(fs)
    if as_json:
        click.echo(json.dumps({"files": [str(p) for p in written], "notes": notes}))
        return
    for note in notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"{len(written)} figure files in {fs.out}/ from {len(fs.run_ids)} runs in {fs.runs_dir}/")
