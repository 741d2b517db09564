"""`locality bench layouts`: every allocation strategy on one seeded workload, side by side.

For each layout, in one process and one run: build it for N workers, drive
the same seeded activation pattern through it for --steps steps while the
kernel's write tracker counts the pages each step writes (see
locality.layouts.measure for exactly what is counted), then replay the same
steps untracked to time the activations.  Printed per layout: state bytes
per worker (mapped, and PSS growth of this process), page utilization beside
its ceiling (each co-activation group of a step packed on pages of its own in
the layout's record packing, layouts/ceiling.py) and its share of it, pages
written per step (WSS per step) against the minimum the useful bytes need,
activations/s, relocation cost (share of the activations' time, from the
untracked replay), and each figure's ratio to `objects`.
The issue's targets are checked against these measured numbers.
"""

from __future__ import annotations

import gc
import itertools
import math
import os
import time
from typing import Any

import click

from locality.cli.output import emit, format_option, resolve
from locality.units import COUNT
import numpy as np

from locality.errors import InvalidArgument

# isolated runs before the objects baseline is built (their memory never
# overlaps); objects then stays alive so every later layout's throughput is
# timed in rounds interleaved with it
ORDER = ["isolated", "objects", "slab", "hot-cold", "clustered", "clustered-learned", "compacting", "grouped"]
SHOW = ["objects", "slab", "hot-cold", "clustered", "clustered-learned", "compacting", "isolated", "grouped"]


def _pss() -> int:
    from locality.kernel import rollup

    return int(rollup(os.getpid())["pss"])


def _population_driver(n: int, pattern, layout):
    """A step function driving ``layout`` through the population's lean scheduler, or None."""
    try:
        from locality.population import Population  # type: ignore[attr-defined]
    except ImportError:
        return None, None, None
    real_maintain = layout.maintain
    # the measurement calls maintain itself, between reading activation pages and relocation pages
    layout.maintain = lambda step, ids=None: 0.0  # type: ignore[method-assign]
    pop = Population(n, scheduler="lean", pattern=pattern, layout=layout)
    pop.spawn()

    def step_fn(_: int) -> np.ndarray:
        result = pop.step()
        if result is None:
            raise StopIteration
        return np.asarray(result.ids)

    def restore() -> None:
        del layout.maintain  # back to the class's method
        pop.close()

    def maintain(step: int, ids=None) -> float:
        # frames follow a moved layout here too, so re-creating them counts as relocation
        return real_maintain(step, ids) + pop._follow_layout_order() / 1e9

    return step_fn, restore, maintain


REPEATS = 3


def _number(text: str) -> Any:
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def _resident_bytes(layout) -> int:
    """Resident bytes of the layout's state: mincore of its arenas; for objects,
    the heap pages holding its objects (all resident: there is no swap by default)."""
    from locality.kernel import mincore

    from locality.layouts import PAGE_SIZE

    if not layout.arenas:
        return int(layout.heap_pages().size) * PAGE_SIZE
    return sum(int(mincore(a.address, a.length).sum()) * PAGE_SIZE for a in layout.arenas.values())


def _reuse(steps: list[np.ndarray], n: int, window: int) -> float:
    """Share of a step's activations whose worker was active within the previous ``window`` steps."""
    last = np.full(n, -(10**9), dtype=np.int64)
    hit = total = 0
    for s, ids in enumerate(steps):
        if s >= window:
            hit += int(np.count_nonzero(last[ids] >= s - window))
            total += ids.size
        last[ids] = s
    return hit / total if total else float("nan")


class _Rounds:
    """Untracked replays of the measured steps, timed; step numbers keep increasing."""

    def __init__(self, layout, steps: list[np.ndarray], start: int) -> None:
        self.layout = layout
        self.steps = steps
        self.next_step = start  # after the steps the measurement drove
        self.best = math.inf
        self.best_relocation = 0.0  # maintain time in the round whose activations were fastest
        self.activations = int(sum(ids.size for ids in steps))

    def round(self, progress=None) -> float:
        from locality.layouts.measure import activate

        t_upd = t_rel = 0.0
        layout = self.layout
        for ids in self.steps:
            t = time.perf_counter()
            activate(layout, ids, self.next_step)
            t_upd += time.perf_counter() - t
            t = time.perf_counter()
            layout.maintain(self.next_step, ids)
            t_rel += time.perf_counter() - t
            self.next_step += 1
            if progress is not None:
                progress(1)
        if t_upd < self.best:
            self.best, self.best_relocation = t_upd, t_rel
        return t_upd

    @property
    def rate(self) -> float:
        return self.activations / self.best if self.best else float("nan")


