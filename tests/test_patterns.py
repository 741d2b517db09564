"""Activation patterns: reproducibility, shape of each pattern, replay errors."""

from __future__ import annotations

import numpy as np
import pytest

from locality.errors import InvalidArgument, LocalityError
from locality.population import PATTERNS, ReplayFileError, make_pattern
from locality.population.patterns import grid_xy

SYNTHETIC = {
    "uniform": {"p": 0.01},
    "zipf": {"s": 1.1, "p": 0.01},
    "sheet": {"p": 0.01, "radius": 3, "waves": 2},
    "bursty": {"p_on": 0.002, "p_off": 0.2},
}


def take(pattern, steps):
    it = pattern.steps()
    return [next(it) for _ in range(steps)]


@pytest.fixture
def replay_file(tmp_path):
    rng = np.random.default_rng(5)
    rows = ["step,worker"] + [f"{s},{w}" for s in range(30) for w in rng.choice(5000, 40, replace=False)]
    path = tmp_path / "trace.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("name", [*SYNTHETIC, "replay"])
def test_same_seed_same_ids_in_same_order(name, replay_file):
    params = {"path": replay_file} if name == "replay" else SYNTHETIC[name]
    a = take(make_pattern(name, 5000, seed=11, **params), 25)
    b = take(make_pattern(name, 5000, seed=11, **params), 25)
    assert sum(x.size for x in a) > 0
    for x, y in zip(a, b):
        assert x.dtype == np.int64
        assert np.array_equal(x, y)  # same ids, same order
        assert x.size == np.unique(x).size  # a worker fires at most once per step
        assert x.size == 0 or (x.min() >= 0 and x.max() < 5000)
    # a second stream of the same pattern object restarts from the seed
    p = make_pattern(name, 5000, seed=11, **params)
    assert all(np.array_equal(x, y) for x, y in zip(take(p, 25), take(p, 25)))


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_different_seed_different_ids(name):
    a = take(make_pattern(name, 5000, seed=1, **SYNTHETIC[name]), 10)
    b = take(make_pattern(name, 5000, seed=2, **SYNTHETIC[name]), 10)
    assert not all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))


def test_uniform_fires_p_of_the_population():
    steps = take(make_pattern("uniform", 100_000, seed=3, p=0.01), 50)
    sizes = np.array([s.size for s in steps])
    # binomial(100000, 0.01): sd 31 per step, so the mean of 50 is within 1% of 1000
    assert abs(sizes.mean() - 1000) < 10
    # ids are in random order, not sorted
    assert not all(np.all(np.diff(s) > 0) for s in steps)


def _nearest_neighbour_distance(ids: np.ndarray, n: int) -> float:
    x, y = grid_xy(ids, n)
    d = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :]).astype(float)
    np.fill_diagonal(d, np.inf)
    return float(d.min(axis=1).mean())


def test_sheet_neighbours_fire_together():
    n, p = 40_000, 0.005
    sheet = take(make_pattern("sheet", n, seed=4, p=p, radius=3, waves=2), 10)
    uniform = take(make_pattern("uniform", n, seed=4, p=p), 10)
    # total per step is about p*n
    assert 0.5 * p * n < np.mean([s.size for s in sheet]) < 1.5 * p * n
    d_sheet = np.mean([_nearest_neighbour_distance(s, n) for s in sheet])
    d_uniform = np.mean([_nearest_neighbour_distance(s, n) for s in uniform])
    assert d_sheet / d_uniform < 0.25, (d_sheet, d_uniform)


def test_sheet_waves_travel():
    # waves only (a tiny disc budget): the band moves by one cell per step
    n = 10_000
    steps = take(make_pattern("sheet", n, seed=9, p=0.02, radius=1, waves=1), 6)
    sets = [set(s.tolist()) for s in steps]
    # consecutive steps overlap (the front moves one cell), distant ones much less
    assert len(sets[0] & sets[1]) > len(sets[0] & sets[5])


def _ids_digest(steps) -> str:
    import hashlib

    h = hashlib.sha256()
    for s in steps:
        h.update(np.ascontiguousarray(s, dtype="<i8").tobytes())
    return h.hexdigest()


@pytest.mark.parametrize(
    "n, seed, params, digest",
    [
        # sha256 of the first 20 steps' ids, computed with the Sheet code from before `lifetime` existed
        (10_000, 7, {}, "f800bef460dfa6b189436876a85b9a9ee7d9ea01e9e78928303e4767f50d5e61"),
        (30_000, 2, {"waves": 0}, "8fdd178ef8c8dcfd97b2f449488291ebd16a8aac97495619110d49536d5f2f95"),
    ],
)
def test_sheet_lifetime_1_is_the_stream_from_before_lifetime_existed(n, seed, params, digest):
    default = take(make_pattern("sheet", n, seed=seed, **params), 20)
    explicit = take(make_pattern("sheet", n, seed=seed, lifetime=1, **params), 20)
    assert _ids_digest(default) == digest
    assert _ids_digest(explicit) == digest


def test_sheet_lifetime_same_seed_same_ids():
    a = take(make_pattern("sheet", 20_000, seed=5, lifetime=16), 40)
    b = take(make_pattern("sheet", 20_000, seed=5, lifetime=16), 40)
    c = take(make_pattern("sheet", 20_000, seed=6, lifetime=16), 40)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, c))
    assert all(x.size == np.unique(x).size and x.min() >= 0 and x.max() < 20_000 for x in a)


def _kept_from_previous_step(steps) -> np.ndarray:
    """Per step: share of its workers that were also active in the step before."""
    return np.array([np.isin(b, a).mean() for a, b in zip(steps, steps[1:])])


