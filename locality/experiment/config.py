"""Experiment configs: TOML read with tomllib, validated by pydantic before anything starts.

A config names everything a run needs (population, layout, pattern, timing,
sampling, reclaim policy), so a stored run can be reproduced from its
manifest alone. Every validation problem becomes one ``ConfigError`` line
that names the key path and, where there is a closed set, the allowed values:

    workers: must be > 0 (got -5)
    layout: unknown 'slabb' (allowed: objects, slab, ...)
    unknown key 'pattern.radus'
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from locality import units
from locality.errors import ConfigError, InvalidArgument
from locality.experiment.config_errors import one_line
from locality.population.patterns import PATTERNS

SCHEDULERS = ("lean", "asyncio")
ARENAS = ("anon", "file")
POLICIES = ("none", "pageout-idle", "cgroup")
# The layout names of docs/internals.md; the registry in locality.layouts is
# authoritative once importable (see layout_names()).
CONTRACT_LAYOUTS = ("objects", "slab", "hot-cold", "clustered", "clustered-learned", "compacting", "isolated", "grouped")


def layout_names() -> tuple[str, ...]:
    try:
        from locality.layouts import LAYOUTS  # type: ignore[attr-defined]
    except ImportError:
        return CONTRACT_LAYOUTS
    return tuple(LAYOUTS)


def _in_child(info: ValidationInfo) -> bool:
    # The measured child validates the config it is sent (types and values) but
    # does not redo the parent's file checks: that would read a replay file twice.
    return bool((info.context or {}).get("child"))


class _Model(BaseModel):
    # strict: TOML has types, so `workers = true` or `workers = 1e12` is a
    # mistake to name, not a value to coerce (lax mode ran true as 1 worker).
    # No inf/nan anywhere: every float here is a time, a rate or a size.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


Probability = Annotated[float, Field(gt=0, le=1)]
# Longest time a config may name (step_interval, duration, sampling interval,
# thresholds): a week is longer than any run this tool is meant for, and far
# below what time.sleep() and the timeline's float seconds can hold.
MAX_SECONDS = 7 * 24 * 3600.0
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS)]
PositiveSeconds = Annotated[float, Field(gt=0, le=MAX_SECONDS)]
# Integers reach numpy as int64.
INT64_MAX = 2**63 - 1


# Defaults come from the pattern classes themselves, so a config that leaves a
# parameter out runs exactly what `make_pattern` would.
_DEFAULTS = {name: cls.PARAMS for name, cls in PATTERNS.items()}


class UniformPattern(_Model):
    name: Literal["uniform"]
    p: Probability = _DEFAULTS["uniform"]["p"]


class ZipfPattern(_Model):
    name: Literal["zipf"]
    s: float = Field(_DEFAULTS["zipf"]["s"], gt=0)
    p: Probability = _DEFAULTS["zipf"]["p"]


class SheetPattern(_Model):
    name: Literal["sheet"]
    p: Probability = _DEFAULTS["sheet"]["p"]
    # Upper bounds that depend on the population size (radius <= the sheet's
    # width, waves <= workers) are checked by ExperimentConfig.
    radius: float = Field(_DEFAULTS["sheet"]["radius"], gt=0)
    waves: int = Field(_DEFAULTS["sheet"]["waves"], ge=0, le=INT64_MAX)
    lifetime: int = Field(_DEFAULTS["sheet"]["lifetime"], ge=1, le=INT64_MAX)


class BurstyPattern(_Model):
    name: Literal["bursty"]
    p_on: Probability = _DEFAULTS["bursty"]["p_on"]
    p_off: Probability = _DEFAULTS["bursty"]["p_off"]


class ReplayPattern(_Model):
    name: Literal["replay"]
    path: str

    @field_validator("path")
    @classmethod
    def _readable(cls, v: str, info: ValidationInfo) -> str:
        if _in_child(info):
            return v  # checked by the parent; the child reports its own read error
        if not os.access(v, os.R_OK) or not os.path.isfile(v):
            raise ValueError(f"cannot read replay file {v!r}")
        return v


Pattern = Annotated[
    Union[UniformPattern, ZipfPattern, SheetPattern, BurstyPattern, ReplayPattern],
    Field(discriminator="name"),
]
PATTERN_NAMES = tuple(PATTERNS)


class Sampling(_Model):
    # Seconds between samples; 0 turns the sampler off (no write tracking,
    # only the start and end measurements): the baseline for overhead.
    interval: Seconds = 1.0
    # One timeline column per threshold.
    cold_thresholds: list[PositiveSeconds] = Field(default_factory=lambda: [1.0, 5.0, 30.0], max_length=32)
    # Store the page x time matrices (pages.npz).
    pages: bool = True
    # Track written pages (uffd write-protect + PAGEMAP_SCAN). Costs the child
    # one write-protect fault per page it writes per window (measured: about
    # 4 us here); without it a run measures residency only (no WSS, no cold
    # fraction, no page utilization).
    writes: bool = True
    # Track the heap's anonymous VMAs (interpreter objects, coroutine frames)
    # besides the layout's arenas.
    heap: bool = True
    # With a step_interval, a window is a whole number of steps (see
    # window_steps): the child pauses between windows until sampled, so how
    # many steps a window holds does not depend on how fast this machine
    # steps. False: windows of wall-clock time, as many steps as fit.
    align_to_steps: bool = True


def parse_size(value: int | str) -> int:
    """'512M', '1.5G', '4096' or an int -> bytes (binary units, ``locality.units``)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        # 1.5 is neither: a fraction of a byte, or a forgotten unit.
        raise ValueError(f"must be a size like 512M or a whole number of bytes (got {value!r})")
    try:
        return units.parse_size(value)
    except InvalidArgument:
        raise ValueError(f"must be a size like 512M or a whole number of bytes (got {value!r})") from None


