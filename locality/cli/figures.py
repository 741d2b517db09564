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
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a base config value (TOML), exactly as `locality sweep --set`: the run ids follow, "
                   "so --set workers=100000 draws the figures of `locality sweep EXPERIMENT --set workers=100000`.")
@click.option("--json", "as_json", is_flag=True, help="Print the files written as JSON.")
def figures(experiment: Path, formats: list[str] | None, out: Path | None, runs_dir: Path | None,
            overrides: tuple[str, ...], as_json: bool) -> None:
    """Regenerate every thesis figure of EXPERIMENT from its stored runs (no re-run).

    EXPERIMENT is a TOML file such as experiments/thesis.toml: a `locality
    run` config, a [grid] that `locality sweep` runs, and a [figures] table
    naming the figures. If any run is missing or not complete, nothing is
    drawn: the error names the runs, the `locality sweep` command (with the
    same --set) that produces them and what that needs (swap, root, time,
    memory); exit status 2. The same runs give
    byte-identical SVG.

    \b
    At another size, e.g. 100k workers instead of 1M:
      locality sweep experiments/thesis.toml --set workers=100000 --resume
      locality figures experiments/thesis.toml --set workers=100000 --out reports-100k
    """
    from locality.experiment.plan import grid_needs
    from locality.report.thesis import load_figure_set, write_figures

    fs = load_figure_set(experiment, formats=formats, out=out, overrides=overrides)
    if runs_dir is not None:
        fs.runs_dir = runs_dir
    from locality.experiment.outputs import check_output_dir

    check_output_dir(fs.out, "--out")
    missing = fs.missing_points()
    if missing:
        # The error that names the missing runs also says what producing them takes.
        fs.needs = grid_needs(fs.points, fs.runs_dir, missing).short()
    written, notes = write_figures(fs)
    if as_json:
        click.echo(json.dumps({"files": [str(p) for p in written], "notes": notes, "runs_dir": str(fs.runs_dir),
                               "run_dirs": [str(fs.runs_dir / r) for r in fs.run_ids]}))
        return
    for note in notes:
        click.echo(f"note: {note}", err=True)
    pages = [p for p in written if p.suffix == ".html"]
    extra = f" and {len(pages)} HTML report{'s' if len(pages) != 1 else ''}" if pages else ""
    click.echo(f"{len(written) - len(pages)} figure files{extra} in {fs.out}/ from {len(fs.run_ids)} runs in {fs.runs_dir}/")