def test_sheet_bursts_persist_for_their_lifetime():
    n, p = 100_000, 0.01
    kept = {}
    for lifetime in (1, 4, 16):
        steps = take(make_pattern("sheet", n, seed=3, p=p, waves=0, lifetime=lifetime), 48)
        # staggered lifetimes keep the per-step count near p*n (no step with all or no bursts)
        sizes = np.array([s.size for s in steps])
        assert 0.9 * p * n < sizes.min() and sizes.max() < 1.1 * p * n, (lifetime, sizes.min(), sizes.max())
        kept[lifetime] = _kept_from_previous_step(steps)
    # lifetime L replaces about 1/L of the bursts per step: measured 0.7%, 75%, 94% kept
    assert kept[1].mean() < 0.05
    assert 0.65 < kept[4].mean() < 0.85
    assert kept[16].mean() > 0.8
    # staggered, not synchronised: even the worst step of L=16 keeps most of its bursts
    assert kept[16].min() > 0.8
    # a burst does move after its lifetime: the active set 16 steps apart shares little
    steps = take(make_pattern("sheet", n, seed=3, p=p, waves=0, lifetime=16), 40)
    assert np.isin(steps[32], steps[16]).mean() < 0.1


def test_sheet_few_long_lived_bursts_move_evenly_spread():
    """13 bursts of 797 workers living 100 steps (the main job's patches): one moves every 7-8 steps."""
    n = 1_000_000
    steps = take(make_pattern("sheet", n, seed=1, p=0.01, radius=16, waves=0, lifetime=100), 201)
    moved = [t for t in range(1, 201) if np.setdiff1d(steps[t], steps[t - 1]).size > 0]
    assert len(moved) == 26  # each of the 13 bursts moves once per 100 steps
    gaps = np.diff(moved)
    assert gaps.min() >= 7 and gaps.max() <= 8, moved


def test_sheet_lifetime_must_be_a_positive_integer():
    for bad in (0, -3, 1.5, "4", True):
        with pytest.raises(InvalidArgument, match="lifetime") as e:
            make_pattern("sheet", 1000, lifetime=bad)
        assert "integer" in str(e.value)


def test_zipf_popular_workers_fire_more_and_popularity_is_not_id_order():
    n = 10_000
    counts = np.zeros(n, np.int64)
    for s in take(make_pattern("zipf", n, seed=6, s=1.2, p=0.01), 200):
        counts[s] += 1
    top = np.argsort(counts)[::-1][:10]
    assert counts[top[0]] == 200  # the most popular worker fires in every step
    assert np.median(counts) == 0  # most workers almost never fire
    assert set(top.tolist()) != set(range(10))


def test_bursty_is_a_two_state_markov_chain():
    n, p_on, p_off = 200_000, 0.002, 0.2
    steps = take(make_pattern("bursty", n, seed=8, p_on=p_on, p_off=p_off), 40)
    frac = np.mean([s.size for s in steps]) / n
    stationary = p_on / (p_on + p_off)
    assert abs(frac - stationary) < 0.1 * stationary
    stay = np.mean([np.isin(a, b).mean() for a, b in zip(steps, steps[1:])])
    assert abs(stay - (1 - p_off)) < 0.02
    assert all(np.all(np.diff(s) > 0) for s in steps)  # id order


def test_replay_gives_the_file_back(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("step,worker\n0,5\n0,3\n2,7\n0,5\n2,1\n\n")
    got = take(make_pattern("replay", 10, path=path), 3)
    assert [g.tolist() for g in got] == [[5, 3], [], [7, 1]]
    it = make_pattern("replay", 10, path=path).steps()
    for _ in range(3):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


@pytest.mark.parametrize(
    "body, line, words",
    [
        ("step,worker\n0,1\n1,x\n", 3, "worker 'x' is not an integer"),
        ("0,1\n1,2\n2,10\n", 3, "worker 10 is outside the population [0, 10)"),
        ("step,worker\n0,1\n0,2,3\n", 3, "expected 2 fields"),
        ("step,worker\n-1,1\n", 2, "step -1 is negative"),
        ("step,worker\n0,1\n\n1.5,2\n", 4, "step '1.5' is not an integer"),
    ],
)
def test_replay_bad_row_names_file_and_line(tmp_path, body, line, words):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(ReplayFileError) as e:
        make_pattern("replay", 10, path=path)
    assert isinstance(e.value, LocalityError)
    assert f"{path}:{line}:" in str(e.value)
    assert words in str(e.value)
    assert e.value.line == line


def test_replay_missing_file(tmp_path):
    with pytest.raises(ReplayFileError, match="no such file"):
        make_pattern("replay", 10, path=tmp_path / "nope.csv")


def test_unknown_pattern_and_parameter_name_the_allowed_values():
    with pytest.raises(InvalidArgument) as e:
        make_pattern("gaussian", 10)
    assert all(name in str(e.value) for name in PATTERNS)
    with pytest.raises(InvalidArgument) as e:
        make_pattern("sheet", 10, radius=2, speed=3)
    assert "'speed'" in str(e.value) and "p, radius, waves" in str(e.value)
    with pytest.raises(InvalidArgument, match="p=1.5"):
        make_pattern("uniform", 10, p=1.5)
    with pytest.raises(InvalidArgument, match="waves"):
        make_pattern("sheet", 10, waves=-1)
    with pytest.raises(InvalidArgument, match="path"):
        make_pattern("replay", 10)
    with pytest.raises(InvalidArgument, match="positive integer"):
        make_pattern("uniform", 0)
