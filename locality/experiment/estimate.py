"""The memory a config needs, estimated from measured costs, checked before anything is created.

One estimator for `run`, every `sweep` point and every `compare` layout:

    estimate = pss_empty + MARGIN x workers x bytes_per_worker     population, measured
             + pattern arrays                                      from their dtypes
             + page matrices the parent keeps (pages.npz)          from the sampling plan

``bytes_per_worker`` and ``pss_empty`` are measured: taken from a complete
run under ``out`` with the same layout, scheduler, arena and hugepages, or
else from a calibration run of min(workers, CALIBRATION_WORKERS) workers
(spawn only, no steps, no sampling; about a second; kept in a per-user
cache, see cache_dir). MARGIN (1.25) covers
what stepping adds (objects touched, heap growth). The pattern's arrays are
not in the calibration (it spawns with `uniform`) and can dwarf the
population: `pattern.waves = 1e9` drove a child to 22.7 GiB. So each
pattern's per-step arrays are counted from their element sizes (int64 ids,
float64 weights) and the per-wave Python objects from WAVE_BYTES, checked
against tracemalloc in tests/test_bad_inputs.py.

A config whose lower bound (one 8-byte list slot per worker, plus the
pattern) already exceeds the available memory is refused without a
calibration run, so `workers = 1000000000000` is refused at once.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from locality.errors import LocalityError
from locality.experiment import store
from locality.experiment.config import ExperimentConfig, SheetPattern, ZipfPattern
from locality.experiment.scratch import scratch_directory
from locality.units import format_bytes

MARGIN = 1.25
CALIBRATION_WORKERS = 10_000
# The least any population holds per worker: its slot in the workers list.
MIN_BYTES_PER_WORKER = 8
# Per wave of a sheet pattern: 8 int64/float64 parameters and a size in a list,
# kept for the run (its per-step arrays are freed wave by wave). Measured with
# tracemalloc: ~56 B (tests/test_bad_inputs.py test_pattern_estimate_...).
WAVE_BYTES = 96
# Per activated cell of a sheet step: the cell buffer and the burst rows (kept),
# the step's copy, the stable sort's order, the sorted copy and the result,
# int64 each, and two bool masks (measured 48-50 B).
CELL_BYTES = 7 * 8
# A step's arrays whatever its size (headers, the centres drawn): 14 KB measured at 10k workers.
PATTERN_FIXED = 32 << 10
# Per disc cell (computed once): mgrid's two int64 planes, the bool mask and
# the two int64 offset vectors.
DISC_BYTES = 5 * 8
# Page matrices kept by the sampler: written, resident, swapped bits per page per sample.
PAGE_BITS_PER_SAMPLE = 3


class MemoryBudgetExceeded(LocalityError):
    """A config would need more memory than is available."""


class CalibrationFailed(LocalityError):
    """The short run that measures bytes per worker failed."""


def _kind(cfg: ExperimentConfig) -> tuple:
    return (cfg.layout, cfg.scheduler, cfg.arena, cfg.hugepages)


def stored_footprint(cfg: ExperimentConfig, out: str | os.PathLike, cache: dict) -> tuple[float, int, str] | None:
    """(bytes_per_worker, pss_empty, source) from a complete run of cfg's kind under ``out`` or a
    saved calibration; None if neither exists (nothing is run)."""
    key = _kind(cfg)
    if key in cache:
        return cache[key]
    for d in sorted(Path(out).glob("*/metrics.json")) if Path(out).is_dir() else []:
        try:
            m = json.loads(d.read_text())
            c = store.read_manifest(d.parent)
        except (OSError, ValueError):
            continue
        if not isinstance(m, dict) or not isinstance(c, dict) or not isinstance(c.get("config"), dict):
            continue
        cc = c["config"]
        if c.get("status") == "complete" and m.get("bytes_per_worker") and (
            cc.get("layout"), cc.get("scheduler"), cc.get("arena"), cc.get("hugepages")
        ) == key:
            try:
                cache[key] = (float(m["bytes_per_worker"]), int(m["pss_empty_bytes"]), f"run {d.parent.name}")
            except (KeyError, TypeError, ValueError):
                continue  # an older or damaged run: measure instead
            return cache[key]
    saved = _read_saved().get(_saved_key(key, min(cfg.workers, CALIBRATION_WORKERS)))
    if isinstance(saved, list) and len(saved) == 3:
        cache[key] = (float(saved[0]), int(saved[1]), str(saved[2]))
        return cache[key]
    return None


def measured_footprint(cfg: ExperimentConfig, out: str | os.PathLike, cache: dict) -> tuple[float, int, str]:
    """(bytes_per_worker, pss_empty, source) for cfg's kind of population: stored, or measured now
    by a calibration run of at most CALIBRATION_WORKERS workers."""
    found = stored_footprint(cfg, out, cache)
    if found is not None:
        return found
    from locality.experiment.config import validate
    from locality.experiment.runner import RunFailed, run

    key = _kind(cfg)
    n = min(cfg.workers, CALIBRATION_WORKERS)
    data = cfg.model_dump(mode="json")
    data.update(workers=n, steps=0, duration=None, name=None)
    data["pattern"] = {"name": "uniform"}
    data["sampling"] = {"interval": 0, "pages": False}
    data["reclaim"] = {"policy": "none"}
    with scratch_directory("calibrate") as tmp:
        try:
            run_dir = run(validate(data), tmp, run_id="calibration", progress=False)
        except RunFailed as e:
            # The run the config asks for would fail the same way: say why, not where a deleted temp dir was.
            why = e.message.split("failed: ", 1)[-1]
            raise CalibrationFailed(f"a calibration run of {n:,} workers (layout {cfg.layout}) failed: {why}",
                                    "fix the config; the memory estimate needs this run") from None
        m = json.loads((run_dir / "metrics.json").read_text())
    cache[key] = (max(0.0, float(m["bytes_per_worker"])), int(m["pss_empty_bytes"]),
                  f"calibration run of {n:,} workers, {store.utcnow()}")
    cache.setdefault(_NEW, {})[_saved_key(key, n)] = list(cache[key])
    return cache[key]


# Calibrations are kept per user and machine (LOCALITY_CACHE_DIR, else
# $XDG_CACHE_HOME/locality or ~/.cache/locality), keyed by kind, size, Python
# and locality versions, so the next command does not measure again (a run
# interrupted before it completed leaves no run to take the figure from).
# Written only when the check passes; the message names when it was measured.
SAVED = "calibration.json"
_NEW = "new calibrations"


def cache_dir() -> Path:
    if os.environ.get("LOCALITY_CACHE_DIR"):
        return Path(os.environ["LOCALITY_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "locality"


def _saved_key(kind: tuple, n: int) -> str:
    import socket
    import sys

    from locality import __version__

    python = f"python {sys.version_info[0]}.{sys.version_info[1]}"
    return json.dumps([*kind, n, socket.gethostname(), python, f"locality {__version__}"])


def _read_saved() -> dict[str, Any]:
    try:
        data = json.loads((cache_dir() / SAVED).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save(cache: dict) -> None:
    new = cache.pop(_NEW, None)
    if new:
        try:
            store.atomic_write_json(cache_dir() / SAVED, {**_read_saved(), **new})
        except OSError:
            pass  # measured again next time


def pattern_bytes(cfg: ExperimentConfig) -> int:
    """Peak bytes of the activation pattern's own arrays in the child (see the module docstring)."""
    n, pat = cfg.workers, cfg.pattern
    if isinstance(pat, SheetPattern):
        r = int(math.floor(pat.radius))
        disc = (2 * r + 1) ** 2
        cells = max(pat.p * n, disc) + pat.waves  # every wave fires at least one cell
        return int(PATTERN_FIXED + disc * DISC_BYTES + cells * CELL_BYTES + pat.waves * WAVE_BYTES)
    if isinstance(pat, ZipfPattern):
        # by_rank (int64), the rank weights and their cumulative sum (float64 x 2).
        return 3 * 8 * n
    # uniform / bursty draw without replacement: at worst a permutation of n int64.
    return 8 * n


