"""`locality run CONFIG`: one experiment from a TOML config, stored under runs/."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("run")
# readable=False: an unreadable config is reported by load_config as one line.
@click.argument("config", type=click.Path(readable=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value; VALUE is TOML (--set workers=1000 --set pattern.p=0.05). Repeatable.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory that receives the run directory [default: the config's `out`, else runs/].")
@click.option("--id", "run_id", default=None,
              help="Run directory name [default: <layout>-<pattern>-<workers>-<UTC time>]; an existing one is refused.")
@click.option("--replace", is_flag=True, help="Replace an existing run of the same --id (not one still running).")
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json (plus run_dir) at the end; no progress bar.")
def run(config: Path, overrides: tuple[str, ...], out: Path | None, run_id: str | None, replace: bool,
        as_json: bool) -> None:
    """Run the population of CONFIG in a child process and sample it from outside.

    The config is validated before anything starts (a bad key, value or
    replay file exits with status 2 and creates nothing). Every
    `sampling.interval` seconds the parent reads the child's written pages
    (PAGEMAP_SCAN), residency (pagemap) and PSS (smaps_rollup) and applies
    the reclaim policy. Ctrl-C stops the child and keeps a readable run
    marked `interrupted`; a run whose runner was killed reads as `crashed`.
    Files: manifest.json, timeline.csv, pages.npz,
    latency.csv, metrics.json (see docs/internals.md).
    """
    from locality.experiment.config import load_config
    from locality.experiment.runner import run as run_experiment

    from locality.experiment.store import check_run_id

    if run_id is not None:
        check_run_id(run_id)
    cfg = load_config(config, overrides)
    run_dir = run_experiment(cfg, out if out is not None else Path(cfg.out), run_id=run_id, progress=not as_json,
                             replace=replace)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if as_json:
        click.echo(json.dumps({"run_dir": str(run_dir), **metrics}, indent=2, sort_keys=True))
        return
    click.echo(summary(run_dir, metrics))


def _num(v: object, fmt: str, unit: str = "") -> str:
    return "n/a" if v is None else format(v, fmt) + unit


def _portion_lines(m: dict) -> list[str]:
    """The portions with the largest working set, and the largest resident ones (metrics ``portions``)."""
    portions = m.get("portions") or {}
    out = []
    for key, what in (("wss_bytes_mean", "WSS by portion   "), ("resident_bytes", "RSS by portion   ")):
        values = {n: f.get(key) for n, f in portions.items() if isinstance(f.get(key), (int, float)) and f.get(key) > 0}
        total = sum(values.values())
        if total:
            top = sorted(values, key=values.get, reverse=True)[:3]
            out.append(f"  {what}  " + ", ".join(f"{n} {values[n] / 2**20:,.1f} MiB ({values[n] / total:.0%})" for n in top))
    return out


def summary(run_dir: Path, m: dict) -> str:
    cold = ", ".join(f"{k} s: {_num(v, '.1%')}" for k, v in sorted((m.get("cold_fraction") or {}).items(), key=lambda kv: float(kv[0])))
    lines = [
        f"{m['workers']:,} workers, layout {m['layout']}, scheduler {m['scheduler']}, pattern {m['pattern']}, "
        f"{m['steps']:,} steps in {m['duration_s']:.1f} s",
        f"  bytes/worker       {_num(m.get('bytes_per_worker'), ',.0f', ' B')}",
        f"  page utilization   {_num(m.get('state_page_utilization'), '.2%')} of worker-state pages, "
        f"{_num(m.get('page_utilization'), '.2%')} whole process",
        f"  WSS per window     {_num(m.get('state_wss_pages_mean'), ',.0f', ' pages')} of worker state, "
        f"{_num(m.get('wss_pages_mean'), ',.0f', ' pages')} whole process",
        *_portion_lines(m),
        f"  cold fraction      {cold or 'n/a'}",
        f"  refault rate       {_num(m.get('refault_rate_pct_per_min'), ',.2f', ' % of WSS/min')}"
        f"  (major faults {_num(m.get('major_faults_per_min'), ',.1f', '/min')})",
        f"  latency p50 / p99  {_num(m.get('latency_p50_us'), ',.1f')} / {_num(m.get('latency_p99_us'), ',.1f', ' us')}",
        f"  activations/s      {_num(m.get('activations_per_s'), ',.0f')}",
        f"  sampler overhead   {_num(m.get('sampler_overhead_pct'), '.2f', ' % (duty cycle)')}",
        f"run: {run_dir}",
    ]
    return "\n".join(lines)
