"""A run's page-utilization ceiling (layouts/ceiling.py), computed in the parent after the run.

The pattern is seeded, so the parent replays the ids of every step the child
ran (nothing is sent or stored per step) and cuts them into the sampler's
windows by the timeline's ``step`` column: window j holds the steps reported
between samples j-1 and j, the same steps whose ``useful_bytes`` the window's
row counts (the counter follows the child's progress messages, sent at least
every 50 ms, so a window's steps may lag its written pages by that much).

Keys added to metrics.json:
- ``page_utilization_ceiling``: useful bytes / pages of the co-activation
  groups of every window packed tight in the layout's record packing;
- ``page_utilization_packed``: the same useful bytes / every window's distinct
  useful bytes packed into whole pages (the bound for any placement);
- ``state_utilization_of_ceiling`` = state_page_utilization / ceiling;
- ``ceiling_packing`` ([hot, cold] bytes) and ``ceiling_useful_bytes`` (equal
  to ``useful_bytes`` when every step fell in a window).
"""

from __future__ import annotations

import itertools
from typing import Any

import pandas as pd

NULL = {"page_utilization_ceiling": None, "page_utilization_packed": None, "state_utilization_of_ceiling": None,
        "ceiling_packing": None, "ceiling_useful_bytes": None}


def ceiling_metrics(config: Any, timeline: pd.DataFrame, metrics: dict[str, Any]) -> dict[str, Any]:
    """The ceiling keys for a finished run (all None when writes were not sampled)."""
    from locality.layouts import LAYOUTS
    from locality.layouts.ceiling import ColdTouches, Ceiling
    from locality.population import make_pattern

    if metrics.get("page_utilization") is None or "step" not in timeline or len(timeline) < 2:
        return dict(NULL)
    n = int(config.workers)
    packing = LAYOUTS[config.layout].PACKING
    if packing is None:  # objects: its measured bytes per worker, packed back to back
        bpw = metrics.get("bytes_per_worker")
        if not bpw or bpw <= 0:
            return dict(NULL)
        packing = (int(round(bpw)), 0)
    params = {k: v for k, v in config.pattern.model_dump().items() if k != "name"}
    stream = make_pattern(config.pattern.name, n, seed=int(config.seed), **params).steps()
    touches = ColdTouches(n, int(config.seed))
    bounds = timeline["step"].astype(int).tolist()
    for _ in range(bounds[0]):
        touches.step(next(stream))
    out = Ceiling(packing=(int(packing[0]), int(packing[1])), once_per_window=config.window_steps is not None)
    for lo, hi in zip(bounds, bounds[1:]):
        out.add_window([touches.step(ids) for ids in itertools.islice(stream, max(0, hi - lo))], n)
    if not out.pages:
        return dict(NULL)
    state = metrics.get("state_page_utilization")
    return {
        "page_utilization_ceiling": out.utilization,
        "page_utilization_packed": out.packed_utilization,
        "state_utilization_of_ceiling": state / out.utilization if state is not None else None,
        "ceiling_packing": list(out.packing),
        "ceiling_useful_bytes": out.useful_bytes,
    }
