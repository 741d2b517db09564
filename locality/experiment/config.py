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
    model_config = ConfigDict(extra="forbid", frozen=True)


Probability = Annotated[float, Field(gt=0, le=1)]


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
    radius: float = Field(_DEFAULTS["sheet"]["radius"], gt=0)
    waves: int = Field(_DEFAULTS["sheet"]["waves"], ge=0)
    lifetime: int = Field(_DEFAULTS["sheet"]["lifetime"], ge=1)


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
    interval: float = Field(1.0, ge=0)
    cold_thresholds: list[Annotated[float, Field(gt=0)]] = Field(default_factory=lambda: [1.0, 5.0, 30.0])
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


def parse_size(value: int | str) -> int:
    """'512M', '1.5G', '4096' or an int -> bytes (binary units, ``locality.units``)."""
    try:
        return units.parse_size(value)
    except InvalidArgument:
        raise ValueError(f"must be a size like 512M or a number of bytes (got {value!r})") from None


class Reclaim(_Model):
    policy: Literal["none", "pageout-idle", "cgroup"] = "none"
    # pageout-idle: page out pages not written for this many seconds.
    idle_seconds: float | None = Field(None, gt=0)
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
    workers: int = Field(gt=0)
    scheduler: Literal["lean", "asyncio"] = "lean"
    layout: str = "slab"
    arena: Literal["anon", "file"] = "anon"
    # Directory of file arenas (a disk file system, not tmpfs); default: the temp dir.
    arena_dir: str | None = None
    hugepages: bool = False
    pattern: Pattern = Field(default_factory=lambda: UniformPattern(name="uniform"))
    steps: int | None = Field(None, ge=0)
    duration: float | None = Field(None, gt=0)
    step_interval: float = Field(0.0, ge=0)
    sampling: Sampling = Field(default_factory=Sampling)
    reclaim: Reclaim = Field(default_factory=Reclaim)
    seed: int = 0
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
        if isinstance(self.pattern, ReplayPattern) and not _in_child(info):
            try:
                check_replay(self.pattern.path, self.workers)
            except ValueError as e:
                raise ValueError(f"pattern.path: {e} (rows are step,worker: integers, 0 <= worker < workers)") from None
        return self

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
        raise ConfigError(_one_line(e.errors()[0])) from None


def from_parent(data: dict[str, Any]) -> ExperimentConfig:
    """The child's side of the pipe: the config the runner sent, validated again (files not re-checked)."""
    try:
        return ExperimentConfig.model_validate(data, context={"child": True})
    except ValidationError as e:
        raise ConfigError(_one_line(e.errors()[0])) from None


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


def _one_line(err: dict[str, Any]) -> str:
    loc = [str(p) for p in err["loc"]]
    # List positions read as key[i], not key.i.
    for i in range(len(loc) - 1, 0, -1):
        if isinstance(err["loc"][i], int):
            loc[i - 1] += f"[{loc.pop(i)}]"
    # Discriminated unions put the tag into the path: pattern.sheet.radius.
    if len(loc) >= 2 and loc[0] == "pattern" and loc[1] in PATTERN_NAMES:
        loc = [loc[0]] + loc[2:]
    key = ".".join(loc)
    typ = err["type"]
    got = err.get("input")
    ctx = err.get("ctx") or {}
    if typ == "extra_forbidden":
        return f"unknown key {key!r}"
    if typ == "missing":
        return f"{key}: missing (required)"
    if typ in ("union_tag_invalid", "union_tag_not_found"):
        return f"pattern.name: unknown {ctx.get('tag', got)!r} (allowed: {', '.join(PATTERN_NAMES)})" if typ == "union_tag_invalid" else "pattern.name: missing (allowed: " + ", ".join(PATTERN_NAMES) + ")"
    if typ == "literal_error":
        allowed = _ALLOWED_LITERALS.get(key)
        if allowed:
            return f"{key}: unknown {got!r} (allowed: {', '.join(allowed)})"
        return f"{key}: {err['msg']} (got {got!r})"
    for bound, word in (("greater_than", ">"), ("greater_than_equal", ">="), ("less_than", "<"), ("less_than_equal", "<=")):
        if typ == bound:
            return f"{key}: must be {word} {ctx[next(iter(ctx))]} (got {got!r})"
    if typ == "value_error":
        msg = str(ctx.get("error", err["msg"]))
        return f"{key}: {msg}" if key else msg
    if typ in ("int_parsing", "int_type", "int_from_float", "float_parsing", "float_type", "bool_parsing", "bool_type", "string_type", "list_type", "model_type", "model_attributes_type", "dict_type"):
        return f"{key}: {err['msg'].lower()} (got {got!r})"
    return f"{key}: {err['msg']} (got {got!r})" if key else err["msg"]
