"""`locality beam`: an Erlang VM with many processes, measured like a run."""

from __future__ import annotations

import json
from pathlib import Path

import click

from locality.cli import finite
from locality.errors import InvalidArgument
from locality.units import parse_duration


@click.group("beam", invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
@click.option("--processes", "-n", type=click.IntRange(min=1), default=1_000_000, show_default=True,
              help="Erlang processes to spawn (each holds ~300 bytes of state).")
@click.option("--pattern", type=click.Choice(["uniform", "zipf", "sheet"]), default="sheet", show_default=True,
              help="Which processes each step activates: uniform random, zipf-skewed ids, or local "
                   "bursts on a ceil(sqrt(N)) square sheet.")
@click.option("--p", "p", type=click.FloatRange(min=0, max=1, min_open=True), default=0.01, show_default=True, callback=finite,
              help="Fraction of processes activated per step.")
@click.option("--steps", type=click.IntRange(min=0), help="Activation steps to run.")
@click.option("--duration", help="Run for this long instead of --steps (e.g. 70s); default: the largest window plus one interval.")
@click.option("--interval", default="1s", show_default=True, help="Time between steps, and between samples.")
@click.option("--hibernate", is_flag=True, help="Idle processes wait hibernated (erlang:hibernate/3): heap compacted, stack dropped.")
@click.option("--min-heap-size", type=click.IntRange(min=0), default=0, show_default=True,
              help="min_heap_size in words for spawned processes (0: the VM default, 233).")
@click.option("--schedule", type=click.Choice(["vm", "harness"]), default="vm", show_default=True,
              help="Who draws the activated ids: the VM (rand exsss, seeded) or the Python harness's own "
                   "pattern generator (identical ids to `locality run` with the same seed and pattern).")
@click.option("--state-init", type=click.Choice(["heap", "bif"]), default="heap", show_default=True,
              help="How each process builds its state: heap (arithmetic, on its heap) or bif (float/1, "
                   "which leaves a ~4 KB heap fragment per idle process that process_info does not count).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the activation schedule (rand exsss).")
@click.option("--radius", type=click.IntRange(min=0), default=3, show_default=True, help="Burst radius of the sheet pattern.")
@click.option("--windows", default="1,10,60", show_default=True,
              help="Windows (seconds) over which untouched memory is measured, comma separated.")
@click.option("--track-refs", is_flag=True,
              help="Measure referenced memory per window: WRITES the VM's /proc/PID/clear_refs.")
@click.option("--pageout-watch", is_flag=True,
              help="Page the VM's anonymous memory out (needs swap: `locality swap on`), then watch which "
                   "pages come back: exactly the accessed ones, with their refault cost.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"), show_default=True,
              help="Directory the run directory is created in.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON (no progress bar).")
def beam(ctx: click.Context, processes: int, pattern: str, p: float, steps: int | None, duration: str | None,
         interval: str, hibernate: bool, min_heap_size: int, schedule: str, state_init: str, seed: int, radius: int,
         windows: str, track_refs: bool, pageout_watch: bool, out: Path, as_json: bool) -> None:
    """Start an Erlang VM with N processes, drive sparse activation, and measure it.

    The VM (Debian: `apt-get install erlang-nox`) runs the shipped
    population.escript; locality probes it from outside with the same
    instruments as `locality probe` (per-VMA RSS/PSS, referenced memory with
    --track-refs, page residency, faults) and asks the VM for its own
    accounting (erlang:memory, allocator carriers). It reports bytes per
    process three ways (process_info, erlang:memory(processes) growth, and
    the VM's RSS/PSS growth at spawn) and where they differ, how much memory
    stays untouched per window, and which regions are hot. The run is stored
    under --out as kind "beam", so `locality report` shows it next to Python
    runs. The VM is killed at the end, also on error, Ctrl-C and SIGTERM.

    `locality beam compare` runs the VM techniques side by side (see its --help).

    \b
    Examples:
      locality beam -n 100000 --steps 10 --interval 500ms --track-refs --windows 1,5
      locality beam --hibernate --track-refs --duration 70s      # 1M processes
      locality swap on && locality beam -n 100000 --pageout-watch; locality swap off
      locality beam compare -n 100000 --techniques default,hibernate,grouped
    """
    if ctx.invoked_subcommand is not None:
        return
    from locality.experiment.beam import BeamConfig, run_beam
    from locality.experiment.outputs import check_output_dir

    window_list = _windows(windows)
    config = BeamConfig(
        processes=processes, pattern=pattern, p=p, steps=steps,
        duration=parse_duration(duration, "--duration") if duration is not None else None, interval=parse_duration(interval, "--interval"),
        hibernate=hibernate, min_heap_size=min_heap_size, schedule=schedule, state_init=state_init, seed=seed,
        radius=radius, windows=window_list,
        track_refs=track_refs, pageout_watch=pageout_watch,
    )
    check_output_dir(out, "--out")
    say = (lambda s: None) if as_json else (lambda s: click.echo(s, err=True))
    run_dir = run_beam(config, out, progress=not as_json, on_event=say)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if as_json:
        click.echo(json.dumps({"run_dir": str(run_dir), "metrics": metrics}, sort_keys=True))
        return
    _print_summary(run_dir, metrics)


