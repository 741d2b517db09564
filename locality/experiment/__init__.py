"""Experiments: config -> child process -> sampler -> metrics -> run store; sweeps.

``load(run_dir)`` gives a run's timeline as a DataFrame; ``load_run(run_dir)``
everything stored (manifest, metrics, timeline, latencies, page matrices).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from locality.errors import InvalidArgument

__all__ = ["load", "load_run", "Run", "run"]


def _dir(run_dir: str | Path) -> Path:
    d = Path(run_dir)
    if not (d / "manifest.json").is_file():
        raise InvalidArgument(f"{d} is not a run directory (no manifest.json)", "pass a directory under runs/")
    return d


def load(run_dir: str | Path) -> pd.DataFrame:
    """The run's timeline.csv (one row per sample)."""
    d = _dir(run_dir)
    path = d / "timeline.csv"
    if not path.exists():
        return pd.DataFrame(columns=["t", "rss_bytes", "pss_bytes", "swap_bytes"])
    return pd.read_csv(path)


@dataclass
class Run:
    path: Path
    manifest: dict[str, Any]
    metrics: dict[str, Any] | None
    timeline: pd.DataFrame
    latency_ns: np.ndarray = field(repr=False)

    @property
    def status(self) -> str:
        """As stored, except ``crashed`` for a ``running`` run whose runner is dead."""
        from locality.experiment.store import effective_status

        return effective_status(self.manifest) or ""

    @cached_property
    def pages(self) -> dict[str, np.ndarray] | None:
        """pages.npz with the bit matrices unpacked to bool (samples x pages); None if not stored."""
        path = self.path / "pages.npz"
        if not path.exists():
            return None
        with np.load(path) as z:
            data = {k: z[k] for k in z.files}
        n = int(data["n_pages"])
        for k in ("written", "resident", "swapped"):
            if k in data:
                data[k] = np.unpackbits(data[k], axis=1, count=n).astype(bool)
        if "state" in data:  # one bit per page: does it hold worker state
            data["state"] = np.unpackbits(data["state"], count=n).astype(bool)
        return data


def load_run(run_dir: str | Path) -> Run:
    """Everything a run stored; metrics is None when the run stopped before computing them."""
    d = _dir(run_dir)
    with open(d / "manifest.json") as f:
        manifest = json.load(f)
    metrics = None
    if (d / "metrics.json").exists():
        with open(d / "metrics.json") as f:
            metrics = json.load(f)
    lat_path = d / "latency.csv"
    latency = pd.read_csv(lat_path)["latency_ns"].to_numpy() if lat_path.exists() else np.empty(0, np.int64)
    return Run(d, manifest, metrics, load(d), latency)


def run(config: Any, out: Any, *, run_id: str | None = None, progress: bool = True) -> Path:
    """See ``locality.experiment.runner.run``."""
    from locality.experiment.runner import run as _run

    return _run(config, out, run_id=run_id, progress=progress)
