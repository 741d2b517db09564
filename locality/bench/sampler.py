"""`locality bench sampler`: what sampling from outside costs the sampled population.

The same seeded workload runs as full `locality run`s, alternately with the
sampler on (write tracking registered in the child, PAGEMAP_SCAN + pagemap
+ smaps_rollup from the parent every INTERVAL) and off (no registration, no
sampling). The child counts its own activations and the time spent inside
``Population.step``; the ratio of activations/s on / off is the overhead.
Pairs alternate (off, on, on, off, ...) so drift on a shared machine hits
both sides alike; medians and per-pair ratios are printed.
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
from typing import Any

import click

TARGET_DROP_PCT = 2.0


def _count(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a count like 1M or 100k")
    return int(float(m.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()])


def _seconds(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*", text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a duration like 1s or 500ms")
    return float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)


def measure(workers: int, interval: float, duration: float, repeat: int, layout: str, pattern: str,
            progress: bool = True) -> dict[str, Any]:
    from locality.experiment.config import validate
    from locality.experiment.runner import run

    base = {
        "workers": workers,
        "layout": layout,
        "scheduler": "lean",
        "duration": duration,
        "step_interval": 0.0,
        "seed": 7,
        "pattern": {"name": pattern, "p": 0.01},
        "sampling": {"interval": interval, "pages": False, "cold_thresholds": [1.0]},
    }
    on_cfg = validate(base)
    off_cfg = validate({**base, "sampling": {"interval": 0, "pages": False}})
    on, off, pairs = [], [], []
    with tempfile.TemporaryDirectory(prefix="locality-bench-sampler-") as tmp:
        for i in range(repeat):
            order = [("off", off_cfg), ("on", on_cfg)] if i % 2 == 0 else [("on", on_cfg), ("off", off_cfg)]
            got = {}
            for name, cfg in order:
                d = run(cfg, tmp, run_id=f"{name}-{i}", progress=progress)
                m = json.loads((d / "metrics.json").read_text())
                got[name] = m
            on.append(got["on"]["activations_per_s"])
            off.append(got["off"]["activations_per_s"])
            pairs.append(got["on"]["activations_per_s"] / got["off"]["activations_per_s"])
            duty = got["on"]["sampler_overhead_pct"]
    ratio = statistics.median(on) / statistics.median(off)
    return {
        "workers": workers,
        "layout": layout,
        "pattern": pattern,
        "interval_s": interval,
        "duration_s": duration,
        "repeat": repeat,
        "activations_per_s_sampled": on,
        "activations_per_s_unsampled": off,
        "median_sampled": statistics.median(on),
        "median_unsampled": statistics.median(off),
        "ratio": ratio,
        "pair_ratios": pairs,
        "drop_pct": 100.0 * (1 - ratio),
        "target_drop_pct": TARGET_DROP_PCT,
        "sampler_duty_cycle_pct_last": duty,
    }


@click.command("sampler")
@click.option("--workers", default="1M", show_default=True, help="Population size (1M, 100k, 5000).")
@click.option("--interval", default="1s", show_default=True, help="Sampling interval of the sampled runs (1s, 500ms).")
@click.option("--duration", default="15s", show_default=True, help="Length of each run.")
@click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True, help="Pairs of runs (sampled + unsampled).")
@click.option("--layout", default="slab", show_default=True, help="Layout of the population.")
@click.option("--pattern", type=click.Choice(["uniform", "sheet"]), default="uniform", show_default=True, help="Activation pattern (1% per step).")
@click.option("--json", "as_json", is_flag=True, help="Print the measurements as JSON.")
def command(workers: str, interval: str, duration: str, repeat: int, layout: str, pattern: str, as_json: bool) -> None:
    """Activation throughput with sampling every INTERVAL vs without sampling.

    Same seeded workload, runs alternating; prints both medians and their
    ratio (target: at most a 2% drop).
    """
    r = measure(_count(workers), _seconds(interval), _seconds(duration), repeat, layout, pattern, progress=not as_json)
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    click.echo(f"{r['workers']:,} workers, layout {layout}, {pattern} 1%/step, {r['duration_s']:g} s per run, {repeat} pair(s)")
    click.echo(f"  activations/s without sampling  {r['median_unsampled']:>14,.0f}  (median of {', '.join(f'{x:,.0f}' for x in r['activations_per_s_unsampled'])})")
    click.echo(f"  activations/s sampled every {r['interval_s']:g} s {r['median_sampled']:>11,.0f}  (median of {', '.join(f'{x:,.0f}' for x in r['activations_per_s_sampled'])})")
    click.echo(f"  ratio sampled/unsampled         {r['ratio']:>14.4f}  (per pair: {', '.join(f'{x:.4f}' for x in r['pair_ratios'])})")
    verdict = "within" if r["drop_pct"] <= TARGET_DROP_PCT else "ABOVE"
    click.echo(f"  throughput drop                 {r['drop_pct']:>13.2f} %  ({verdict} the {TARGET_DROP_PCT:g}% target)")
