"""Stored runs as the report sees them: read-only, tolerant of what a run lacks.

A run directory (format: docs/internals.md) may be complete, interrupted,
failed, or a probe/BEAM run without worker metrics. Every file except the
manifest is optional here: a figure whose data is missing is omitted with a
note, never filled in. A file that exists but cannot be parsed is an error
naming the file, since silently skipping it would hide a broken run.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from locality.errors import LocalityError
from locality.experiment import store
from locality.experiment.appendstore import CHUNKS, read_pages, read_timeline


class RunNotFound(LocalityError):
    """A path given as a run is not a run directory."""


class CorruptRun(LocalityError):
    """A run file exists but cannot be read."""


@dataclass
class Pages:
    """Page x time matrices of one run (pages.npz).

    Matrices stay bit-packed until a figure asks for them: a million-page run
    with hundreds of samples is hundreds of MB once unpacked, and most figures
    need one matrix, or only its last row.
    """

    t: np.ndarray
    page_addr: np.ndarray
    region: np.ndarray
    regions: list[str]
    packed: dict[str, np.ndarray] = field(default_factory=dict)
    state: np.ndarray | None = None  # bool per page: holds worker state (runs since state pages are measured)
    portion: np.ndarray | None = None  # int8 per page: index into portion_names (runs since portions are measured)
    portion_names: list[str] = field(default_factory=list)
    _unpacked: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def n_pages(self) -> int:
        return int(self.page_addr.shape[0])

    def matrix(self, name: str) -> np.ndarray | None:
        """samples x pages bool matrix ``name`` (written, resident, swapped), or None if not stored."""
        if name not in self.packed:
            return None
        if name not in self._unpacked:
            self._unpacked[name] = store.unpack_bits(self.packed[name], self.n_pages)
        return self._unpacked[name]

    def last_row(self, name: str) -> np.ndarray | None:
        """The last sample of matrix ``name`` without unpacking the others."""
        if name not in self.packed:
            return None
        if name in self._unpacked:
            return self._unpacked[name][-1]
        return store.unpack_bits(self.packed[name][-1:], self.n_pages)[0]

    @property
    def written(self) -> np.ndarray | None:
        return self.matrix("written")

    @property
    def resident(self) -> np.ndarray | None:
        return self.matrix("resident")

    @property
    def swapped(self) -> np.ndarray | None:
        return self.matrix("swapped")


@dataclass
class RunData:
    path: Path
    manifest: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    timeline: pd.DataFrame | None = None
    pages: Pages | None = None
    latency_ns: np.ndarray | None = None
    label: str = ""
    vma_timeline: pd.DataFrame | None = None  # one row per (sample, VMA): probe timeline.csv or beam vmas.csv
    # The run its ratios are taken against (its group's baseline, report/groups.py); None: the report's first.
    group_baseline: "RunData | None" = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return str(self.manifest.get("id") or self.path.name)

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind", "run"))

    @property
    def status(self) -> str:
        return str(self.manifest.get("status", "unknown"))

    @property
    def error(self) -> str | None:
        return self.manifest.get("error")

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.manifest.get("config") or {})

    @property
    def page_size(self) -> int:
        return int((self.manifest.get("machine") or {}).get("page_size") or 4096)

    @property
    def layout(self) -> str | None:
        value = self.metrics.get("layout") or find_key(self.config, "layout")
        if isinstance(value, dict):
            value = value.get("name")
        return None if value is None else str(value)

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def find_key(tree: Any, key: str) -> Any:
    """First value of ``key`` in a nested config dict (depth first), or None.

    The report must not depend on the exact nesting of the runner's config
    schema, only on the key names of the contract (layout, pattern, ...).
    """
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for value in tree.values():
            found = find_key(value, key)
            if found is not None:
                return found
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise CorruptRun(f"cannot read {path}: {e}", "re-run it, or leave it out of the report") from None
    if not isinstance(data, dict):
        raise CorruptRun(f"{path} is not a JSON object", "re-run it, or leave it out of the report")
    return data


def _read_csv(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    try:
        return read_timeline(path)  # any CSV of a run: a torn last row (a killed writer) is left out
    except (OSError, ValueError) as e:
        raise CorruptRun(f"cannot read {path}: {e}", "re-run it, or leave it out of the report") from None


def _read_pages(path: Path) -> Pages | None:
    """pages.npz at ``path``, or the chunks beside it merged (a runner that died before writing it)."""
    try:
        z = read_pages(path.parent)
        if z is None:
            return None
        if not path.exists():
            path = path.parent / CHUNKS  # named in errors
        names = set(z)
        page_addr = np.asarray(z["page_addr"], dtype=np.uint64)
        n_pages = int(z["n_pages"]) if "n_pages" in names else int(page_addr.shape[0])
        if n_pages != page_addr.shape[0]:
            raise ValueError(f"n_pages {n_pages} != {page_addr.shape[0]} page addresses")
        t = np.asarray(z["t"], dtype=np.float64)
        packed = {}
        for name in ("written", "resident", "swapped"):
            if name in names:
                m = z[name]
                if m.ndim == 2 and m.shape[0] > 0:
                    if m.shape != (t.shape[0], (n_pages + 7) // 8):
                        raise ValueError(f"{name} has shape {m.shape}, expected ({t.shape[0]}, {(n_pages + 7) // 8})")
                    packed[name] = m
        state = None
        if "state" in names:
            bits = np.asarray(z["state"], dtype=np.uint8)
            if bits.shape != ((n_pages + 7) // 8,):
                raise ValueError(f"state has shape {bits.shape}, expected ({(n_pages + 7) // 8},)")
            state = np.unpackbits(bits, count=n_pages).astype(bool)
        portion = None
        if "portion" in names:
            portion = np.asarray(z["portion"], dtype=np.int8)
            if portion.shape != (n_pages,):
                raise ValueError(f"portion has shape {portion.shape}, expected ({n_pages},)")
        return Pages(
            portion=portion,
            portion_names=[str(p) for p in z["portion_names"]] if "portion_names" in names else [],
            t=t,
            page_addr=page_addr,
            region=np.asarray(z["region"], dtype=np.int64) if "region" in names else np.zeros(n_pages, np.int64),
            regions=[str(r) for r in z["regions"]] if "regions" in names else ["tracked"],
            packed=packed,
            state=state,
        )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise CorruptRun(f"cannot read {path}: {e}", "re-run it, or leave it out of the report") from None


def load_run_data(path: str | Path) -> RunData:
    """Everything the report can use from one run directory."""
    path = Path(path)
    if not path.is_dir():
        raise RunNotFound(f"no run directory at {path}", "pass directories written by `locality run`, `probe`, `compare` or `beam`")
    if not (path / "manifest.json").exists():
        raise RunNotFound(f"{path} is not a run directory (no manifest.json)", "pass directories written by `locality run`, `probe`, `compare` or `beam`")
    manifest = _read_json(path / "manifest.json")
    if isinstance(manifest, dict) and manifest.get("status") == "running":
        manifest["status"] = store.effective_status(manifest)  # "crashed" if its runner is dead
    metrics = _read_json(path / "metrics.json") if (path / "metrics.json").exists() else {}
    latency = _read_csv(path / "latency.csv")
    latency_ns = None
    if latency is not None and "latency_ns" in latency and len(latency):
        latency_ns = latency["latency_ns"].to_numpy(dtype=np.float64)
    timeline = _read_csv(path / "timeline.csv")
    if timeline is not None and "vma" in timeline:
        vma_timeline = timeline
    else:
        vma_timeline = _read_csv(path / "vmas.csv")
        if vma_timeline is not None and "vma" not in vma_timeline:
            vma_timeline = None
    return RunData(
        path=path,
        manifest=manifest,
        metrics=metrics,
        vma_timeline=vma_timeline,
        timeline=timeline,
        pages=_read_pages(path / "pages.npz"),
        latency_ns=latency_ns,
    )


def label_runs(runs: list[RunData]) -> list[RunData]:
    """Give each run a short unique label: its layout if unique, else its id.

    Probe and BEAM runs are labelled by what they watched.
    """
    def base(run: RunData) -> str:
        if run.kind == "beam" and run.metrics.get("technique"):
            return f"beam {run.metrics['technique']}"
        if run.kind in ("probe", "beam"):
            pid = find_key(run.config, "pid")
            return f"{run.kind} {pid}" if pid is not None else run.kind
        return run.layout or run.id

    bases = [base(r) for r in runs]
    for run, name in zip(runs, bases):
        run.label = name if bases.count(name) == 1 else f"{name} [{run.id}]"
    return runs


@dataclass
class Found:
    """What a search of run trees found: runs to report and directories left out, with why."""

    runs: list[RunData] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    searched: list[Path] = field(default_factory=list)  # directories searched (not runs themselves)

    def summary(self) -> str | None:
        """One sentence for the report and the terminal, or None if nothing was searched."""
        if not self.searched:
            return None
        where = ", ".join(str(p) for p in self.searched)
        text = f"Found {len(self.runs)} run{'s' if len(self.runs) != 1 else ''} under {where} (searched recursively)"
        if not self.skipped:
            return text + "; skipped none."
        shown = "; ".join(f"{p} ({why})" for p, why in self.skipped[:10])
        more = f"; and {len(self.skipped) - 10} more" if len(self.skipped) > 10 else ""
        return f"{text}; skipped {len(self.skipped)}: {shown}{more}."


def _walk(root: Path, found: Found) -> None:
    """Every run directory below ``root`` (not descending into runs), in sorted order.

    Hidden entries are run directories still being created or replaced: not looked at."""
    try:
        children = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError as e:
        found.skipped.append((root, f"cannot list: {e.strerror}"))
        return
    for d in children:
        if (d / "manifest.json").is_file():
            try:
                found.runs.append(load_run_data(d))
            except LocalityError as e:
                found.skipped.append((d, e.message))
        elif any(c.is_dir() for c in d.iterdir()):
            _walk(d, found)
        else:
            found.skipped.append((d, "no manifest.json: not a run directory"))


def find_runs(paths: Iterable[str | Path]) -> Found:
    """Runs named or found below the given paths.

    A run directory given by name must be readable (errors name the file);
    a directory that is not a run stands for every run below it, at any
    depth (a sweep's out, runs/compare/<time>/, a whole runs/ tree); runs
    there that cannot be read are skipped and named with the reason.
    """
    found = Found()
    for p in map(Path, paths):
        if p.is_dir() and not (p / "manifest.json").exists():
            before = len(found.runs)
            _walk(p, found)
            found.searched.append(p)
            if len(found.runs) == before and not any(str(s).startswith(str(p)) for s, _ in found.skipped):
                raise RunNotFound(f"{p} is not a run directory (no manifest.json) and holds no runs",
                                  "pass directories written by `locality run`, `probe`, `compare` or `beam`")
            continue
        found.runs.append(load_run_data(p))
    if not found.runs:
        raise RunNotFound("no run directories given" if not found.searched else
                          f"no readable run under {', '.join(map(str, found.searched))}: {found.summary()}",
                          "pass one or more run directories, e.g. runs/compare/*")
    label_runs(found.runs)
    return found


def load_runs(paths: Iterable[str | Path]) -> list[RunData]:
    return find_runs(paths).runs


def baseline_index(runs: list[RunData]) -> int:
    """The baseline: the first usable `objects` run, else the first usable run."""
    usable = [i for i, r in enumerate(runs) if r.metrics and r.status != "failed"]
    for i in usable:
        if runs[i].layout == "objects":
            return i
    return usable[0] if usable else 0
