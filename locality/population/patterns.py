"""Activation patterns: which workers wake at each step, seeded and reproducible.

A pattern is a recipe; ``Pattern.steps()`` starts a fresh stream from the seed
every time it is called, so two streams of the same pattern are identical
array for array (ids in the same order). Every step is an ``np.ndarray`` of
distinct int64 worker ids in ``[0, n)``.

Sheet geometry (shared with the layouts): ``width = ceil(sqrt(n))``, worker i
sits at ``(i % width, i // width)``.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any, ClassVar, Iterator

import numpy as np

from locality.errors import InvalidArgument, LocalityError


class ReplayFileError(LocalityError):
    """A replay CSV is missing or has a bad row; names the file and the line."""

    def __init__(self, path: str, line: int | None, what: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"replay file {where}: {what}", "rows are `step,worker` with integers step >= 0 and 0 <= worker < n")
        self.path = path
        self.line = line


def sheet_width(n: int) -> int:
    return max(1, math.isqrt(n - 1) + 1) if n > 0 else 1


def grid_xy(ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Sheet coordinates (x, y) of worker ids."""
    w = sheet_width(n)
    ids = np.asarray(ids, dtype=np.int64)
    return ids % w, ids // w


def unique_in_order(ids: np.ndarray) -> np.ndarray:
    """Drop repeated ids, keeping each id's first position (order is part of the result).

    A stable sort puts each id's first occurrence before its repeats, so the
    repeats are the sorted neighbours equal to the one before them. Fewer
    temporaries than np.unique(return_index=True) (this runs in the measured
    process every step, and its heap churn is in the working set)."""
    ids = np.asarray(ids)
    if ids.size < 2:
        return ids.astype(np.int64, copy=False)
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    repeat = s[1:] == s[:-1]
    if not repeat.any():
        return ids.astype(np.int64, copy=False)
    keep = np.ones(ids.size, dtype=bool)
    keep[order[1:][repeat]] = False
    return ids[keep].astype(np.int64, copy=False)


