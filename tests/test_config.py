"""Config validation: every bad input is one line naming the key, exit 2, nothing created."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from locality.errors import ConfigError
from locality.experiment.config import (
    ExperimentConfig,
    check_replay,
    layout_names,
    load_config,
    parse_size,
    validate,
    with_overrides,
)

GOOD = """
workers = 1000
layout = "slab"
steps = 10
[pattern]
name = "sheet"
p = 0.02
radius = 2
[sampling]
interval = 0.5
cold_thresholds = [1, 2]
"""


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def error_of(data: dict) -> str:
    with pytest.raises(ConfigError) as e:
        validate(data)
    return str(e.value)


def test_good_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert isinstance(cfg, ExperimentConfig)
    assert (cfg.workers, cfg.layout, cfg.steps) == (1000, "slab", 10)
    assert cfg.pattern_params == {"p": 0.02, "radius": 2, "waves": 2, "lifetime": 1}  # defaults: the pattern's own
    assert cfg.sampling.cold_thresholds == [1.0, 2.0]
    # A dumped config validates to the same config (manifests can be re-run).
    assert validate(cfg.model_dump(mode="json")) == cfg


def test_overrides_are_toml_values(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), ["workers=50", "pattern.radius=4", "layout=objects", "sampling.cold_thresholds=[3, 4]"])
    assert (cfg.workers, cfg.pattern.radius, cfg.layout, cfg.sampling.cold_thresholds) == (50, 4, "objects", [3.0, 4.0])
    # Switching the pattern drops the old pattern's parameters it does not take.
    cfg = load_config(write(tmp_path, GOOD), ["pattern.name=uniform"])
    assert cfg.pattern.name == "uniform" and cfg.pattern.p == 0.02
    assert with_overrides(cfg, [("reclaim.policy", "cgroup"), ("reclaim.limit", "64M")]).reclaim.limit == 64 << 20


@pytest.mark.parametrize(
    "data, message",
    [
        ({"workers": -5, "steps": 1}, "workers: must be > 0 (got -5)"),
        ({"workers": 0, "steps": 1}, "workers: must be > 0 (got 0)"),
        ({"workers": 5, "steps": 1, "pattern": {"name": "sheet", "radus": 3}}, "unknown key 'pattern.radus'"),
        ({"workers": 5, "steps": 1, "bogus": 1}, "unknown key 'bogus'"),
        ({"workers": 5, "steps": 1, "pattern": {"name": "spiral"}}, "pattern.name: unknown 'spiral' (allowed: uniform, zipf, sheet, bursty, replay)"),
        ({"workers": 5, "steps": 1, "scheduler": "trio"}, "scheduler: unknown 'trio' (allowed: lean, asyncio)"),
        ({"workers": 5, "steps": 1, "arena": "disk"}, "arena: unknown 'disk' (allowed: anon, file)"),
        ({"workers": 5, "steps": 1, "pattern": {"name": "uniform", "p": 1.5}}, "pattern.p: must be <= 1.0 (got 1.5)"),
        ({"workers": 5, "steps": 1, "step_interval": -1}, "step_interval: must be >= 0.0 (got -1)"),
        ({"workers": 5, "steps": 1, "sampling": {"cold_thresholds": [1, -2]}}, "sampling.cold_thresholds[1]: must be > 0.0 (got -2)"),
        ({"workers": 5, "steps": 1, "reclaim": {"policy": "pageout-idle"}}, "reclaim: policy 'pageout-idle' needs reclaim.idle_seconds"),
        ({"workers": 5, "steps": 1, "reclaim": {"policy": "lru"}}, "reclaim.policy: unknown 'lru' (allowed: none, pageout-idle, cgroup)"),
        ({"workers": 5, "steps": 1, "reclaim": {"policy": "cgroup", "limit": "lots"}}, "reclaim.limit: must be a size like 512M or a number of bytes (got 'lots')"),
        ({"workers": "many", "steps": 1}, "workers: input should be a valid integer, unable to parse string as an integer (got 'many')"),
        ({"workers": 5}, "set steps or duration (or both: the run stops at whichever comes first)"),
    ],
)
def test_bad_values_name_the_key(data, message):
    assert error_of(data) == message


def test_unknown_layout_lists_the_registry():
    msg = error_of({"workers": 5, "steps": 1, "layout": "slabb"})
    assert msg == f"layout: unknown 'slabb' (allowed: {', '.join(layout_names())})"
    assert "slab" in layout_names() and "objects" in layout_names()


def test_sizes():
    assert parse_size("512M") == 512 << 20
    assert parse_size("1.5G") == 3 << 29
    assert parse_size("4096") == 4096
    assert parse_size(10) == 10
    for bad in ("", "12Q", "-1M", True):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_replay_rows_checked_with_line_numbers(tmp_path):
    good = write(tmp_path, "step,worker\n0,1\n2,2\n\n1,4\n", "good.csv")
    assert check_replay(str(good), workers=5) == 3  # steps 0..2
    cases = {
        "0,1\n1,x\n": "2: worker 'x' is not an integer",
        "0,1\n1,2,3\n": "2: expected 2 fields (step, worker), got 3",
        "0,1\nsoon,2\n": "2: step 'soon' is not an integer",
        "0,1\n1,7\n": "2: worker 7 is outside the population [0, 5)",
        "0,1\n-1,2\n": "2: step -1 is negative",
    }
    for text, what in cases.items():
        p = write(tmp_path, text, "bad.csv")
        with pytest.raises(ConfigError) as e:
            load_config(write(tmp_path, 'workers = 5\nsteps = 1\n[pattern]\nname = "replay"\npath = "bad.csv"\n'))
        assert str(e.value) == (
            f"pattern.path: replay file {p}:{what} (rows are step,worker: integers, 0 <= worker < workers)"
        )


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match=r"^config file '.*missing.toml' not found$"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"invalid TOML"):
        load_config(write(tmp_path, "workers = = 3"))
    with pytest.raises(ConfigError, match=r"is a directory"):
        load_config(tmp_path)


BAD_CONFIGS = {
    "unknown key": (GOOD.replace("radius = 2", "radus = 2"), "unknown key 'pattern.radus'"),
    "negative workers": (GOOD.replace("workers = 1000", "workers = -5"), "workers: must be > 0 (got -5)"),
    "unknown layout": (GOOD.replace('layout = "slab"', 'layout = "slabb"'), "layout: unknown 'slabb' (allowed: "),
    "replay bad row": (
        'workers = 10\nsteps = 1\n[pattern]\nname = "replay"\npath = "r.csv"\n',
        "pattern.path: ",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_cli_bad_config_exits_2_and_creates_nothing(cli, tmp_path, case):
    text, expected = BAD_CONFIGS[case]
    (tmp_path / "r.csv").write_text("0,1\n1,oops\n")
    write(tmp_path, text, "bad.toml")
    before = set(os.listdir(tmp_path))
    rc, out, err = cli("run", "bad.toml", "--out", "runs")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("locality: error: ") and expected in lines[0], err
    if case == "replay bad row":
        assert "r.csv:2: worker 'oops' is not an integer" in lines[0]
    assert "Traceback" not in err and out == ""
    assert set(os.listdir(tmp_path)) == before  # no runs/ directory


def test_cli_unreadable_file_exits_2(cli, tmp_path):
    rc, out, err = cli("run", "nope.toml")
    assert rc == 2 and err.strip() == "locality: error: config file 'nope.toml' not found"
    assert not (tmp_path / "runs").exists()


def test_permission_denied_is_one_line(tmp_path, monkeypatch):
    # Root reads any file, so simulate the refusal at open().
    import builtins

    p = write(tmp_path, GOOD, "locked.toml")
    real_open = builtins.open

    def refuse(file, *a, **kw):
        if str(file) == str(p):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **kw)

    monkeypatch.setattr(builtins, "open", refuse)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value) == f"config file {str(p)!r} is not readable (permission denied)"


def test_cli_set_with_a_bad_value(cli, tmp_path):
    write(tmp_path, GOOD, "c.toml")
    rc, out, err = cli("run", "c.toml", "--set", "workers=-1")
    assert rc == 2 and err.strip() == "locality: error: workers: must be > 0 (got -1)"
    rc, out, err = cli("run", "c.toml", "--set", "novalue")
    assert rc == 2 and "expected key=value" in err
    assert not (tmp_path / "runs").exists()
