"""`locality sweep CONFIG --grid key=v1,v2 ...`: the cartesian product of runs, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("sweep")
# readable=False: an unreadable config is reported by load_config as one line.
@click.argument("config", type=click.Path(readable=False, path_type=Path))
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2",
              help="A config key and its values (TOML), e.g. --grid workers=1000,10000 --grid layout=slab,objects. "
                   "Without --grid, the file's [grid] table is used.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a base config value (TOML).")
@click.option("--resume", is_flag=True, help="Skip points whose run is complete; re-run failed or interrupted ones.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory of the point runs [default: the config's `out`, else runs/].")
@click.option("--executor", type=click.Choice(["local", "dask"]), default="local", show_default=True,
              help="local: one run after the other here; dask: one run per node on a Dask cluster.")
@click.option("--scheduler", "scheduler", default=None, metavar="ADDR", help="Dask scheduler address (with --executor dask).")
@click.option("--cluster", type=click.Choice(["local", "slurm", "pbs"]), default=None,
              help="Cluster to create when no --scheduler is given (with --executor dask) [default: local].")
@click.option("--runs-per-node", type=click.IntRange(min=1), default=None, help="Concurrent runs per node (with --executor dask) [default: 1].")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object per point (point_id, status, skipped, run_dir, error); no progress bar.")
def sweep(config: Path, grid: tuple[str, ...], overrides: tuple[str, ...], resume: bool, out: Path | None, executor: str,
          scheduler: str | None, cluster: str | None, runs_per_node: int | None, as_json: bool) -> None:
    """Run CONFIG once per combination of --grid values (or of its [grid] table).

    Each point is stored as OUT/<point-id>, an id built from its grid values
    and a hash of its config, so `--resume` finds it again. Every point is
    validated before the first runs, and (local executor) what the grid
    needs (swap, root, estimated time and memory) is printed before the
    first starts. With the local executor, a point whose
    estimated memory (workers x measured bytes/worker, see
    locality.experiment.sweep) exceeds the free memory is refused up front.
    Two `--resume`s of one OUT share the work: a point another one is running
    is skipped (listed as running). Exits 1 if any point failed, was
    interrupted or crashed.
    """
    from locality.errors import InvalidArgument
    from locality.experiment.config import load_config
    from locality.experiment.outputs import check_output_dir
    from locality.experiment.plan import grid_needs
    from locality.experiment.store import effective_status, read_manifest
    from locality.experiment.sweep import file_grid, parse_grid, pending, points, run_sweep

    cfg = load_config(config, overrides)
    points_grid = parse_grid(grid) if grid else file_grid(config)
    if not points_grid:
        raise InvalidArgument("no --grid given and the config has no [grid] table", "add --grid key=v1,v2")
    options = {k: v for k, v in (("scheduler", scheduler), ("cluster", cluster), ("runs_per_node", runs_per_node)) if v is not None}
    if options and executor != "dask":
        raise InvalidArgument(f"--{next(iter(options)).replace('_', '-')} needs --executor dask")
    out_dir = check_output_dir(out if out is not None else Path(cfg.out), "--out")
    all_points = points(cfg, points_grid)
    todo = pending(all_points, out_dir, resume)
    skipped = {p.point_id for p in all_points} - {p.point_id for p in todo}

    def say_needs(pending_points: list, footprints: dict) -> None:
        # After every check passed (a refused sweep prints only its one error line), before the first run.
        for line in grid_needs(all_points, out_dir, pending_points, footprints).lines():
            click.echo(line, err=True)

    dirs = run_sweep(cfg, points_grid, out_dir, resume=resume, executor=executor, progress=not as_json,
                     on_start=None if as_json else say_needs, **options)
    failed = 0
    for d in dirs:
        try:
            m = read_manifest(d)
            if not isinstance(m, dict):
                raise ValueError("not a JSON object")
            status, error = effective_status(m) or "unreadable", m.get("error")
            error = error if isinstance(error, str) else None
        except (OSError, ValueError, AttributeError):
            status, error = "missing", None
        failed += status not in ("complete", "running")  # running: another `--resume` holds it
        was_skipped = d.name in skipped and status == "complete"
        if as_json:
            click.echo(json.dumps({"point_id": d.name, "status": status, "skipped": was_skipped, "run_dir": str(d),
                                   "error": error}))
        else:
            line = f"{'skipped' if was_skipped else status:<11} {d}"
            if was_skipped:
                line += "  (complete before this sweep; --resume kept it)"
            if error:
                line += f"  ({error.splitlines()[0]})"
            click.echo(line)
    if failed:
        raise SystemExit(1)
