"""Allocation strategies: where each worker's 96-byte state record lives.

``make_layout(name, n, **kw)`` builds one; ``LAYOUTS`` maps names to classes.
Common keywords: ``arena="anon"|"file"``, ``directory`` (for file arenas),
``hugepages`` (False: MADV_NOHUGEPAGE), ``seed``.  Strategy keywords:
clustered-learned ``warmup``; compacting ``window``, ``every``, ``capacity``;
grouped ``group_size``.  See base.py for the activation semantics every
strategy implements identically.
"""

from __future__ import annotations

import importlib
import inspect

from locality.errors import InvalidArgument
from locality.layouts.base import (  # noqa: F401
    COLD_BYTES, COLD_EVERY, HOT_BYTES, PAGE_SIZE, RECORD_BYTES, RECORD_DTYPE, Arena, ArenaError, Layout,
)

_MODULES = {
    "objects": ("objects", "ObjectsLayout"),
    "slab": ("slab", "SlabLayout"),
    "hot-cold": ("hotcold", "HotColdLayout"),
    "clustered": ("clustered", "ClusteredLayout"),
    "clustered-learned": ("clustered", "ClusteredLearnedLayout"),
    "compacting": ("compacting", "CompactingLayout"),
    "isolated": ("isolated", "IsolatedLayout"),
    "grouped": ("grouped", "GroupedLayout"),
}


class _Registry(dict):
    """name -> Layout class, importing each strategy module on first use."""

    def __missing__(self, name: str) -> type[Layout]:
        if name not in _MODULES:
            raise KeyError(name)
        module, cls = _MODULES[name]
        value = getattr(importlib.import_module(f"locality.layouts.{module}"), cls)
        self[name] = value
        return value

    def __iter__(self):
        return iter(_MODULES)

    def __len__(self) -> int:
        return len(_MODULES)

    def __contains__(self, name: object) -> bool:
        return name in _MODULES

    def keys(self):
        return list(_MODULES)

    def items(self):
        return [(k, self[k]) for k in _MODULES]

    def values(self):
        return [self[k] for k in _MODULES]


LAYOUTS: dict[str, type[Layout]] = _Registry()


def make_layout(name: str, n: int, **kw) -> Layout:
    """Build layout ``name`` for ``n`` workers; unknown names or keywords raise InvalidArgument."""
    if name not in _MODULES:
        raise InvalidArgument(f"unknown layout {name!r}", f"choose one of: {', '.join(_MODULES)}")
    cls = LAYOUTS[name]
    allowed = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            allowed |= {p for p in inspect.signature(klass.__init__).parameters if p not in ("self", "n", "kw", "ignored", "args", "kwargs", "order")}
    allowed |= {"arena", "directory", "hugepages", "seed"}
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise InvalidArgument(f"layout {name!r} has no option {unknown[0]!r}",
                              f"options: {', '.join(sorted(allowed))}")
    return cls(int(n), **kw)
