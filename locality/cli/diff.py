"""`locality diff RUN_A RUN_B`: two stored runs' metrics side by side."""

from __future__ import annotations

import json
from pathlib import Path

import click

from locality.cli.output import format_option, resolve


@click.command("diff")
@click.argument("run_a", type=click.Path(path_type=Path))
@click.argument("run_b", type=click.Path(path_type=Path))
@format_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (run_dirs, repeats, metrics).")
def diff(run_a: Path, run_b: Path, fmt: str | None, as_json: bool) -> None:
    """Compare RUN_B to RUN_A: each headline metric of both, the ratio B/A,
    and the config keys in which they differ.

    A difference is marked significant or within noise only where the noise
    was measured: by repeats, the complete runs beside a run (same
    directory) whose config differs at most in seed. It counts as
    significant when larger than 2 x sqrt(sd_A^2 + sd_B^2). Without repeats
    the noise is reported as unknown.

    \b
    Example:
      locality sweep experiments/small.toml --grid layout=objects,slab --grid seed=1,2,3 --out runs/s
      locality diff runs/s/layout=objects+seed=1-... runs/s/layout=slab+seed=1-...
    """
    from locality.report.summary import diff_csv, diff_doc, diff_text, load

    a, b = load(run_a), load(run_b)
    fmt = resolve(fmt, as_json)
    if fmt == "json":
        click.echo(json.dumps(diff_doc(a, b), indent=2, sort_keys=True))
    elif fmt == "csv":
        click.echo(diff_csv(a, b), nl=False)
    else:
        click.echo(diff_text(a, b))
