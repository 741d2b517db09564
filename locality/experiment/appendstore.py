"""Samples on disk as they are taken, so a runner killed with SIGKILL loses at most the last few seconds.

One mechanism for every kind of run (``run``, ``probe``, ``beam``):

- ``timeline.csv`` (and any other per-sample CSV, e.g. beam's ``vmas.csv``) grows by appended rows. New rows go out in one
  ``write(2)`` on an ``O_APPEND`` descriptor, then ``fsync``; a reader that
  still finds a last line without its newline (power loss, a full disk)
  drops it (``read_timeline``). A row with a column the file's header lacks
  makes the file be rewritten whole (atomically) with the wider header.
- Page matrices go to ``pages/chunk-NNNNN.npz``, each written atomically:
  the rows sampled since the previous chunk (``t`` and the packed bit
  matrices), plus the column description as it is now (``page_addr``,
  ``region``, ``regions``, ``n_pages``, ``state``; a large one only if it
  changed since the chunk that last stored it). Columns only ever grow at
  the end, so a shorter row is a prefix of a longer one. At the end of a run
  the whole ``pages.npz`` is written and ``pages/`` removed; a reader of a
  run without ``pages.npz`` merges the chunks (``read_pages``).

``AppendStore.due(now)`` says when the interval (``FLUSH_EVERY_S``) is up.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from locality.experiment import store

FLUSH_EVERY_S = 2.0
CHUNKS = "pages"  # the directory of page-matrix chunks inside a run directory


class AppendStore:
    """The growing files of one run directory (see the module docstring)."""

    def __init__(self, run_dir: str | os.PathLike, every: float = FLUSH_EVERY_S) -> None:
        self.dir = Path(run_dir)
        self.every = float(every)
        self.last = float("-inf")
        self.headers: dict[str, list[str]] = {}
        self.chunks = 0
        self.described: dict[str, np.ndarray] = {}  # the column description last stored

    def due(self, now: float) -> bool:
        """True once every ``every`` seconds (the caller then appends and chunks)."""
        if now - self.last < self.every:
            return False
        self.last = now
        return True

    # -- timeline ----------------------------------------------------------------
    def append(self, rows: pd.DataFrame, name: str = "timeline.csv") -> None:
        """Append ``rows`` to the CSV ``name`` (created with its header on the first call)."""
        if not len(rows):
            return
        path = self.dir / name
        header = self.headers.get(name)
        if header is not None and not set(rows.columns) <= set(header):
            merged = pd.concat([read_timeline(path), rows], ignore_index=True)
            store.atomic_write_csv(path, merged)
            self.headers[name] = list(merged.columns)
            return
        first = header is None
        if first:
            header = self.headers[name] = list(rows.columns)
        buf = io.StringIO()
        rows.reindex(columns=header).to_csv(buf, index=False, header=first)
        data = buf.getvalue().encode()
        if first:  # the header and first rows appear at once, whole
            store.atomic_write_bytes(path, data)
            return
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- page matrices -------------------------------------------------------------
    def chunk(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Store the rows sampled since the previous chunk (nothing if there are none).

        A large column description (``page_addr``, ``region``) is stored only when it
        changed: compressing a million page addresses takes half a second, the rows
        of a chunk about 15 ms.
        """
        if not len(arrays.get("t", ())):
            return
        out = {}
        for key, value in arrays.items():
            value = np.asarray(value)
            if key != "t" and value.ndim == 1 and value.size > 64:
                old = self.described.get(key)
                if old is not None and old.shape == value.shape and np.array_equal(old, value):
                    continue
                self.described[key] = value
            out[key] = value
        store.atomic_write_npz(self.dir / CHUNKS / f"chunk-{self.chunks:05d}.npz", **out)
        self.chunks += 1

    def finish_pages(self, arrays: Mapping[str, np.ndarray] | None) -> None:
        """Write the whole pages.npz (if any), then drop the chunks it replaces."""
        if arrays is not None:
            store.atomic_write_npz(self.dir / "pages.npz", **arrays)
        shutil.rmtree(self.dir / CHUNKS, ignore_errors=True)


def read_timeline(path: str | os.PathLike) -> pd.DataFrame:
    """timeline.csv (or any per-sample CSV) as whole rows: a torn last row (one missing its newline)
    is dropped with a LocalityWarning; ValueError if unreadable (store.read_table)."""
    return store.read_table(path)


def chunk_paths(run_dir: str | os.PathLike) -> list[Path]:
    return sorted((Path(run_dir) / CHUNKS).glob("chunk-*.npz"))


def merge_chunks(paths: list[Path]) -> dict[str, np.ndarray] | None:
    """pages.npz's arrays from chunks (None if there are none); ValueError if one is unreadable."""
    parts: list[dict[str, np.ndarray]] = []
    for p in paths:
        with np.load(p, allow_pickle=False) as z:
            parts.append({k: z[k] for k in z.files})
    if not parts:
        return None
    # ``t`` and the 2-D arrays (packed bit matrices) have a row per sample; the other arrays
    # describe the columns, as the last chunk that stored them saw them.
    rows = ["t"] + sorted({k for p in parts for k, v in p.items() if v.ndim == 2})
    out = {k: v for p in parts for k, v in p.items() if k not in rows}
    out["t"] = np.concatenate([p["t"] for p in parts]).astype(np.float64)
    for key in rows[1:]:
        mats = [p[key] for p in parts if key in p]
        if len(mats) != len(parts):
            continue
        width = max([m.shape[1] for m in mats] + [(int(out.get("n_pages", 0)) + 7) // 8])
        out[key] = np.concatenate([np.pad(m, ((0, 0), (0, width - m.shape[1]))) for m in mats])
    return out


def read_pages(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A run's page matrices as stored: pages.npz, or its chunks merged if the runner died first."""
    path = Path(run_dir) / "pages.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    return merge_chunks(chunk_paths(run_dir))