def sampler_bytes(cfg: ExperimentConfig, population_bytes: float) -> int:
    """The parent's page matrices: 3 bits per tracked page per sample, for the planned samples."""
    s = cfg.sampling
    if s.interval <= 0 or not s.pages:
        return 0
    # Wall time is known for a duration; for steps only the idle part is
    # (the stepping time is what the run measures), so this is a lower bound.
    planned = cfg.duration if cfg.duration is not None else (cfg.steps or 0) * cfg.step_interval
    samples = planned / s.interval + 2
    return int(samples * PAGE_BITS_PER_SAMPLE * (population_bytes / 4096) / 8)


def lower_bound(cfg: ExperimentConfig) -> int:
    """What the config needs at the very least, without measuring anything."""
    return cfg.workers * MIN_BYTES_PER_WORKER + pattern_bytes(cfg)


def estimate_bytes(cfg: ExperimentConfig, out: str | os.PathLike, cache: dict | None = None) -> tuple[int, str]:
    """Estimated peak memory of one run of ``cfg`` and how it was derived (one line)."""
    return estimate_from(cfg, measured_footprint(cfg, out, {} if cache is None else cache))


def estimate_from(cfg: ExperimentConfig, footprint: tuple[float, int, str]) -> tuple[int, str]:
    """Estimated peak memory of one run of ``cfg`` given its kind's (bytes_per_worker, pss_empty, source)."""
    bpw, empty, source = footprint
    population = MARGIN * cfg.workers * bpw
    pat = pattern_bytes(cfg)
    pages = sampler_bytes(cfg, empty + population)
    est = int(empty + population + pat + pages)
    how = f"{cfg.workers:,} workers x {bpw:,.0f} B/worker x {MARGIN} + {format_bytes(empty)} empty interpreter ({source})"
    if pat >= 1 << 20:
        how += f" + {format_bytes(pat)} of {cfg.pattern.name} pattern arrays"
    if pages >= 1 << 20:
        how += f" + {format_bytes(pages)} of page matrices"
    return est, how