def run_layout(name: str, n: int, steps: list[np.ndarray], *, warmup: int, window: int, layout_kw: dict, driver: str,
               pattern_factory, progress, baseline: "_Rounds | None" = None, keep: bool = False):
    from locality.layouts import make_layout
    from locality.layouts.measure import measure

    gc.collect()
    pss0 = _pss()
    t0 = time.perf_counter()
    kw = dict(layout_kw)
    if name == "objects":
        kw = {"seed": kw.get("seed", 0)}
    layout = make_layout(name, n, **kw)
    build_s = time.perf_counter() - t0
    try:
        step_fn = restore = real_maintain = None
        used = "direct"
        if driver in ("auto", "population"):
            step_fn, restore, real_maintain = _population_driver(n, pattern_factory(), layout)
            if step_fn is None and driver == "population":
                raise InvalidArgument("locality.population.Population is not available yet", "use --driver direct")
            if step_fn is not None:
                used = "population"
        try:
            m = measure(layout, steps, window=window, step_fn=step_fn, maintain=real_maintain, warmup=warmup,
                        progress=progress)
        finally:
            if restore is not None:
                restore()
        pss1 = _pss()
        resident = _resident_bytes(layout)
        ceil = _ceiling(steps, warmup, n, layout.packing(), kw.get("seed", 0))
        # throughput: replay the same steps untracked (no write-protect faults),
        # best of REPEATS rounds, each round followed by one of the objects
        # baseline (when it is alive) so the ratio is measured side by side
        measured = steps[warmup:]
        rounds = _Rounds(layout, measured, start=len(steps))
        base_best = math.inf
        for _ in range(REPEATS):
            rounds.round(progress)
            if baseline is not None:
                base_best = min(base_best, baseline.round())
        t_upd_tracked = m.total("update_seconds")
        t_rel = m.total("relocation_seconds")
        page_sizes = layout.page_sizes()
        drift = None
        if m.heap_pages is not None:
            # objects: how many pages holding its objects after the run were not in the measured set
            final = layout.heap_pages()
            drift = float(1.0 - np.isin(final, m.heap_pages).mean()) if final.size else 0.0
        row = {
            "layout": name,
            "heap_pages_outside_measured_set": drift,
            "driver": used,
            "build_s": build_s,
            "bytes_per_worker_mapped": layout.arena_bytes() / n,
            "bytes_per_worker_resident": resident / n,
            "bytes_per_worker_pss": (pss1 - pss0) / n,
            "page_utilization": m.page_utilization,
            "page_utilization_ceiling": ceil.utilization,
            "utilization_of_ceiling": m.page_utilization / ceil.utilization,
            "page_utilization_packed": ceil.packed_utilization,
            "packing": list(ceil.packing),
            "wss_pages_per_step": m.wss_pages_per_step,
            "wss_min_pages_per_step": m.wss_min_pages_per_step,
            "wss_window_pages": float(np.mean([w for w, _ in m.windows])) if m.windows else float("nan"),
            "wss_window_min_pages": float(np.mean([x for _, x in m.windows])) if m.windows else float("nan"),
            "wss_window_ratio_to_min": m.wss_window_ratio,
            "activations_per_s": rounds.rate,
            # this layout's best round / the objects rounds interleaved with it
            "throughput_vs_objects_side_by_side": (rounds.rate * base_best / baseline.activations)
            if baseline is not None else None,
            "activations_per_s_tracked": m.activations_per_s,
            "relocation_ms_per_step": 1e3 * t_rel / len(measured),
            # share of step time (activations + maintain), from the fastest untracked round: under write
            # tracking both halves pay write-protect faults, the copy more (it writes whole pages)
            "relocation_pct": 100.0 * rounds.best_relocation / (rounds.best + rounds.best_relocation)
            if rounds.best_relocation and layout.moves else 0.0,
            "relocation_pct_tracked": 100.0 * t_rel / (t_upd_tracked + t_rel) if (t_upd_tracked + t_rel) else 0.0,
            "relocation_pages_per_step": m.total("relocation_pages") / len(measured),
            "cold_touches_per_step": m.total("cold_touches") / len(measured),
            "activations_per_step": m.total("activations") / len(measured),
            "tracked_pages": m.tracked_pages,
            "huge_page_bytes": int(sum(v.get("anon_huge_bytes", 0) for v in page_sizes.values())),
        }
    except BaseException:
        layout.close()
        raise
    if keep:
        return row, rounds
    layout.close()
    del layout, rounds
    gc.collect()
    return row, None