def _probability(name: str, v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise InvalidArgument(f"pattern parameter {name}={v!r} is not a number", f"give {name} in (0, 1]") from None
    if not 0.0 < f <= 1.0:
        raise InvalidArgument(f"pattern parameter {name}={v!r} is out of range", f"give {name} in (0, 1]")
    return f


class Pattern:
    """Base class: ``n`` workers, a seed, validated parameters in ``params``."""

    name: ClassVar[str] = "?"
    PARAMS: ClassVar[dict[str, Any]] = {}  # name -> default (None: required)

    def __init__(self, n: int, seed: int = 0, **params: Any) -> None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise InvalidArgument(f"number of workers must be a positive integer, got {n!r}")
        unknown = sorted(set(params) - set(self.PARAMS))
        if unknown:
            allowed = ", ".join(self.PARAMS) or "none"
            raise InvalidArgument(
                f"pattern {self.name!r} has no parameter {unknown[0]!r}", f"allowed parameters: {allowed}"
            )
        merged = {k: params.get(k, d) for k, d in self.PARAMS.items()}
        missing = [k for k, v in merged.items() if v is None]
        if missing:
            raise InvalidArgument(f"pattern {self.name!r} needs parameter {missing[0]!r}")
        self.n = int(n)
        self.seed = int(seed)
        self.params = self._validate(merged)

    def _validate(self, p: dict[str, Any]) -> dict[str, Any]:
        return p

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def steps(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.name}(n={self.n}, seed={self.seed}{', ' if args else ''}{args})"


class Uniform(Pattern):
    """Each worker fires independently with probability p per step (random order)."""

    name = "uniform"
    PARAMS = {"p": 0.01}

    def _validate(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"p": _probability("p", p["p"])}

    def steps(self) -> Iterator[np.ndarray]:
        rng, n, p = self.rng(), self.n, self.params["p"]
        while True:
            k = int(rng.binomial(n, p))
            yield rng.choice(n, size=k, replace=False).astype(np.int64, copy=False)


class Zipf(Pattern):
    """round(p*n) draws per step from a Zipf(s) popularity; a worker drawn twice fires once.

    Popularity rank r has weight 1/r**s; ranks map to workers through a seeded
    permutation, so popularity does not follow id (or address) order.
    """

    name = "zipf"
    PARAMS = {"s": 1.1, "p": 0.01}

    def _validate(self, p: dict[str, Any]) -> dict[str, Any]:
        try:
            s = float(p["s"])
        except (TypeError, ValueError):
            raise InvalidArgument(f"pattern parameter s={p['s']!r} is not a number", "give s >= 0") from None
        if not (s >= 0 and math.isfinite(s)):
            raise InvalidArgument(f"pattern parameter s={p['s']!r} is out of range", "give s >= 0")
        return {"s": s, "p": _probability("p", p["p"])}

    def steps(self) -> Iterator[np.ndarray]:
        rng, n = self.rng(), self.n
        s, p = self.params["s"], self.params["p"]
        by_rank = rng.permutation(n).astype(np.int64)
        cdf = np.cumsum(np.arange(1, n + 1, dtype=np.float64) ** -s)
        cdf /= cdf[-1]
        k = max(1, round(p * n))
        while True:
            ranks = np.minimum(np.searchsorted(cdf, rng.random(k), side="right"), n - 1)
            yield unique_in_order(by_rank[ranks])


class Sheet(Pattern):
    """Workers on a 2D grid: local bursts and travelling waves, so neighbours co-fire.

    Per step about p*n workers fire. With ``waves`` > 0, half of that budget
    goes to ``waves`` fronts (bands of rows or columns, at most the sheet's
    side long; axis, direction and start seeded) that move one cell per step
    across the (toroidal) sheet; the rest to discs of radius ``radius`` around
    random centres (at least one disc per step, so small populations may get
    more than p*n).

    ``lifetime`` (integer >= 1, default 1) is how many steps a burst stays at
    its centre: in a cortical sheet a patch of activity persists for tens to
    hundreds of ms, i.e. many steps.  Lifetimes are staggered: burst k gets a
    new random centre at the steps t >= 1 with (t + phase_k) % lifetime == 0
    (phase_k = k % lifetime, or k * lifetime // bursts when there are fewer
    bursts than lifetime steps), so about 1/lifetime of the bursts move each
    step, evenly spread, and the per-step count stays about p*n.  lifetime=1 moves every burst every step (the same ids,
    seed for seed, as before the parameter existed).  Waves are not affected:
    a front reaches new cells every step whatever the lifetime.
    """

    name = "sheet"
    PARAMS = {"p": 0.01, "radius": 3.0, "waves": 2, "lifetime": 1}

    def _validate(self, p: dict[str, Any]) -> dict[str, Any]:
        try:
            radius = float(p["radius"])
        except (TypeError, ValueError):
            raise InvalidArgument(f"pattern parameter radius={p['radius']!r} is not a number", "give radius > 0") from None
        if not (radius > 0 and math.isfinite(radius)):
            raise InvalidArgument(f"pattern parameter radius={p['radius']!r} is out of range", "give radius > 0")
        waves = p["waves"]
        if isinstance(waves, bool) or not isinstance(waves, (int, np.integer)) or waves < 0:
            raise InvalidArgument(f"pattern parameter waves={waves!r} is out of range", "give an integer waves >= 0")
        lifetime = p["lifetime"]
        if isinstance(lifetime, bool) or not isinstance(lifetime, (int, np.integer)) or lifetime < 1:
            raise InvalidArgument(f"pattern parameter lifetime={lifetime!r} is out of range",
                                  "give an integer lifetime >= 1: the steps a burst stays at its centre")
        return {"p": _probability("p", p["p"]), "radius": radius, "waves": int(waves), "lifetime": int(lifetime)}

    def steps(self) -> Iterator[np.ndarray]:
        rng, n = self.rng(), self.n
        p, radius, n_waves = self.params["p"], self.params["radius"], self.params["waves"]
        width = sheet_width(n)
        height = -(-n // width)
        r = int(math.floor(radius))
        dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
        inside = dx * dx + dy * dy <= radius * radius
        dx, dy = dx[inside].astype(np.int64), dy[inside].astype(np.int64)
        budget = p * n
        # waves: axis (0 = horizontal band of rows, 1 = vertical band of columns), direction, position
        axis = rng.integers(0, 2, size=n_waves)
        direction = rng.choice(np.array([-1, 1]), size=n_waves)
        length = np.where(axis == 0, width, height)
        extent = np.where(axis == 0, height, width)
        thickness = np.maximum(1, np.round(budget / 2 / max(n_waves, 1) / length)).astype(np.int64)
        thickness = np.minimum(thickness, extent)
        # a front shorter than the sheet when even one row would exceed the budget
        seg_len = np.minimum(length, np.maximum(1, np.round(budget / 2 / max(n_waves, 1) / thickness))).astype(np.int64)
        seg_start = (rng.random(n_waves) * length).astype(np.int64)
        position = (rng.random(n_waves) * extent).astype(np.int64)
        wave_cells = float(np.sum(thickness * seg_len))
        bursts = max(1, round((budget - wave_cells) / dx.size))
        lifetime = self.params["lifetime"]
        # Fewer bursts than steps in a lifetime: spread their moves over the lifetime (k % lifetime
        # would move all of them within `bursts` consecutive steps, then none for the rest).
        phase = np.arange(bursts) % lifetime if bursts >= lifetime else np.arange(bursts) * lifetime // bursts
        cx = cy = np.empty(0, np.int64)
        # Every step's cells are computed into buffers made once: this runs in the measured process,
        # and a dozen fresh temporaries a step were a few hundred pages of heap churn per window.
        sizes = [bursts * dx.size] + [int(thickness[w] * seg_len[w]) for w in range(n_waves)]
        cells = np.empty(sum(sizes), np.int64)
        row = np.empty((bursts, dx.size), np.int64)
        in_sheet = np.empty(cells.size, bool) if width * height > n else None
        t = 0
        while True:
            at = 0
            if bursts:
                if t == 0 or lifetime == 1:
                    # one draw of every centre: lifetime 1 consumes the generator exactly as before
                    cx = rng.integers(0, width, size=bursts)
                    cy = rng.integers(0, height, size=bursts)
                else:
                    moving = np.flatnonzero((t + phase) % lifetime == 0)
                    cx[moving] = rng.integers(0, width, size=moving.size)
                    cy[moving] = rng.integers(0, height, size=moving.size)
                x = cells[: sizes[0]].reshape(bursts, dx.size)
                np.add(cx[:, None], dx[None, :], out=x)
                x %= width
                np.add(cy[:, None], dy[None, :], out=row)
                row %= height
                row *= width
                x += row
                at = sizes[0]
            for w in range(n_waves):
                band = (position[w] + np.arange(thickness[w])) % extent[w]
                along = (seg_start[w] + np.arange(seg_len[w])) % length[w]
                out = cells[at : at + sizes[w + 1]]
                if axis[w] == 0:
                    np.add((band * width)[:, None], along[None, :], out=out.reshape(band.size, along.size))
                else:
                    np.add((along * width)[:, None], band[None, :], out=out.reshape(along.size, band.size))
                at += sizes[w + 1]
            position = (position + direction) % extent
            t += 1
            if in_sheet is not None:
                np.less(cells, n, out=in_sheet)
                yield unique_in_order(cells[in_sheet])
            else:
                yield unique_in_order(cells.copy())


class Bursty(Pattern):
    """Two-state Markov chain per worker: off->on with p_on, on->off with p_off per step.

    Starts from the stationary distribution (on with p_on / (p_on + p_off)); the
    workers that are on after each transition fire, in id order.
    """

    name = "bursty"
    PARAMS = {"p_on": 0.001, "p_off": 0.1}

    def _validate(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"p_on": _probability("p_on", p["p_on"]), "p_off": _probability("p_off", p["p_off"])}

    def steps(self) -> Iterator[np.ndarray]:
        rng, n = self.rng(), self.n
        p_on, p_off = self.params["p_on"], self.params["p_off"]
        on = rng.random(n) < p_on / (p_on + p_off)
        while True:
            u = rng.random(n)
            on = np.where(on, u >= p_off, u < p_on)
            yield np.flatnonzero(on).astype(np.int64, copy=False)


class Replay(Pattern):
    """Replay a CSV of ``step,worker`` rows (an optional header row is skipped).

    Step k of the stream fires the workers listed with step k, in file order;
    steps with no rows are empty; the stream ends after the largest step.
    A worker listed twice in one step fires once. The whole file is checked
    when the pattern is made, so a bad row is reported before any run starts.
    """

    name = "replay"
    PARAMS = {"path": None}

    def _validate(self, p: dict[str, Any]) -> dict[str, Any]:
        path = os.fspath(p["path"])
        self._steps, self._workers = _read_replay(path, self.n)
        return {"path": path}

    @property
    def length(self) -> int:
        """Number of steps in the file (largest step + 1)."""
        return int(self._steps.max()) + 1 if self._steps.size else 0

    def steps(self) -> Iterator[np.ndarray]:
        order = np.argsort(self._steps, kind="stable")
        steps, workers = self._steps[order], self._workers[order]
        bounds = np.searchsorted(steps, np.arange(self.length + 1))
        for k in range(self.length):
            yield unique_in_order(workers[bounds[k] : bounds[k + 1]])


def _read_replay(path: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    if not os.path.isfile(path):
        raise ReplayFileError(path, None, "no such file")
    steps: list[int] = []
    workers: list[int] = []
    try:
        with open(path, newline="") as f:
            for line, row in enumerate(csv.reader(f), start=1):
                if not row or all(not c.strip() for c in row):
                    continue
                if line == 1 and [c.strip().lower() for c in row] in (["step", "worker"], ["time", "worker"]):
                    continue
                if len(row) != 2:
                    raise ReplayFileError(path, line, f"expected 2 fields (step, worker), got {len(row)}")
                step = _integer(row[0], path, line, "step")
                worker = _integer(row[1], path, line, "worker")
                if step < 0:
                    raise ReplayFileError(path, line, f"step {step} is negative")
                if not 0 <= worker < n:
                    raise ReplayFileError(path, line, f"worker {worker} is outside the population [0, {n})")
                steps.append(step)
                workers.append(worker)
    except UnicodeDecodeError:
        raise ReplayFileError(path, None, "not a text CSV file") from None
    except OSError as e:
        raise ReplayFileError(path, None, e.strerror or str(e)) from None
    if not steps:
        raise ReplayFileError(path, None, "no rows")
    return np.asarray(steps, dtype=np.int64), np.asarray(workers, dtype=np.int64)


def _integer(text: str, path: str, line: int, what: str) -> int:
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        pass
    try:
        f = float(t)
    except ValueError:
        raise ReplayFileError(path, line, f"{what} {t!r} is not an integer") from None
    if not f.is_integer():
        raise ReplayFileError(path, line, f"{what} {t!r} is not an integer")
    return int(f)


PATTERNS: dict[str, type[Pattern]] = {c.name: c for c in (Uniform, Zipf, Sheet, Bursty, Replay)}


def make_pattern(name: str, n: int, seed: int = 0, **params: Any) -> Pattern:
    """Build a registered pattern; unknown names or parameters raise InvalidArgument."""
    try:
        cls = PATTERNS[name]
    except (KeyError, TypeError):
        raise InvalidArgument(f"unknown activation pattern {name!r}", f"use one of: {', '.join(PATTERNS)}") from None
    return cls(n, seed=seed, **params)
