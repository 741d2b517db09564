"""One `locality beam` run: the run directory, the VM's lifetime, signals, the files written."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from locality.errors import Unsupported
from locality.experiment import store
from locality.experiment.beam.config import LATENCY_SAMPLE_MAX, BeamConfig
from locality.experiment.beam.metrics import Measured, measure, result
from locality.experiment.beam.vm import BeamVM, preflight
from locality.experiment.lifecycle import RunLifecycle


def swap_is_on() -> bool:
    from locality.kernel import swap_active

    return bool(swap_active())


def run_beam(config: BeamConfig, out: str | os.PathLike, *, run_id: str | None = None,
             progress: bool = True, on_event: Callable[[str], None] | None = None, replace: bool = False) -> Path:
    """Start the VM, spawn, measure, store a run directory of kind "beam", return it.

    The run lifecycle owns the directory, the manifest and the signals: Ctrl-C or
    SIGTERM stops the run at its next wait or sample, the samples taken so far are
    written, the run is marked interrupted and KeyboardInterrupt raised; the VM is
    killed on every way out.
    """
    preflight(config)  # fail before creating anything: no Erlang, or flags the VM refuses
    if config.pageout_watch and not swap_is_on():
        raise Unsupported("--pageout-watch", "no swap is active, so anonymous pages cannot be paged out",
                          "turn zram swap on first: `locality swap on`")
    from locality.kernel import capabilities

    with RunLifecycle("beam", out, run_id, asdict(config), capabilities=capabilities(), replace=replace) as life:
        _run(life, config, progress, on_event or (lambda s: None))
    assert life.dir is not None
    return life.dir


def _run(life: RunLifecycle, config: BeamConfig, progress: bool, say: Callable[[str], None]) -> None:
    assert life.dir is not None
    stop = lambda: life.stopping  # noqa: E731 - the lifecycle's flag, read at every wait and sample
    vm: BeamVM | None = None
    measured: Measured | None = None
    try:
        vm = BeamVM(config, start_timeout=60, stop=stop)
        life.manifest["config"]["pid"] = vm.pid
        life.manifest["versions"].update(otp_release=vm.hello["otp_release"], erts=vm.hello["erts_version"],
                                         emu_flavor=vm.hello["emu_flavor"])
        life.save()
        measured = Measured(hello=vm.hello)
        measure(vm, config, progress, say, measured, stop=stop)
        done = result(measured, config)
        assert done is not None
        _write_run(life.dir, done)
        life.manifest["page_sizes_seen"] = done["page_sizes_seen"]
    except BaseException:
        if vm is not None:
            vm.close()  # first: nothing below needs the VM
        # Keep every sample taken so far: the files of a complete run, metrics marked incomplete.
        partial = result(measured, config, complete=False) if measured is not None else None
        if partial is not None:
            _write_run(life.dir, partial)
            life.manifest["page_sizes_seen"] = partial["page_sizes_seen"]
        raise
    finally:
        if vm is not None:
            vm.close()


def _write_run(run_dir: Path, result: dict[str, Any]) -> None:
    # An interrupted run may have no sample yet: a table without rows is left out, not
    # written as a CSV without columns (which no reader can parse).
    for name in ("timeline", "vmas"):
        if len(result[name]):
            store.atomic_write_csv(run_dir / f"{name}.csv", result[name])
    store.atomic_write_npz(run_dir / "pages.npz", **result["pages"])
    lat = result["latency_ns"]
    if lat.size > LATENCY_SAMPLE_MAX:
        lat = np.random.default_rng(0).choice(lat, LATENCY_SAMPLE_MAX, replace=False)
    if lat.size:
        store.atomic_write_csv(run_dir / "latency.csv", pd.DataFrame({"latency_ns": lat}))
    store.atomic_write_json(run_dir / "steps.json", result["steps"])
    store.atomic_write_json(run_dir / "beam.json", result["vm"])
    store.atomic_write_json(run_dir / "metrics.json", result["metrics"])