_CEILINGS: dict[tuple, Any] = {}


def _ceiling(steps: list[np.ndarray], warmup: int, n: int, packing: tuple[int, int], seed: int):
    """The per-step utilization ceiling of the measured steps for this record packing (layouts/ceiling.py)."""
    from locality.layouts.ceiling import ceiling

    key = (id(steps), warmup, n, tuple(packing), seed)
    if key not in _CEILINGS:
        _CEILINGS.clear()
        _CEILINGS[key] = ceiling([[s] for s in steps[warmup:]], n, packing, seed=seed, skip=steps[:warmup])
    return _CEILINGS[key]


def _ratios(rows: list[dict]) -> None:
    base = next((r for r in rows if r["layout"] == "objects"), None)
    for r in rows:
        if base is None:
            break
        r["utilization_x_objects"] = r["page_utilization"] / base["page_utilization"]
        r["wss_vs_objects"] = r["wss_pages_per_step"] / base["wss_pages_per_step"]
        side = r.get("throughput_vs_objects_side_by_side")
        r["throughput_vs_objects"] = side if side is not None else r["activations_per_s"] / base["activations_per_s"]


def _targets(rows: list[dict]) -> list[dict]:
    by = {r["layout"]: r for r in rows}
    out = []

    def add(what: str, measured: float, target: str, met: bool) -> None:
        out.append({"target": what, "measured": measured, "goal": target, "met": bool(met)})

    if "clustered" in by and "objects" in by:
        x = by["clustered"]["utilization_x_objects"]
        add("page utilization clustered / objects", x, ">= 20x", x >= 20)
    if "hot-cold" in by and "slab" in by:
        x = by["hot-cold"]["page_utilization"] / by["slab"]["page_utilization"]
        add("page utilization hot-cold / slab", x, ">= 2x", x >= 2)
    if "compacting" in by:
        u = by["compacting"]["page_utilization"]
        add("page utilization compacting", u, ">= 50%", u >= 0.5)
        w = by["compacting"]["wss_pages_per_step"] / by["compacting"]["wss_min_pages_per_step"]
        add("WSS per step compacting / minimum", w, "<= 1.5x", w <= 1.5)
    if "clustered" in by:
        x = by["clustered"]["utilization_of_ceiling"]
        add("page utilization clustered / its ceiling", x, ">= 90%", x >= 0.9)
    if "clustered" in by and "clustered-learned" in by:
        x = by["clustered-learned"]["page_utilization"] / by["clustered"]["page_utilization"]
        add("page utilization clustered-learned / clustered", x, ">= 1x", x >= 1)
    for name in ("compacting", "clustered-learned"):
        if name in by:
            x = by[name]["relocation_pct"] / 100
            add(f"relocation share of step time, {name}", x, "<= 5%", x <= 0.05)
    if "objects" in by and len(by) > 1:
        best = min((r for r in rows if r["layout"] != "objects"), key=lambda r: r["wss_pages_per_step"])
        ws = best["wss_vs_objects"]
        cost = 1.0 - best["throughput_vs_objects"]
        add(f"best WSS ({best['layout']}) / objects", ws, "<= 0.1", ws <= 0.1)
        add(f"throughput cost of {best['layout']} vs objects", cost, "< 5%", cost < 0.05)
    return out