def available_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(configs: Sequence[tuple[str, ExperimentConfig]], out: str | os.PathLike, cache: dict | None = None) -> None:
    """Refuse the first config whose estimate exceeds the available memory (one line with both numbers).

    ``configs`` pairs a label for the message ("this run", "sweep point X",
    "layout Y") with its config. Lower bounds are checked for all of them
    before the first calibration run.
    """
    cache = {} if cache is None else cache
    hint = "lower workers (or the pattern's waves/radius), or run it on a bigger machine"
    for label, cfg in configs:
        low, avail = lower_bound(cfg), available_bytes()
        if low > avail:
            raise MemoryBudgetExceeded(
                f"{label} needs at least {format_bytes(low)} ({cfg.workers:,} workers x {MIN_BYTES_PER_WORKER} B + "
                f"{format_bytes(pattern_bytes(cfg))} of {cfg.pattern.name} pattern arrays) but only {format_bytes(avail)} is available",
                hint)
    for label, cfg in configs:
        est, how = estimate_bytes(cfg, out, cache)
        avail = available_bytes()
        if est > avail:
            raise MemoryBudgetExceeded(f"{label} needs about {format_bytes(est)} ({how}) but only {format_bytes(avail)} is available", hint)
        _check_limit(label, cfg, cache)
    _save(cache)


def _check_limit(label: str, cfg: ExperimentConfig, cache: dict) -> None:
    # A cgroup limit below what the empty child already holds kills it at start.
    limit = cfg.reclaim.limit if cfg.reclaim.policy == "cgroup" else None
    if limit is None:
        return
    _, empty, source = cache[_kind(cfg)]
    if limit < empty:
        raise MemoryBudgetExceeded(
            f"{label}: reclaim.limit {format_bytes(limit)} is below the {format_bytes(empty)} an empty child already uses ({source})",
            "raise reclaim.limit")
