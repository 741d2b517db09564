"""A million lean workers in one process: spawn, 100 sparse steps, RSS bounded."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    from locality.population import Population, make_pattern

    n = 1_000_000
    pop = Population(n, scheduler="lean", pattern=make_pattern("uniform", n, seed=1, p=0.001), seed=1)
    pop.spawn()
    seen = []
    stats = pop.run(100, on_step=lambda r: seen.append(r.ids))
    want = np.zeros(n, np.int64)
    for ids in seen:
        want[ids] += 1
    ref = make_pattern("uniform", n, seed=1, p=0.001).steps()
    same_stream = all(np.array_equal(s, next(ref)) for s in seen)
    fired = np.flatnonzero(want)
    idle = np.random.default_rng(2).choice(np.flatnonzero(want == 0), 2000, replace=False)
    check = np.concatenate([fired, idle])
    got = np.array([pop.activations_of(int(i)) for i in check])
    print(json.dumps({
        "steps": stats.steps,
        "activations": stats.total_activations,
        "expected": int(want.sum()),
        "counts_exact": bool(np.array_equal(got, want[check])),
        "same_stream": same_stream,
        "units": pop.units,
        "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))
    """
)


@pytest.mark.slow
def test_a_million_lean_workers_stay_below_2_gib():
    p = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["units"] == 1_000_000
    assert r["steps"] == 100
    assert r["activations"] == r["expected"]
    assert 90_000 < r["activations"] < 110_000  # 0.1% of a million, 100 times
    assert r["same_stream"] and r["counts_exact"]
    assert r["max_rss"] < 2 * 1024**3, f"peak RSS {r['max_rss'] / 2**20:.0f} MiB"
