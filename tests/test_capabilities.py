"""capabilities() against independent readings of the same machine facts."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import UNPRIVILEGED

from locality.kernel import capabilities

caps_module = importlib.import_module("locality.kernel.capabilities")

NAMES = {
    "mincore", "pagemap", "pagemap_pfn", "pagemap_scan", "clear_refs", "process_madvise", "swap", "zram",
    "cgroup_memory", "cgroup_v1_memory", "perf_events", "soft_dirty", "idle_page_tracking", "thp",
}


@pytest.fixture(scope="module")
def caps():
    return capabilities()


def test_every_capability_has_a_verdict_a_reason_and_a_hint_when_missing(caps):
    assert set(caps) == NAMES
    for name, c in caps.items():
        assert isinstance(c["available"], bool), name
        assert c["reason"].strip(), name
        if not c["available"]:
            assert c["hint"].strip(), name
    json.dumps(caps)  # stored in every manifest


def test_instruments_that_do_work_here_are_reported_working(caps):
    # Facts of this machine (docs: DESIGN.md, measured), probed for real by the module.
    for name in ("mincore", "pagemap", "pagemap_scan", "clear_refs", "process_madvise"):
        assert caps[name]["available"], (name, caps[name]["reason"])


def test_pfn_visibility_follows_cap_sys_admin(caps):
    assert caps["pagemap_pfn"]["available"] == (os.geteuid() == 0)
    script = "import json; from locality.kernel import capabilities; print(json.dumps(capabilities()['pagemap_pfn']))"
    out = subprocess.run([*UNPRIVILEGED, sys.executable, "-c", script], capture_output=True, text=True, check=True)
    nobody = json.loads(out.stdout)
    assert nobody["available"] is False and "CAP_SYS_ADMIN" in nobody["reason"]


def test_swap_matches_proc_swaps(caps):
    active = Path("/proc/swaps").read_text().splitlines()[1:]
    assert caps["swap"]["available"] == bool(active)


def test_zram_matches_sysfs(caps):
    assert caps["zram"]["available"] == Path("/sys/block/zram0").exists()


def test_thp_mode_matches_sysfs(caps):
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    mode = next(w.strip("[]") for w in path.read_text().split() if w.startswith("["))
    assert caps["thp"]["mode"] == mode
    assert caps["thp"]["available"] == (mode != "never")


def test_idle_page_tracking_matches_sysfs(caps):
    exists = Path("/sys/kernel/mm/page_idle/bitmap").exists()
    assert caps["idle_page_tracking"]["available"] == exists
    if not exists:
        assert "CONFIG_IDLE_PAGE_TRACKING" in caps["idle_page_tracking"]["reason"]


def test_soft_dirty_matches_kernel_config(caps):
    import gzip

    config = gzip.decompress(Path("/proc/config.gz").read_bytes()).decode()
    assert caps["soft_dirty"]["available"] == ("CONFIG_MEM_SOFT_DIRTY=y" in config)


def test_cgroup_memory_reports_both_hierarchies_precisely(caps):
    mounts = [line.split(" - ") for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    v2 = [left.split()[4] for left, right in mounts if right.split()[0] == "cgroup2"]
    v1 = [left.split()[4] for left, right in mounts if right.split()[0] == "cgroup" and "memory" in right.split()[2].split(",")]
    c = caps["cgroup_memory"]
    if v2:
        controllers = (Path(v2[0]) / "cgroup.controllers").read_text().split()
        assert c["available"] == ("memory" in controllers)
        assert c["v2_mount"] == v2[0] and v2[0] in c["reason"]
    else:
        assert not c["available"]
    assert c["v1_memory_mount"] == (v1[0] if v1 else None)
    assert caps["cgroup_v1_memory"]["available"] == bool(v1)
    if v1 and not c["available"]:
        assert v1[0] in c["reason"]


def test_perf_events_reports_the_paranoid_level(caps):
    paranoid = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    assert caps["perf_events"]["paranoid"] == paranoid
    assert f"perf_event_paranoid={paranoid}" in caps["perf_events"]["reason"]


def test_a_probe_that_raises_is_reported_missing_not_raised(monkeypatch):
    def broken():
        raise OSError(5, "Input/output error")

    monkeypatch.setitem(caps_module.CAPABILITIES, "zram", broken)
    c = capabilities()["zram"]
    assert c["available"] is False and "Input/output error" in c["reason"] and c["hint"]