def _windows(text: str) -> tuple[float, ...]:
    try:
        return tuple(parse_duration(w, "--windows") for w in text.split(",") if w.strip())
    except InvalidArgument:
        raise InvalidArgument(f"--windows must be comma-separated durations, not {text!r}", "e.g. 1,10,60") from None


def _fmt(x: float | None, spec: str = ",.0f") -> str:
    return "n/a" if x is None else format(x, spec)


def _print_summary(run_dir: Path, m: dict) -> None:
    echo = click.echo
    echo(f"run: {run_dir}")
    echo(f"OTP {m['otp_release']} (erts {m['erts_version']}), {m['workers']:,} processes, "
         f"hibernate={m['hibernate']}, spawned in {m['spawn_s']:.2f} s")
    echo("bytes per process:")
    echo(f"  erlang process_info(memory), mean   {_fmt(m['bytes_per_process_erlang']):>10}"
         f"   (documented fresh process: {m['documented_fresh_process_bytes']:,})")
    echo(f"  erlang:memory(processes) growth / N {_fmt(m['bytes_per_process_vm']):>10}")
    echo(f"  VM RSS growth / N                   {_fmt(m['bytes_per_process_rss']):>10}"
         f"   (RSS/VM = {_fmt(m['rss_vs_vm_ratio'], '.3f')}, "
         f"{'agree within 15%' if m['rss_vs_vm_agree_15pct'] else 'differ by more than 15%: see rss_growth_at_spawn_by_class'})")
    echo(f"  VM PSS growth / N (bytes_per_worker) {_fmt(m['bytes_per_process_pss']):>9}")
    mib = 2**20
    grew = sorted(m["rss_growth_at_spawn_by_class"].items(), key=lambda kv: -kv[1])[:2]
    echo("  RSS grew in: " + "; ".join(f"{name} +{b / mib:,.1f} MiB" for name, b in grew if b > 0))
    allocs = sorted(m["allocator_growth_at_spawn"].items(), key=lambda kv: -kv[1]["carriers_bytes"])[:3]
    echo("  allocators grew: " + "; ".join(
        f"{name} carriers +{g['carriers_bytes'] / mib:,.1f} MiB (blocks +{g['blocks_bytes'] / mib:,.1f})"
        for name, g in allocs if max(g["carriers_bytes"], g["blocks_bytes"]) >= mib // 10))
    if m.get("cold_fraction"):
        parts = ", ".join(f"{k} s: {_fmt(v, '.1%')}" for k, v in m["cold_fraction"].items())
        echo(f"untouched (1 - referenced/resident) per window: {parts}")
    if m.get("untouched_after_pageout"):
        parts = ", ".join(f"{k} s: {_fmt(v, '.1%')}" for k, v in m["untouched_after_pageout"].items())
        echo(f"paged out and not refaulted per window: {parts}; major faults {m['major_faults']:,}")
    hot = next(iter(m.get("referenced_by_class", {}).values()), {})
    if hot:
        echo("referenced per region in the shortest window:")
        for name, r in hot.items():
            if r["rss_bytes"]:
                echo(f"  {name:<72} {r['referenced_bytes'] / 2**20:8.1f} of {r['rss_bytes'] / 2**20:8.1f} MiB")
    echo(f"activation latency p50 {_fmt(m['latency_p50_us'], ',.1f')} us, p99 {_fmt(m['latency_p99_us'], ',.1f')} us; "
         f"{m['activations']:,} activations in {m['steps']} steps; sampler overhead {_fmt(m['sampler_overhead_pct'], '.1f')}%")


def _add_subcommands() -> None:
    from locality.cli.beam_compare import compare

    beam.add_command(compare)


_add_subcommands()
