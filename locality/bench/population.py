"""`locality bench population`: what an idle worker costs under each scheduler.

Every measurement runs in a FRESH child process (so its RSS delta is clean
and no earlier run's heap is reused), with the garbage collector frozen as
DESIGN.md's baselines were: the child imports everything and builds the
pattern, reads its RSS, spawns N workers (plus a 96-byte-per-worker `slab`
layout for the "lean+slab" row), reads RSS again, then runs rounds of steps of
uniform activation at --activity per step, in rounds alternating timed and
untimed, and reports the median activations/s (time spent waking and
running workers) with and without the latency clock, and p50/p99
wake-to-done latency.

Rows: `asyncio` (Task + Event per worker, the reference), `lean` (bare
suspended coroutines), `lean-await` (async def workers awaiting one shared
awaitable: the measured alternative), `lean+slab` (lean with the state in a
slab arena). Ratios lean/asyncio are printed side by side with the targets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import click

from locality.cli.output import emit, format_option, resolve

from locality.errors import InvalidArgument
from locality.units import parse_counts

SCHEDULERS = ("asyncio", "lean", "lean-await")
TARGET_LEAN_BYTES = 250
TARGET_SPEEDUP = 8.0
TARGET_SLAB_BYTES = 400
TARGET_SPAWN_1M_S = 5.0
MIN_ROUND_ACTIVATIONS = 20_000


# -- child --------------------------------------------------------------------


def measure(n: int, scheduler: str, layout_name: str | None, steps: int, activity: float, seed: int,
            rounds: int = 3, collector: bool = True) -> dict[str, Any]:
    """One measurement in this (fresh) process."""
    import gc

    import numpy as np
    import psutil

    from locality.population import Population, make_pattern

    if layout_name:
        from locality.layouts import make_layout
    proc = psutil.Process()
    pattern = make_pattern("uniform", n, seed=seed, p=activity)
    gc.collect()
    gc.freeze()
    rss_before = proc.memory_info().rss
    t0 = time.perf_counter()
    layout = make_layout(layout_name, n, seed=seed) if layout_name else None
    t1 = time.perf_counter()
    pop = Population(n, scheduler=scheduler, pattern=pattern, seed=seed, layout=layout)
    pop.spawn()
    spawn_s = time.perf_counter() - t1
    layout_s = t1 - t0
    rss_after = proc.memory_info().rss
    if not collector:
        # The cyclic GC is off while stepping: asyncio allocates Futures and
        # Handles per wake-up, and with a million Tasks the collections it
        # triggers cost more than the wake-ups themselves.
        gc.disable()
    pop.run(2)  # warm-up: first wakes allocate caches and specialise the code
    # Rounds alternate timed and untimed so both see the same machine load;
    # each round wakes at least MIN_ROUND_ACTIVATIONS workers so one
    # preemption cannot dominate it. Medians over rounds are reported.
    per_round = max(steps, -(-MIN_ROUND_ACTIVATIONS // max(1, round(activity * n))))
    timed_rounds, untimed_rounds, latencies = [], [], []
    for _ in range(rounds):
        pop.set_latency_every(1)
        timed = pop.run(per_round)
        timed_rounds.append(timed.activations_per_s)
        latencies.append(timed.latency_ns)
        pop.set_latency_every(0)
        untimed_rounds.append(pop.run(per_round).activations_per_s)
    lat = np.concatenate(latencies)
    out = {
        "workers": n,
        "scheduler": scheduler,
        "layout": layout_name,
        "spawn_s": spawn_s,  # the population's workers only
        "layout_s": layout_s,  # building and initialising the layout's state
        "rss_before": rss_before,
        "rss_after": rss_after,
        "bytes_per_worker": (rss_after - rss_before) / n,
        "rounds": rounds,
        "steps": per_round,
        "activations": timed.total_activations,
        "activations_per_s": float(np.median(timed_rounds)),
        "activations_per_s_untimed": float(np.median(untimed_rounds)),
        "activations_per_s_rounds": timed_rounds,
        "activations_per_s_untimed_rounds": untimed_rounds,
        "latency_p50_ns": float(np.percentile(lat, 50)),
        "latency_p99_ns": float(np.percentile(lat, 99)),
        "latency_samples": int(lat.size),
        "clock_ns": timed.timing_overhead_ns,
        "rss_peak": proc.memory_info().rss,
        "numpy": np.__version__,
        "gc_during_steps": collector,
    }
    return out


def _child_main() -> None:
    args = json.loads(sys.argv[1])
    result = measure(**args)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    # Tearing down a million tasks takes longer than the measurement: the
    # process ends here and the kernel frees everything at once.
    os._exit(0)


def run_child(n: int, scheduler: str, layout_name: str | None, steps: int, activity: float, seed: int,
              rounds: int, collector: bool = True) -> dict[str, Any]:
    args = json.dumps({"n": n, "scheduler": scheduler, "layout_name": layout_name, "steps": steps,
                       "activity": activity, "seed": seed, "rounds": rounds, "collector": collector})
    code = "from locality.bench.population import _child_main; _child_main()"
    p = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if p.returncode != 0 or not p.stdout.strip():
        tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"workers": n, "scheduler": scheduler, "layout": layout_name, "error": f"exit {p.returncode}: {tail}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


# -- parent -------------------------------------------------------------------


def _slab_available() -> tuple[bool, str]:
    try:
        from locality.layouts import LAYOUTS

        LAYOUTS["slab"]
        return True, ""
    except Exception as e:  # noqa: BLE001 - any failure means: skip the row with a note
        return False, f"lean+slab skipped: locality.layouts has no usable 'slab' layout ({type(e).__name__}: {e})"


def run_benchmark(sizes: list[int], schedulers: list[str], steps: int, activity: float, seed: int,
                  with_slab: bool, progress: bool, rounds: int = 3, collector: bool = True) -> dict[str, Any]:
    notes: list[str] = []
    plan: list[tuple[int, str, str | None]] = [(n, s, None) for n in sizes for s in schedulers]
    if with_slab:
        ok, why = _slab_available()
        if ok:
            plan += [(n, "lean", "slab") for n in sizes]
        else:
            notes.append(why)
    from locality.progress import progress as progress_bar

    rows = []
    with progress_bar(len(plan), "bench population", "run", enabled=progress, leave=False) as bar:
        for n, sched, layout in plan:
            bar.set_postfix_str(f"{n:,} {sched}{'+' + layout if layout else ''}")
            rows.append(run_child(n, sched, layout, steps, activity, seed, rounds, collector))
            bar.update()
    return {"steps": steps, "rounds": rounds, "activity": activity, "seed": seed, "gc": collector, "rows": rows,
            "notes": notes,
            "comparison": compare(rows), "targets": targets(rows)}


def _row(rows: list[dict], n: int, sched: str, layout: str | None = None) -> dict | None:
    for r in rows:
        if r["workers"] == n and r["scheduler"] == sched and r.get("layout") == layout and "error" not in r:
            return r
    return None


def compare(rows: list[dict]) -> list[dict]:
    out = []
    for n in sorted({r["workers"] for r in rows}):
        a, lean = _row(rows, n, "asyncio"), _row(rows, n, "lean")
        if a and lean:
            out.append({
                "workers": n,
                "bytes_ratio": lean["bytes_per_worker"] / a["bytes_per_worker"],
                "speedup": lean["activations_per_s"] / a["activations_per_s"],
                "speedup_untimed": lean["activations_per_s_untimed"] / a["activations_per_s_untimed"],
                "spawn_ratio": lean["spawn_s"] / a["spawn_s"],
            })
    return out


def targets(rows: list[dict]) -> list[dict]:
    """Each target checked at the largest size where it was measured."""
    out = []
    sizes = sorted({r["workers"] for r in rows}, reverse=True)

    def check(name: str, value: float | None, limit: float, ok: bool | None, n: int | None) -> None:
        out.append({"target": name, "workers": n, "measured": value, "limit": limit, "met": ok})

    lean_n = next((n for n in sizes if _row(rows, n, "lean")), None)
    lean = _row(rows, lean_n, "lean") if lean_n else None
    check("lean bytes per idle worker <= 250", lean and lean["bytes_per_worker"], TARGET_LEAN_BYTES,
          lean and lean["bytes_per_worker"] <= TARGET_LEAN_BYTES, lean_n)
    both = next((n for n in sizes if _row(rows, n, "lean") and _row(rows, n, "asyncio")), None)
    sp = None
    if both:
        lean_b, aio_b = _row(rows, both, "lean"), _row(rows, both, "asyncio")
        # the smaller of the timed and the untimed ratio: the clock must not make the target
        sp = min(lean_b["activations_per_s"] / aio_b["activations_per_s"],
                 lean_b["activations_per_s_untimed"] / aio_b["activations_per_s_untimed"])
    check("lean activations/s >= 8x asyncio", sp, TARGET_SPEEDUP, None if sp is None else sp >= TARGET_SPEEDUP, both)
    slab = _row(rows, 1_000_000, "lean", "slab")
    check("lean + 96 B slab state <= 400 B/worker at 1M", slab and slab["bytes_per_worker"], TARGET_SLAB_BYTES,
          None if slab is None else slab["bytes_per_worker"] <= TARGET_SLAB_BYTES, 1_000_000 if slab else None)
    lean_1m = _row(rows, 1_000_000, "lean")
    check("1M lean spawn < 5 s", lean_1m and lean_1m["spawn_s"], TARGET_SPAWN_1M_S,
          None if lean_1m is None else lean_1m["spawn_s"] < TARGET_SPAWN_1M_S, 1_000_000 if lean_1m else None)
    return out


def _print_report(doc: dict) -> None:
    echo = click.echo
    echo(f"uniform activation at {doc['activity']:.2%} per step, seed {doc['seed']}; each row a fresh process "
         f"(GC frozen after spawn, {'on' if doc['gc'] else 'off'} while stepping); act/s = median of {doc['rounds']} rounds of >= {doc['steps']} steps "
         f"and >= {MIN_ROUND_ACTIVATIONS:,} activations, timed and untimed alternating")
    head = f"{'workers':>10} {'scheduler':<14} {'spawn s':>8} {'layout s':>8} {'B/idle worker':>14} {'act/s':>12} " \
           f"{'untimed act/s':>14} {'p50 us':>8} {'p99 us':>8}"
    echo(head)
    echo("-" * len(head))
    for r in doc["rows"]:
        name = r["scheduler"] + ("+" + r["layout"] if r.get("layout") else "")
        if "error" in r:
            echo(f"{r['workers']:>10,} {name:<14} failed: {r['error']}")
            continue
        layout_s = f"{r['layout_s']:.2f}" if r.get("layout") else "-"
        echo(f"{r['workers']:>10,} {name:<14} {r['spawn_s']:>8.2f} {layout_s:>8} {r['bytes_per_worker']:>14.0f} "
             f"{r['activations_per_s']:>12,.0f} {r['activations_per_s_untimed']:>14,.0f} "
             f"{r['latency_p50_ns'] / 1e3:>8.2f} {r['latency_p99_ns'] / 1e3:>8.2f}")
    clocks = [r["clock_ns"] for r in doc["rows"] if "clock_ns" in r]
    if clocks:
        echo(f"latency clock: one perf_counter_ns reading costs {min(clocks):.0f}-{max(clocks):.0f} ns "
             "(included in each latency; 'untimed' re-runs the steps without it)")
    if doc["comparison"]:
        echo("")
        echo(f"{'workers':>10} {'lean/asyncio bytes':>19} {'lean/asyncio act/s':>19} {'(untimed)':>10} {'spawn':>7}")
        for c in doc["comparison"]:
            echo(f"{c['workers']:>10,} {c['bytes_ratio']:>19.3f} {c['speedup']:>18.1f}x {c['speedup_untimed']:>9.1f}x "
                 f"{c['spawn_ratio']:>7.3f}")
    echo("")
    for t in doc["targets"]:
        if t["met"] is None:
            echo(f"  [not measured] {t['target']}")
            continue
        where = f" at {t['workers']:,} workers" if t["workers"] else ""
        echo(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: measured {t['measured']:,.2f}{where}")
    for note in doc["notes"]:
        echo(f"note: {note}")


@click.command(name="population")
@click.option("--sizes", default="10k,100k,1M", show_default=True,
              help="Population sizes, comma separated (k and M suffixes).")
@click.option("--schedulers", default=",".join(SCHEDULERS), show_default=True,
              help="Schedulers to measure, comma separated.")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(min=1),
              help=f"Steps per round (more when needed to reach {MIN_ROUND_ACTIVATIONS:,} activations).")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(min=1),
              help="Rounds per measurement, timed and untimed alternating; medians are printed.")
@click.option("--activity", default=0.01, show_default=True, type=click.FloatRange(min=0, max=1, min_open=True),
              help="Fraction of workers woken per step (uniform pattern).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the activation pattern.")
@click.option("--slab/--no-slab", default=True, show_default=True,
              help="Also measure lean with a 96-byte state per worker in a slab layout.")
@click.option("--gc", "collector", type=click.Choice(["on", "off"]), default="on", show_default=True,
              help="Cyclic garbage collector while stepping (objects made at spawn are frozen either way). "
                   "'off' matches DESIGN.md's asyncio baseline; asyncio at 1M runs several times faster without it.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of the table (no progress bar).")
@format_option
def command(sizes: str, schedulers: str, steps: int, rounds: int, activity: float, seed: int, slab: bool,
            collector: str, fmt: str | None, as_json: bool) -> None:
    """Bytes per idle worker, spawn time, activations/s and latency of each scheduler.

    Each (size, scheduler) is measured in a fresh child process; the 1M
    asyncio row needs about 2.2 GB and a minute. Targets (DESIGN.md): lean
    at most 250 B per idle worker and at least 8x asyncio's activations/s;
    lean with a 96-byte slab state at most 400 B/worker at 1M; 1M lean
    spawn under 5 s.
    """
    from locality.population import SCHEDULERS as KNOWN

    size_list = parse_counts(sizes, "--sizes")
    names = [s.strip() for s in schedulers.split(",") if s.strip()]
    for s in names:
        if s not in KNOWN:
            raise InvalidArgument(f"--schedulers: unknown scheduler {s!r}", f"use any of: {', '.join(KNOWN)}")
    fmt = resolve(fmt, as_json)
    doc = run_benchmark(size_list, names, steps, activity, seed, slab, progress=fmt == "text", rounds=rounds,
                        collector=collector == "on")
    emit(doc, fmt, _print_report)
