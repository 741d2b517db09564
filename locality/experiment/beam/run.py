"""One `locality beam` run: the run directory, the VM's lifetime, signals, the files written."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from locality.errors import Unsupported
from locality.experiment import store
from locality.experiment.beam.config import LATENCY_SAMPLE_MAX, BeamConfig
from locality.experiment.beam.metrics import _measure
from locality.experiment.beam.vm import BeamVM, find_escript

def swap_is_on() -> bool:
    from locality.kernel.swap import swap_active

    return bool(swap_active())



def run_beam(config: BeamConfig, out: str | os.PathLike, *, run_id: str | None = None,
             progress: bool = True, on_event: Callable[[str], None] | None = None) -> Path:
    """Start the VM, spawn, measure, store a run directory of kind "beam", return it."""
    find_escript()  # fail before creating anything
    if config.pageout_watch and not swap_is_on():
        raise Unsupported("--pageout-watch", "no swap is active, so anonymous pages cannot be paged out",
                          "turn zram swap on first: `locality swap on`")
    with _sigterm_as_interrupt():
        return _run(config, out, run_id, progress, on_event)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends a run like Ctrl-C: marked interrupted, VM killed (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(config: BeamConfig, out: str | os.PathLike, run_id: str | None, progress: bool,
         on_event: Callable[[str], None] | None) -> Path:
    run_dir = store.new_run_dir(out, "beam", run_id)
    from locality.kernel.capabilities import capabilities

    manifest = store.start_manifest("beam", run_dir.name, asdict(config), capabilities())
    store.write_manifest(run_dir, manifest)
    vm: BeamVM | None = None
    try:
        vm = BeamVM(config, start_timeout=60)
        manifest["config"]["pid"] = vm.pid
        manifest["versions"].update(otp_release=vm.hello["otp_release"], erts=vm.hello["erts_version"],
                                    emu_flavor=vm.hello["emu_flavor"])
        store.write_manifest(run_dir, manifest)
        result = _measure(vm, config, progress, on_event or (lambda s: None))
        _write_run(run_dir, result)
        manifest["page_sizes_seen"] = result["page_sizes_seen"]
        manifest.update(status="complete", finished=store.utcnow())
        store.write_manifest(run_dir, manifest)
        return run_dir
    except KeyboardInterrupt:
        manifest.update(status="interrupted", finished=store.utcnow())
        store.write_manifest(run_dir, manifest)
        raise
    except BaseException as e:
        manifest.update(status="failed", error=str(e) or type(e).__name__, finished=store.utcnow())
        store.write_manifest(run_dir, manifest)
        raise
    finally:
        if vm is not None:
            vm.close()



def _write_run(run_dir: Path, result: dict[str, Any]) -> None:
    store.atomic_write_csv(run_dir / "timeline.csv", result["timeline"])
    store.atomic_write_csv(run_dir / "vmas.csv", result["vmas"])
    store.atomic_write_npz(run_dir / "pages.npz", **result["pages"])
    lat = result["latency_ns"]
    if lat.size > LATENCY_SAMPLE_MAX:
        lat = np.random.default_rng(0).choice(lat, LATENCY_SAMPLE_MAX, replace=False)
    store.atomic_write_csv(run_dir / "latency.csv", pd.DataFrame({"latency_ns": lat}))
    store.atomic_write_json(run_dir / "steps.json", result["steps"])
    store.atomic_write_json(run_dir / "beam.json", result["vm"])
    store.atomic_write_json(run_dir / "metrics.json", result["metrics"])
