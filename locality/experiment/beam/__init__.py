"""The Erlang VM as a measured population: N BEAM processes, watched from outside.

`population.escript` (beside these modules, shipped as package data;
experiments/beam/ links to it) spawns the processes and drives seeded
activation steps; it speaks one JSON object per line on stdout and takes
commands on stdin. This package starts it, asks the
VM for its own accounting (erlang:memory, allocator carriers) and measures
the same VM with the kernel instruments `locality probe` uses: per-VMA
smaps (RSS, PSS, Referenced after clear_refs), pagemap residency, fault
counters, and optionally "page out and watch" (process_madvise
MADV_PAGEOUT, then pages that come back from swap are exactly the pages
the VM accessed). The result is a run directory of kind "beam".

Why not `locality.experiment.probe.probe`: it clears referenced bits at every
sample, while windows of 1, 10 and 60 s need one clear per cycle, read at
each window's end; the per-VMA rows written here (vmas.csv) have the
probe's columns, so the report draws both alike.

The VM is always killed at the end: on error, Ctrl-C and SIGTERM too, and
if locality itself dies, the VM halts on end of stdin.

The package is split by concern: `config` (what runs), `vm` (the VM process),
`classes` (address classes of its mappings), `sampler` (sampling from outside),
`metrics` (spawn accounting and the run's metrics), `run` (one run directory).
"""

from __future__ import annotations

from locality.errors import InvalidArgument, LocalityError, Unsupported
from locality.experiment.beam.classes import classify, grown_at_spawn
from locality.experiment.beam.config import (
    DEFAULT_WINDOWS, DOCUMENTED_FRESH_PROCESS_BYTES, ESCRIPT_NAME, INSTALL_HINT, LATENCY_SAMPLE_MAX, PATTERNS,
    SCHEDULES, STATE_INITS, BeamConfig, BeamError, harness_schedule,
)
from locality.experiment.beam.metrics import SpawnAccount, account_spawn
from locality.experiment.beam.run import run_beam, swap_is_on
from locality.experiment.beam.sampler import Tracked, WindowSampler, drive_steps
from locality.experiment.beam.vm import BeamVM, escript_path, find_escript

__all__ = [
    "DEFAULT_WINDOWS", "DOCUMENTED_FRESH_PROCESS_BYTES", "ESCRIPT_NAME", "INSTALL_HINT", "LATENCY_SAMPLE_MAX",
    "PATTERNS", "SCHEDULES", "STATE_INITS", "BeamConfig", "BeamError", "BeamVM", "InvalidArgument",
    "LocalityError", "SpawnAccount", "Tracked", "Unsupported", "WindowSampler", "account_spawn", "classify",
    "drive_steps", "escript_path", "find_escript", "grown_at_spawn", "harness_schedule", "run_beam",
    "swap_is_on",
]
