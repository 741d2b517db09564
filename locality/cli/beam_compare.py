"""`locality beam compare`: the VM techniques side by side, one fresh VM each, one report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from locality.units import SIZE
from locality.experiment.beam.compare import DEFAULT_PROCESSES
from locality.experiment.beam.techniques import describe, registry

_TECHNIQUES_HELP = describe(registry().values(), width=76).replace("\n\n", "\n\n\b\n")


@click.command("compare", help=f"""Run each Erlang VM technique on the same seeded workload and write one report.

Every technique runs in a fresh VM, on the Python harness's own activation
schedule (the ids `locality run` activates with the same seed and pattern),
measured with the same instruments: bytes per column three ways (process_info,
erlang:memory growth, RSS/PSS growth), working set per window (referenced
memory after clear_refs), cold fraction at each window, activation latency
p50/p99 and throughput, and with --swap the page-out-and-watch savings and
refault rate. The report (the same HTML as `locality compare`; `locality
report` renders these runs next to Python runs) opens with a verdict: which
technique wins each question, and at what cost, computed from the runs.

Size: at the default {DEFAULT_PROCESSES:,} columns all 11 techniques took
13.6 minutes on this 2-core machine (measured, load average 3-9 from other
jobs): each runs 61 one-second steps, so that the 60-s window is measured,
plus 5-25 s of spawn and accounting. -n 200000 --duration 21s takes under 5.
The VM is killed on every exit path (Ctrl-C, SIGTERM, a failing technique);
--swap restores the device's prior state on every exit path.

\b
Techniques (compose two with +, e.g. state-off-heap+spawn-order; `allocator`
means every allocator flag set; add your own with --allocator NAME=FLAGS):

\b
{_TECHNIQUES_HELP}

\b
Examples:
  locality beam compare -n 100000 --duration 12s --windows 1,10
  locality beam compare --techniques default,grouped,state-off-heap+spawn-order
  locality beam compare -n 200000 --swap 4G --allocator 'mine=+MHas aobf +MHlmbcs 1024'
""")
@click.option("--processes", "-n", type=click.IntRange(min=1), default=DEFAULT_PROCESSES, show_default=True,
              help="Columns (workers) in each VM: a process each, except for grouped.")
@click.option("--techniques", default="all", show_default=True, metavar="all|T1,T2",
              help="Techniques to run, in this order; the first `default` is the baseline.")
@click.option("--allocator", "allocator_sets", multiple=True, metavar="NAME=FLAGS",
              help="An extra allocator flag set, run as technique allocator:NAME (only +M... flags).")
@click.option("--pattern", type=click.Choice(["uniform", "zipf", "sheet"]), default="sheet", show_default=True,
              help="Activation pattern (the harness's own generator).")
@click.option("--p", "p", type=click.FloatRange(min=0, max=1, min_open=True), default=0.01, show_default=True,
              help="Fraction of columns activated per step.")
@click.option("--steps", type=click.IntRange(min=0), help="Activation steps per technique.")
@click.option("--duration", help="Run each technique this long instead (e.g. 61s); default: the largest window + one interval.")
@click.option("--interval", default="1s", show_default=True, help="Time between steps, and between samples.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the activation schedule.")
@click.option("--windows", default="1,10,60", show_default=True, help="Windows (seconds) of the working set and cold fraction.")
@click.option("--swap", "swap_size", type=SIZE, default=None,
              help="Turn zram swap of SIZE on for the comparison (root), page the VM out each window cycle and "
                   "watch what comes back; the device's prior state is restored afterwards. Swap already on "
                   "(`locality swap on`) is used as it is, with or without --swap.")
@click.option("--runs", "runs_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/beam-compare"),
              show_default=True, help="Runs are stored under RUNS/<UTC time>/<technique>.")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=Path("reports/beam-compare.html"),
              show_default=True, help="HTML report to write.")
@click.option("--json", "as_json", is_flag=True, help="Print the report path, runs and statuses as JSON; no progress.")
def compare(processes: int, techniques: str, allocator_sets: tuple[str, ...], pattern: str, p: float,
            steps: int | None, duration: str | None, interval: str, seed: int, windows: str, swap_size: int | None,
            runs_dir: Path, out: Path, as_json: bool) -> None:
    from locality.cli.beam import _windows
    from locality.units import parse_duration
    from locality.experiment.beam import BeamConfig
    from locality.experiment.beam.compare import CompareInterrupted, compare_techniques
    from locality.experiment.beam.techniques import parse_flag_set, resolve
    from locality.report.html import write_report

    extra = dict(parse_flag_set(text) for text in allocator_sets)
    chosen = resolve(techniques, extra)
    base = BeamConfig(processes=processes, pattern=pattern, p=p, steps=steps,
                      duration=parse_duration(duration, "--duration") if duration is not None else None,
                      interval=parse_duration(interval, "--interval"),
                      seed=seed, windows=_windows(windows), schedule="harness", track_refs=True)
    say = (lambda s: None) if as_json else (lambda s: click.echo(s, err=True))
    try:
        result = compare_techniques(chosen, base, swap_bytes=swap_size, runs=runs_dir, progress=not as_json,
                                    on_event=say)
    except CompareInterrupted as e:
        click.echo(f"locality: interrupted: {e}", err=True)
        sys.exit(130)
    report = write_report(result.reported, out, title=result.title, notes=result.notes, verdict=result.verdict, keep_labels=True)
    if as_json:
        click.echo(json.dumps({
            "report": str(report), "run_root": str(result.run_root),
            "runs": {name: {"run_dir": str(result.runs.get(name, "")), "status": status,
                            "seconds": result.seconds.get(name)} for name, status in result.statuses.items()},
            "interrupted_at": result.interrupted_at, "not_run": result.not_run, "verdict": result.verdict,
        }, sort_keys=True))
    else:
        for name, status in result.statuses.items():
            took = result.seconds.get(name)
            click.echo(f"{status:<11} {name:<24} {f'{took:6.1f} s' if took is not None else '':>8}  "
                       f"{result.runs.get(name, '')}")
        for q in result.verdict.get("questions", []):
            click.echo(f"{q['question']}: {q['winner']} ({q['value']}; {q['versus_baseline']})")
        if result.interrupted_at:
            click.echo(f"interrupted during {result.interrupted_at}; report of the finished techniques:", err=True)
        click.echo(f"report: {report}")
    if result.interrupted_at:
        sys.exit(130)
    if result.failed:
        sys.exit(1)
