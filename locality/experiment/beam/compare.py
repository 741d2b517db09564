"""`locality beam compare`: every technique on the same seeded workload, one fresh VM each.

Each technique runs the harness's own activation schedule (`--schedule
harness`: the ids `locality run` activates with the same seed and pattern),
measured with the same instruments (referenced memory per window, page-out
and watch when swap is on). Runs are stored under ``runs/<UTC time>/<technique>``;
the verdict (which technique wins each question, and at what cost) is computed
here from the runs' metrics (verdict.py); report/ only renders it, above the
usual tables (the CLI hands both over).

Every exit path kills the VM (run_beam does) and restores swap: Ctrl-C and
SIGTERM stop the comparison and report the techniques that finished; a
technique that fails is a failed row and the others go on.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from locality.experiment.beam.config import BeamConfig
from locality.experiment.beam.run import run_beam
from locality.experiment.beam.techniques import Technique
from locality.experiment.beam.verdict import verdict
from locality.experiment.beam.vm import preflight
from locality.experiment.compare import CompareInterrupted, timestamped_root
from locality.experiment.signals import StopSignals

# All 11 techniques at 1,000,000 columns: 13.6 minutes measured on a 2-core machine (each
# 61 one-second steps plus 5-25 s of spawn and accounting), under the 15 the issue allows.
DEFAULT_PROCESSES = 1_000_000
DEFAULT_WINDOWS = (1.0, 10.0, 60.0)
SEED = 1


@dataclass
class BeamCompareResult:
    run_root: Path
    runs: dict[str, Path]  # technique -> run directory
    statuses: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)
    interrupted_at: str | None = None
    not_run: list[str] = field(default_factory=list)
    title: str = ""
    notes: list[str] = field(default_factory=list)
    verdict: dict[str, Any] = field(default_factory=dict)

    @property
    def reported(self) -> list[Path]:
        """The run directories the report shows: every technique that finished (complete or failed)."""
        return [path for name, path in self.runs.items() if self.statuses.get(name) in ("complete", "failed")]

    @property
    def failed(self) -> list[str]:
        return [name for name, status in self.statuses.items() if status == "failed"]


def run_id(technique: str) -> str:
    return technique.replace(":", "-").replace("+", "_")


def technique_configs(techniques: Sequence[Technique], base: BeamConfig) -> dict[str, BeamConfig]:
    """Each technique's config on the shared workload, checked by the VM itself before anything runs."""
    configs = {t.name: t.config(base) for t in techniques}
    for config in configs.values():
        preflight(config)
    return configs


@contextlib.contextmanager
def swap_for_comparison(size_bytes: int | None) -> Iterator[bool]:
    """Swap for the block, as `locality compare` has it: yields whether swap is on.

    zram swap is turned on when ``size_bytes`` is given and none is active; active swap
    (`locality swap on`, the machine's own, or a concurrent compare's) is used as it is.
    Either way the block is registered as a user of it (kernel.swap.shared_zram_swap), so
    whoever turned it on does not turn it off under us, and the last user to leave
    restores the device's prior state, on every way out."""
    from locality.kernel.swap import ZRAM_SYSFS, shared_zram_swap, swap_active

    active = bool(swap_active())
    if active and not (os.geteuid() == 0 and ZRAM_SYSFS.is_dir()):
        yield True  # someone else's swap, which we could not turn off anyway
    elif active or size_bytes:
        with shared_zram_swap(size_bytes):  # refuses with the fix if it cannot turn swap on
            yield True
    else:
        yield False


def compare_techniques(
    techniques: Sequence[Technique],
    base: BeamConfig,
    *,
    swap_bytes: int | None = None,
    runs: str | Path = "runs/beam-compare",
    progress: bool = True,
    on_event: Callable[[str], None] | None = None,
) -> BeamCompareResult:
    """Run each technique in a fresh VM on ``base``'s workload; the runs, and the verdict to report."""
    say = on_event or (lambda s: None)
    base = replace(base, schedule="harness", track_refs=True)
    configs = technique_configs(techniques, base)  # refused flags: an error before any run
    # SIGINT/SIGTERM, during a technique or between two, stop the comparison after the current
    # technique (stored interrupted, its VM killed) and report what finished.
    with StopSignals() as stop, swap_for_comparison(swap_bytes) as swap_on:
        run_root = timestamped_root(runs)
        dirs: dict[str, Path] = {}
        statuses: dict[str, str] = {}
        seconds: dict[str, float] = {}
        interrupted_at = None
        for t in techniques:
            if stop.signum is not None:  # arrived between two techniques
                interrupted_at = t.name
                break
            config = replace(configs[t.name], pageout_watch=swap_on)
            say(f"technique {t.name}: {config.processes:,} columns, {config.n_steps} steps")
            t0 = time.monotonic()
            try:
                dirs[t.name] = run_beam(config, run_root, run_id=run_id(t.name), progress=progress, on_event=say)
                statuses[t.name] = "complete"
            except KeyboardInterrupt:
                interrupted_at = t.name
                _record(run_root, t.name, dirs, statuses)
                break
            except Exception as e:  # a failing technique is a failed row; the others go on
                say(f"technique {t.name} failed: {e}")
                _record(run_root, t.name, dirs, statuses)
                statuses[t.name] = "failed"
            seconds[t.name] = time.monotonic() - t0
    names = [t.name for t in techniques]
    not_run = names[names.index(interrupted_at) + 1:] if interrupted_at else []
    result = BeamCompareResult(run_root, dirs, statuses, seconds, interrupted_at, not_run)
    if not result.reported:
        raise CompareInterrupted(f"interrupted during {interrupted_at} before any technique finished",
                                 f"runs so far are in {run_root}")
    result.title = f"locality beam compare: {len(result.reported)} techniques, {base.processes:,} columns, {base.pattern}"
    result.notes = _notes(base, swap_on, interrupted_at, not_run)
    result.verdict = verdict({name: json.loads((dirs[name] / "metrics.json").read_text()) for name in names
                              if statuses.get(name) == "complete" and (dirs[name] / "metrics.json").exists()})
    return result


def _record(run_root: Path, name: str, dirs: dict[str, Path], statuses: dict[str, str]) -> None:
    path = run_root / run_id(name)
    if (path / "manifest.json").exists():
        dirs[name] = path
    statuses[name] = "interrupted"


def _notes(base: BeamConfig, swap_on: bool, interrupted_at: str | None, not_run: Sequence[str]) -> list[str]:
    notes = [f"Same workload for every technique: {base.processes:,} columns, pattern {base.pattern} "
             f"(p = {base.p:g}), the Python harness's schedule (seed {base.seed}), {base.n_steps} steps "
             f"{base.interval:g} s apart, a fresh Erlang VM per technique, referenced memory read after "
             f"{', '.join(f'{w:g}' for w in base.windows)} s"
             + ("; swap on: the VM's anonymous memory paged out at every window cycle and watched." if swap_on
                else "; no swap, so nothing was paged out (give --swap SIZE).")]
    if interrupted_at:
        notes.append(f"Interrupted during {interrupted_at}; this report shows the techniques that had finished."
                     + (f" Not run: {', '.join(not_run)}." if not_run else ""))
    return notes
