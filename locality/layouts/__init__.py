"""Allocation strategies: where each worker's 96-byte state record lives.

``make_layout(name, n, **kw)`` builds one; ``LAYOUTS`` maps names to classes.
Common keywords: ``arena="anon"|"file"``, ``directory`` (for file arenas),
``hugepages`` (False: MADV_NOHUGEPAGE), ``seed``.  Strategy keywords:
clustered-learned ``warmup``; compacting ``window``, ``every``, ``capacity``;
grouped ``group_size``, ``blocks`` (hilbert | id).  See base.py for the activation semantics every
strategy implements identically.
"""

from __future__ import annotations

import inspect

from locality.errors import InvalidArgument
from locality.layouts.base import (  # noqa: F401
    COLD_BYTES, COLD_EVERY, HOT_BYTES, PAGE_SIZE, RECORD_BYTES, RECORD_DTYPE, Arena, ArenaError, Layout,
)
from locality.layouts.clustered import ClusteredLayout, ClusteredLearnedLayout
from locality.layouts.compacting import CompactingLayout
from locality.layouts.grouped import GroupedLayout
from locality.layouts.hotcold import HotColdLayout
from locality.layouts.isolated import IsolatedLayout
from locality.layouts.objects import ObjectsLayout
from locality.layouts.slab import SlabLayout

LAYOUTS: dict[str, type[Layout]] = {
    cls.name: cls
    for cls in (ObjectsLayout, SlabLayout, HotColdLayout, ClusteredLayout, ClusteredLearnedLayout, CompactingLayout,
                IsolatedLayout, GroupedLayout)
}


def make_layout(name: str, n: int, **kw) -> Layout:
    """Build layout ``name`` for ``n`` workers; unknown names or keywords raise InvalidArgument."""
    if name not in LAYOUTS:
        raise InvalidArgument(f"unknown layout {name!r}", f"choose one of: {', '.join(LAYOUTS)}")
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
