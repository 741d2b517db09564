"""A pydantic validation error as one line that names the key path (locality.experiment.config).

    workers: must be an integer (got true)
    pattern.radius: must be a finite number (got inf)
    layout: unknown 'slabb' (allowed: objects, slab, ...)
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from locality.population.patterns import PATTERNS

PATTERN_NAMES = tuple(PATTERNS)

_TYPE_WORDS = {
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "finite_number": "must be a finite number",
}


def _toml(value: Any) -> str:
    """A bool or non-finite float as TOML writes it (true, inf), anything else as repr."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return repr(value)


def one_line(err: dict[str, Any], allowed_values: Mapping[str, tuple[str, ...]]) -> str:
    """``err`` (one of ValidationError.errors()) as a line; ``allowed_values``: key path -> the closed set it takes."""
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
        allowed = allowed_values.get(key)
        if allowed:
            return f"{key}: unknown {got!r} (allowed: {', '.join(allowed)})"
        return f"{key}: {err['msg']} (got {got!r})"
    for bound, word in (("greater_than", ">"), ("greater_than_equal", ">="), ("less_than", "<"), ("less_than_equal", "<=")):
        if typ == bound:
            return f"{key}: must be {word} {ctx[next(iter(ctx))]} (got {got!r})"
    if typ == "value_error":
        msg = str(ctx.get("error", err["msg"]))
        return f"{key}: {msg}" if key else msg
    if typ in _TYPE_WORDS:
        return f"{key}: {_TYPE_WORDS[typ]} (got {_toml(got)})"
    if typ == "too_long":
        return f"{key}: at most {ctx.get('max_length')} values (got {len(got) if hasattr(got, '__len__') else got!r})"
    if typ in ("int_parsing", "int_type", "int_from_float", "float_parsing", "float_type", "bool_parsing", "bool_type", "string_type", "list_type", "model_type", "model_attributes_type", "dict_type"):
        return f"{key}: {err['msg'].lower()} (got {got!r})"
    return f"{key}: {err['msg']} (got {got!r})" if key else err["msg"]
