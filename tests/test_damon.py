"""System DAMON reader (locality.kernel.damon) against a fake admin tree, and the doctor's section."""

from __future__ import annotations

from pathlib import Path

from locality.kernel import damon


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text + "\n")


def fake_tree(root: Path) -> Path:
    """kdamond 0 on (paddr, one pageout + one stat scheme), kdamond 1 off (vaddr, lru_prio)."""
    k0 = "kdamonds/0"
    _write(root, "kdamonds/nr_kdamonds", "2")
    _write(root, f"{k0}/state", "on")
    _write(root, f"{k0}/pid", "77")
    _write(root, f"{k0}/contexts/nr_contexts", "1")
    _write(root, f"{k0}/contexts/0/operations", "paddr")
    _write(root, f"{k0}/contexts/0/targets/nr_targets", "1")
    (root / k0 / "contexts/0/targets/0").mkdir(parents=True)
    _write(root, f"{k0}/contexts/0/schemes/nr_schemes", "2")
    _write(root, f"{k0}/contexts/0/schemes/0/action", "pageout")
    _write(root, f"{k0}/contexts/0/schemes/0/access_pattern/age/min", "12")
    _write(root, f"{k0}/contexts/0/schemes/0/quotas/bytes", "134217728")
    _write(root, f"{k0}/contexts/0/schemes/0/stats/sz_applied", "4096")
    _write(root, f"{k0}/contexts/0/schemes/1/action", "stat")
    k1 = "kdamonds/1"
    _write(root, f"{k1}/state", "off")
    _write(root, f"{k1}/pid", "-1")
    _write(root, f"{k1}/contexts/0/operations", "vaddr")
    _write(root, f"{k1}/contexts/0/schemes/0/action", "lru_prio")
    return root


def test_reads_every_kdamond_with_operations_and_actions(tmp_path):
    kds = damon.kdamonds(fake_tree(tmp_path))
    assert [(k["index"], k["state"], k["pid"]) for k in kds] == [(0, "on", 77), (1, "off", None)]
    ctx = kds[0]["contexts"][0]
    assert ctx["operations"] == "paddr" and ctx["targets"] == 1
    assert [s["action"] for s in ctx["schemes"]] == ["pageout", "stat"]
    s0 = ctx["schemes"][0]
    assert s0["access_pattern"]["age_min"] == 12 and s0["access_pattern"]["age_max"] is None
    assert s0["quota_bytes"] == 134217728 and s0["stats"]["sz_applied"] == 4096
    assert [s["action"] for s in kds[1]["contexts"][0]["schemes"]] == ["lru_prio"]


def test_only_running_kdamonds_are_active_and_pageout_is_reclaiming(tmp_path):
    root = fake_tree(tmp_path)
    active = damon.active_kdamonds(root)
    assert [k["index"] for k in active] == [0]
    assert damon.reclaiming(damon.kdamonds(root)) == ["kdamond 0 (pid 77): paddr scheme action pageout"]
    assert damon.describe(active[0]) == "kdamond 0 on (pid 77): paddr, schemes: pageout, stat"


def test_reading_writes_nothing(tmp_path):
    root = fake_tree(tmp_path)
    before = {p: (p.read_text(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
    damon.kdamonds(root)
    after = {p: (p.read_text(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
    assert before == after


def test_no_damon_interface_is_an_empty_list(tmp_path):
    assert damon.kdamonds(tmp_path / "absent") == []


def test_doctor_lists_active_kdamonds(cli, monkeypatch, tmp_path):
    rc, out, err = cli("doctor")
    assert rc == 0
    expected = [damon.describe(k) for k in damon.active_kdamonds()]
    assert "system DAMON" in out
    for line in expected or ["no kdamond is on"]:
        assert line in out
    rc, js, _ = cli("doctor", "--json")
    import json

    assert rc == 0 and json.loads(js)["system_damon"] == {"kdamonds": damon.active_kdamonds()}


def test_unreadable_state_is_reported_as_unknown_not_off(tmp_path):
    root = fake_tree(tmp_path)
    (root / "kdamonds/0/state").chmod(0)
    (root / "kdamonds/0/pid").chmod(0)
    import os

    if os.geteuid() == 0:  # root reads through mode 0: stand in for an unprivileged read
        (root / "kdamonds/0/state").unlink()
    (k0,) = [k for k in damon.active_kdamonds(root)]
    assert k0["index"] == 0 and k0["state"] is None
    assert damon.describe(k0) == "kdamond 0: state unknown (its sysfs files are readable by root only)"