def _fmt(x: float, kind: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if kind == "pct":
        return f"{100 * x:.2f}%"
    if kind == "x":
        return f"{x:.2f}x"
    if kind == "int":
        return f"{x:,.0f}"
    return f"{x:,.1f}"


@click.command(name="layouts")
@click.option("--workers", "-n", type=COUNT, default="1M", show_default=True, help="Workers (250k, 1M, ...).")
@click.option("--steps", type=click.IntRange(1), default=50, show_default=True, help="Measured steps per layout.")
@click.option("--layouts", "names", default=",".join(SHOW), show_default=True,
              help="Comma-separated layouts to compare (objects is the baseline of the ratios).")
@click.option("--pattern", default="sheet", show_default=True, help="Activation pattern (see docs/internals.md).")
@click.option("--p", "p", type=click.FloatRange(0, 1, min_open=True), default=0.01, show_default=True,
              help="Share of workers activated per step.")
@click.option("--param", "pattern_params", multiple=True, metavar="KEY=VALUE",
              help="Another pattern parameter, e.g. radius=16, waves=0 (sheet), s=1.2 (zipf), p_off=0.01 (bursty).")
@click.option("--warmup", type=click.IntRange(0), default=10, show_default=True,
              help="Steps run before the measured ones (moving and learning layouts reach steady state).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--window", type=click.IntRange(1), default=10, show_default=True, help="Steps per WSS window.")
@click.option("--arena", type=click.Choice(["anon", "file"]), default="anon", show_default=True,
              help="Anonymous memory or a file on disk (file: write tracking needs anon or shmem; see docs).")
@click.option("--arena-dir", type=click.Path(file_okay=False), default=None, help="Directory for file arenas.")
@click.option("--hugepages/--no-hugepages", default=False, show_default=True,
              help="Let arenas use transparent huge pages (an experiment axis; off: MADV_NOHUGEPAGE).")
@click.option("--driver", type=click.Choice(["auto", "population", "direct"]), default="auto", show_default=True,
              help="Drive layouts through the population's lean scheduler (auto: when available) or call update directly.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of the table.")
@format_option
def command(workers: int, steps: int, names: str, pattern: str, p: float, pattern_params: tuple[str, ...],
            warmup: int, seed: int, window: int, arena: str, arena_dir: str | None, hugepages: bool, driver: str,
            fmt: str | None, as_json: bool) -> None:
    """Page utilization (and its ceiling), working set and cost of every allocation strategy, side by side.

    All layouts run the same seeded workload in this one process; ratios are
    to `objects` (plain Python objects). Pages written are measured by the
    kernel (userfaultfd write-protect + PAGEMAP_SCAN), activations/s by an
    untracked replay of the same steps.
    """
    from locality.layouts import LAYOUTS
    from locality.population.patterns import PATTERNS, make_pattern

    wanted = [s.strip() for s in names.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in LAYOUTS]
    if unknown or not wanted:
        raise InvalidArgument(f"unknown layout {unknown[0]!r}" if unknown else "no layout given",
                              f"choose from: {', '.join(LAYOUTS)}")
    if arena == "file" and arena_dir is not None and not os.path.isdir(arena_dir):
        raise InvalidArgument(f"--arena-dir {arena_dir!r} does not exist", "create it first")
    if pattern not in PATTERNS:
        raise InvalidArgument(f"unknown pattern {pattern!r}", f"choose from: {', '.join(PATTERNS)}")
    known = dict(getattr(PATTERNS[pattern], "PARAMS", {}) or {})
    params: dict[str, Any] = {"p": p} if "p" in known else {}
    for item in pattern_params:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise InvalidArgument(f"bad --param {item!r} for pattern {pattern}",
                                  f"use KEY=VALUE with KEY one of: {', '.join(known) or 'none'}")
        params[key] = _number(value)

    def pattern_factory():
        return make_pattern(pattern, workers, seed, **params)

    total = warmup + steps
    ids_steps = [np.asarray(a, dtype=np.int64) for a in itertools.islice(pattern_factory().steps(), total)]
    if len(ids_steps) < total:
        raise InvalidArgument(f"pattern {pattern!r} yields only {len(ids_steps)} steps",
                              f"use --warmup and --steps adding up to at most {len(ids_steps)}")
    layout_kw = {"arena": arena, "hugepages": hugepages, "seed": seed}
    if arena_dir is not None:
        layout_kw["directory"] = arena_dir

    order = [n for n in ORDER if n in wanted]
    bar = None
    fmt = resolve(fmt, as_json)
    if fmt == "text":
        from locality.progress import progress

        bar = progress((total + REPEATS * steps) * len(order), "layouts", "step", every=10.0, leave=False)
    rows = []
    baseline: _Rounds | None = None
    try:
        for name in order:
            if bar is not None:
                bar.set_postfix_str(name)
            row, kept = run_layout(name, workers, ids_steps, warmup=warmup, window=window, layout_kw=layout_kw,
                                   driver=driver,
                                   pattern_factory=pattern_factory, progress=bar.update if bar else None,
                                   baseline=baseline, keep=name == "objects")
            rows.append(row)
            if kept is not None:
                baseline = kept
    finally:
        if bar is not None:
            bar.close()
        if baseline is not None:
            for r in rows:
                if r["layout"] == "objects":
                    r["activations_per_s"] = baseline.rate  # best of all its rounds
            baseline.layout.close()
            baseline = None
    rows.sort(key=lambda r: wanted.index(r["layout"]) if r["layout"] in wanted else 99)
    rows.sort(key=lambda r: r["layout"] != "objects")
    _ratios(rows)
    targets = _targets(rows)
    doc = {
        "workers": workers, "steps": steps, "warmup": warmup, "pattern": pattern, "pattern_params": params, "seed": seed,
        "window": window, "arena": arena, "hugepages": hugepages,
        "temporal_reuse": _reuse(ids_steps[warmup:] if warmup >= window else ids_steps, workers, window),
        "rows": rows, "targets": targets,
    }
    emit(doc, fmt, _print_table)


def _print_table(doc: dict) -> None:
    rows = doc["rows"]
    has_base = any(r["layout"] == "objects" for r in rows)
    drivers = sorted({r["driver"] for r in rows})
    click.echo(f"{doc['workers']:,} workers, pattern {doc['pattern']} {doc['pattern_params']}, seed {doc['seed']}, "
               f"{doc['steps']} measured steps after {doc['warmup']} warm-up steps, arena {doc['arena']}, driver {'/'.join(drivers)}")
    cols = [
        ("layout", lambda r: r["layout"]),
        ("B/worker map", lambda r: _fmt(r["bytes_per_worker_mapped"], "f")),
        ("B/worker res", lambda r: _fmt(r["bytes_per_worker_resident"], "f")),
        ("page util", lambda r: _fmt(r["page_utilization"], "pct")),
        ("ceiling", lambda r: _fmt(r["page_utilization_ceiling"], "pct")),
        ("of ceiling", lambda r: _fmt(r["utilization_of_ceiling"], "pct")),
        ("x objects", lambda r: _fmt(r.get("utilization_x_objects"), "x") if has_base else "-"),
        ("WSS pages/step", lambda r: _fmt(r["wss_pages_per_step"], "int")),
        ("/objects", lambda r: _fmt(r.get("wss_vs_objects"), "x") if has_base else "-"),
        ("min", lambda r: _fmt(r["wss_min_pages_per_step"], "f")),
        (f"WSS/{doc['window']} steps", lambda r: _fmt(r["wss_window_pages"], "int")),
        ("act/s", lambda r: _fmt(r["activations_per_s"], "int")),
        ("/objects", lambda r: _fmt(r.get("throughput_vs_objects"), "x") if has_base else "-"),
        ("reloc ms/step", lambda r: _fmt(r["relocation_ms_per_step"], "f") if r["relocation_ms_per_step"] else "0"),
        ("reloc %", lambda r: f"{r['relocation_pct']:.1f}%"),
        ("reloc pages/step", lambda r: _fmt(r["relocation_pages_per_step"], "int")),
    ]
    table = [[h for h, _ in cols]] + [[f(r) for _, f in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for k, row in enumerate(table):
        click.echo("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            click.echo("  ".join("-" * w for w in widths))
    if not math.isnan(doc["temporal_reuse"]):
        click.echo(f"temporal reuse of the pattern: {100 * doc['temporal_reuse']:.1f}% of a step's activations were "
                   f"active in the previous {doc['window']} steps")
    for r in rows:
        if r.get("heap_pages_outside_measured_set") is not None:
            click.echo(f"objects: {100 * r['heap_pages_outside_measured_set']:.2f}% of the pages holding its objects "
                       "after the run were outside the page set measured (fixed before the run)")
    for t in doc["targets"]:
        m = t["measured"]
        shown = f"{100 * m:.1f}%" if t["goal"].endswith("%") else f"{m:.3g}x" if t["goal"].endswith("x") else f"{m:.3g}"
        click.echo(f"target {t['target']}: {shown} (goal {t['goal']}) {'met' if t['met'] else 'NOT met'}")
