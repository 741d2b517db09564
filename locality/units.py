"""Sizes, durations and counts as people type them, and back.

The one place that turns ``512M``, ``1.5GiB``, ``500ms``, ``2h`` or ``250k``
into numbers, for the CLI, the benchmarks and the config alike. Every parser
refuses what is not a finite value of its kind with one ``InvalidArgument``
line that names the value and the accepted forms.

- sizes are binary: K = 1024 bytes, with an optional ``B`` or ``iB``;
- durations are seconds unless a unit says otherwise: ms, s, m (or min), h;
- counts are decimal: k = 1,000 and M = 1,000,000 (``1M`` workers).
"""

from __future__ import annotations

import math
import re
from typing import Any

import click

from locality.errors import InvalidArgument

SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
DURATION_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
COUNT_UNITS = {"": 1, "k": 1_000, "m": 1_000_000}

SIZE_FORMS = "a byte count or a number with K, M, G or T (binary, optional B/iB), e.g. 4096, 512M, 1.5GiB"
DURATION_FORMS = "a positive number of seconds or a number with ms, s, m or h, e.g. 500ms, 1s, 2m, 1.5h"
COUNT_FORMS = "a positive whole number, optionally with k or M, e.g. 5000, 250k, 1M"

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_SIZE = re.compile(rf"\s*{_NUMBER}\s*([kmgt]?)(?:i?b)?\s*", re.I)
_DURATION = re.compile(rf"\s*{_NUMBER}\s*(ms|s|min|m|h)?\s*")
_COUNT = re.compile(rf"\s*{_NUMBER}\s*([km]?)\s*", re.I)


def parse_size(value: int | str, what: str = "size") -> int:
    """'512M', '1.5GiB', '2k', '4096' or an int -> bytes (binary units); must be >= 1 byte."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{what}: {value!r} is not a size", f"use {SIZE_FORMS}")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE.fullmatch(str(value))
        if not m:
            raise InvalidArgument(f"{value!r} is not a size", f"use {SIZE_FORMS}")
        n = int(float(m.group(1)) * SIZE_UNITS[m.group(2).lower()])
    if n < 1:
        raise InvalidArgument(f"{value!r} is not a positive size", f"use {SIZE_FORMS}")
    return n


def parse_duration(value: float | str, what: str = "duration") -> float:
    """'500ms', '1s', '2m', '3min', '1.5h', '30' (seconds) or a number -> seconds; must be finite and > 0."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{what}: {value!r} is not a duration", f"use {DURATION_FORMS}")
    if isinstance(value, (int, float)):
        seconds = float(value)
        if not math.isfinite(seconds):
            raise InvalidArgument(f"{what}: {value!r} is not a duration", f"use {DURATION_FORMS}")
    else:
        text = str(value)
        m = _DURATION.fullmatch(text)
        if not m:
            if re.fullmatch(rf"\s*-\s*{_NUMBER}\s*(ms|s|min|m|h)?\s*", text):
                raise InvalidArgument(f"{what} must be > 0, not {text!r}", f"use {DURATION_FORMS}")
            raise InvalidArgument(f"{what}: {text!r} is not a duration", f"use {DURATION_FORMS}")
        seconds = float(m.group(1)) * DURATION_UNITS[m.group(2) or "s"]
    if seconds <= 0:
        raise InvalidArgument(f"{what} must be > 0, not {value!r}", f"use {DURATION_FORMS}")
    return seconds


def parse_count(value: int | str, what: str = "count") -> int:
    """'250k', '1M', '1_000', '5000' or an int -> a whole number > 0 (decimal units)."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{what}: {value!r} is not a count", f"use {COUNT_FORMS}")
    if isinstance(value, int):
        n = value
    else:
        m = _COUNT.fullmatch(str(value).replace("_", ""))
        if not m:
            raise InvalidArgument(f"{what}: {value!r} is not a count", f"use {COUNT_FORMS}")
        n = int(float(m.group(1)) * COUNT_UNITS[m.group(2).lower()])
    if n <= 0:
        raise InvalidArgument(f"{what}: {value!r} must be > 0", f"use {COUNT_FORMS}")
    return n


def parse_counts(text: str, what: str = "count") -> list[int]:
    """'10k,100k,1M' -> [10000, 100000, 1000000]."""
    return [parse_count(part.strip(), what) for part in str(text).split(",")]


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; bytes below 1 KiB as a whole number."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


# -- click parameter types (the CLI and the benchmarks share them) -------------


class _Unit(click.ParamType):
    parse: Any = None

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return type(self).parse(value, param.opts[0] if param is not None and param.opts else self.name)
        except InvalidArgument as e:
            self.fail(str(e), param, ctx)


class SizeType(_Unit):
    """4G, 512M, 1.5GiB or a byte count."""

    name = "SIZE"
    parse = staticmethod(parse_size)


class DurationType(_Unit):
    """500ms, 1s, 2m, 1h or a number of seconds."""

    name = "DURATION"
    parse = staticmethod(parse_duration)


class CountType(_Unit):
    """250k, 1M or a whole number."""

    name = "COUNT"
    parse = staticmethod(parse_count)


SIZE = SizeType()
DURATION = DurationType()
COUNT = CountType()