class Reclaim(_Model):
    policy: Literal["none", "pageout-idle", "cgroup"] = "none"
    # pageout-idle: page out pages not written for this many seconds.
    idle_seconds: PositiveSeconds | None = None
    # pageout-idle: which tracked pages it may page out: all of them, or only the pages
    # holding worker state (what the paging curve and its oracle are about).
    scope: Literal["all", "state"] = "all"
    # cgroup: memory limit of the run's own cgroup (bytes, or '512M').
    limit: int | None = None

    @field_validator("limit", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if v is None:
            return v
        n = parse_size(v)
        if n <= 0:
            raise ValueError(f"must be > 0 (got {v!r})")
        return n

    @model_validator(mode="after")
    def _needs(self) -> "Reclaim":
        if self.policy == "pageout-idle" and self.idle_seconds is None:
            raise ValueError("policy 'pageout-idle' needs reclaim.idle_seconds")
        if self.policy == "cgroup" and self.limit is None:
            raise ValueError("policy 'cgroup' needs reclaim.limit")
        return self


class ExperimentConfig(_Model):
    # The real upper bound is memory: experiment.estimate refuses a config
    # whose estimate exceeds what is available.
    workers: int = Field(gt=0, le=INT64_MAX)
    scheduler: Literal["lean", "asyncio"] = "lean"
    layout: str = "slab"
    arena: Literal["anon", "file"] = "anon"
    # Directory of file arenas (a disk file system, not tmpfs); default: the temp dir.
    arena_dir: str | None = None
    hugepages: bool = False
    pattern: Pattern = Field(default_factory=lambda: UniformPattern(name="uniform"))
    steps: int | None = Field(None, ge=0, le=INT64_MAX)
    duration: PositiveSeconds | None = None
    step_interval: Seconds = 0.0
    sampling: Sampling = Field(default_factory=Sampling)
    reclaim: Reclaim = Field(default_factory=Reclaim)
    # numpy's SeedSequence takes non-negative integers only.
    seed: int = Field(0, ge=0, le=INT64_MAX)
    out: str = "runs"
    name: str | None = None

    @field_validator("layout")
    @classmethod
    def _layout(cls, v: str) -> str:
        allowed = layout_names()
        if v not in allowed:
            raise ValueError(f"unknown {v!r} (allowed: {', '.join(allowed)})")
        return v

    @model_validator(mode="after")
    def _end(self, info: ValidationInfo) -> "ExperimentConfig":
        if self.steps is None and self.duration is None:
            raise ValueError("set steps or duration (or both: the run stops at whichever comes first)")
        if self.reclaim.policy == "pageout-idle" and not self.write_tracking:
            raise ValueError("reclaim: policy 'pageout-idle' needs sampling.interval > 0 and sampling.writes = true")
        if isinstance(self.pattern, SheetPattern):
            from locality.population.patterns import sheet_width

            width = sheet_width(self.workers)
            if self.pattern.radius > width:
                # A wider disc wraps onto itself: it only costs memory ((2r+1)^2 cells per burst).
                raise ValueError(f"pattern.radius: must be <= {width}, the sheet's width at {self.workers:,} workers "
                                 f"(got {self.pattern.radius:g})")
            if self.pattern.waves > self.workers:
                raise ValueError(f"pattern.waves: must be <= workers ({self.workers:,}): every wave fires at least "
                                 f"one worker per step (got {self.pattern.waves:,})")
        if self.arena == "file" and self.arena_dir is not None and not _in_child(info):
            _check_arena_dir(self.arena_dir)
        if isinstance(self.pattern, ReplayPattern) and not _in_child(info):
            try:
                check_replay(self.pattern.path, self.workers)
            except ValueError as e:
                raise ValueError(f"pattern.path: {e} (rows are step,worker: integers, 0 <= worker < workers)") from None
        return self

    @property
    def window_steps(self) -> int | None:
        """Steps per sampling window when windows are aligned to steps, else None (windows of time).

        round(sampling.interval / step_interval), at least 1: the steps one
        interval holds at the configured pace. Aligned windows need written-page
        tracking and a step pace; page utilization and WSS per window then
        measure the same work on any machine.
        """
        s = self.sampling
        if not (s.align_to_steps and s.interval > 0 and s.writes and self.step_interval > 0):
            return None
        return max(1, round(s.interval / self.step_interval))

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        # The name starts the run id, a directory under `out`: one plain path component.
        if v is not None and (not v or v in (".", "..") or "/" in v or "\\" in v or "\0" in v or v.startswith(".")):
            raise ValueError(f"{v!r} is not a plain directory name (no '/', not starting with '.')")
        return v

    # Derived facts, read on both sides of the pipe (runner and child).
    @property
    def sampled(self) -> bool:
        """The parent samples the child during the run (else only start and end are measured)."""
        return self.sampling.interval > 0

    @property
    def write_tracking(self) -> bool:
        """Written pages are tracked (uffd write-protect + PAGEMAP_SCAN): sampling on and writes asked for."""
        return self.sampled and self.sampling.writes

    @property
    def heap_tracking(self) -> bool:
        """The heap's anonymous VMAs are tracked besides the arenas."""
        return self.sampled and self.sampling.heap

    @property
    def pattern_params(self) -> dict[str, Any]:
        """Keyword arguments of ``make_pattern`` besides the name."""
        return self.pattern.model_dump(exclude={"name"})

    @property
    def layout_params(self) -> dict[str, Any]:
        """Keyword arguments of ``make_layout`` besides the name and the worker count."""
        kw: dict[str, Any] = {"arena": self.arena, "hugepages": self.hugepages, "seed": self.seed}
        if self.arena_dir:
            kw["directory"] = self.arena_dir
        return kw

    @property
    def file_sync_interval(self) -> float:
        """Seconds between msync of file arenas: pageout-idle cannot page out dirty file pages; 0 = never."""
        if self.reclaim.policy == "pageout-idle" and self.arena == "file" and self.write_tracking:
            return float(self.sampling.interval)
        return 0.0


def _check_arena_dir(path: str) -> None:
    # The child creates its arena files there: a missing or unwritable directory
    # is a config error, found before any child starts.
    import tempfile

    if not os.path.isdir(path):
        raise ValueError(f"arena_dir: {path!r} is not a directory (create it or choose another)")
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ValueError(f"arena_dir: cannot create a file in {path!r} ({e.strerror})") from None


def check_replay(path: str, workers: int) -> int:
    """Validate a replay CSV with the population's own reader; returns its number of steps.

    The reader checks every row (``step,worker`` integers, worker in
    [0, workers)), so the config and the run can never disagree about a file.
    """
    from locality.population import ReplayFileError, make_pattern

    try:
        return int(make_pattern("replay", workers, path=path).length)
    except ReplayFileError as e:
        raise ValueError(e.message) from None


# -- loading ------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A --set / --grid value as TOML (3, 0.5, true, "x", [1, 2]); bare words as strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"--set {key}: empty key part", "write key.sub=value")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: is a value, not a table (cannot set {key})")
        node = child
    node[parts[-1]] = value
    # Switching pattern.name leaves the old pattern's params behind; drop the
    # ones the new pattern does not take, so `--set pattern.name=uniform` works.
    if parts == ["pattern", "name"] and isinstance(value, str):
        allowed = _PATTERN_FIELDS.get(value)
        if allowed is not None:
            for k in list(node):
                if k not in allowed:
                    del node[k]


def parse_overrides(overrides: Iterable[str]) -> list[tuple[str, Any]]:
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value", "e.g. --set workers=1000")
        out.append((key.strip(), parse_value(value.strip())))
    return out


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a directory") from None
    except PermissionError:
        raise ConfigError(f"config file {str(path)!r} is not readable (permission denied)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r}: invalid TOML: {e}") from None


def validate(data: dict[str, Any], base_dir: str | os.PathLike | None = None) -> ExperimentConfig:
    """dict -> ExperimentConfig, or one ConfigError line naming the first problem."""
    data = _resolve_paths(data, base_dir)
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(one_line(e.errors()[0], _ALLOWED_LITERALS)) from None


def from_parent(data: dict[str, Any]) -> ExperimentConfig:
    """The child's side of the pipe: the config the runner sent, validated again (files not re-checked)."""
    try:
        return ExperimentConfig.model_validate(data, context={"child": True})
    except ValidationError as e:
        raise ConfigError(one_line(e.errors()[0], _ALLOWED_LITERALS)) from None


# Top-level tables of an experiment file that are not run settings
# (docs/internals.md "Experiment files"): read by sweep and figures.
NON_RUN_TABLES = ("grid", "figures")


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read, override (``key.sub=value``, value parsed as TOML) and validate a config file.

    The ``[grid]`` and ``[figures]`` tables of an experiment file are not run
    settings and are left out (``locality.experiment.sweep.file_grid`` reads the grid).
    """
    data = read_toml(path)
    for table in NON_RUN_TABLES:
        data.pop(table, None)
    for key, value in parse_overrides(overrides):
        apply_override(data, key, value)
    return validate(data, base_dir=Path(path).parent)


def with_overrides(config: ExperimentConfig, items: Iterable[tuple[str, Any]]) -> ExperimentConfig:
    data = config.model_dump(mode="json")
    for key, value in items:
        apply_override(data, key, value)
    return validate(data)


def _resolve_paths(data: dict[str, Any], base_dir: str | os.PathLike | None) -> dict[str, Any]:
    # A replay path is relative to the config file, like an include.
    pattern = data.get("pattern")
    if base_dir is not None and isinstance(pattern, dict) and isinstance(pattern.get("path"), str):
        p = Path(pattern["path"])
        if not p.is_absolute():
            data = dict(data)
            data["pattern"] = dict(pattern, path=str(Path(base_dir) / p))
    return data


_PATTERN_FIELDS = {
    "uniform": set(UniformPattern.model_fields),
    "zipf": set(ZipfPattern.model_fields),
    "sheet": set(SheetPattern.model_fields),
    "bursty": set(BurstyPattern.model_fields),
    "replay": set(ReplayPattern.model_fields),
}


_ALLOWED_LITERALS = {
    "scheduler": SCHEDULERS,
    "arena": ARENAS,
    "reclaim.policy": POLICIES,
    "pattern.name": PATTERN_NAMES,
}
