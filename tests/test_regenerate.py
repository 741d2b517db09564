"""The figures cannot change silently: regenerated from the committed runs in
tests/data/regen/, they equal the committed SVG files byte for byte.

If this fails after a deliberate change to a figure (or a matplotlib
upgrade), regenerate the expected files as tests/data/regen/experiment.toml
says and commit them with the reason.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import run_cli

DATA = Path(__file__).resolve().parent / "data" / "regen"


def test_committed_run_set_is_small():
    size = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    assert size < 1_000_000, size


def test_figures_regenerate_byte_for_byte(tmp_path):
    rc, out, err = run_cli("figures", str(DATA / "experiment.toml"), "--runs", str(DATA / "runs"), "--out", str(tmp_path),
                           "--json")
    assert rc == 0, err
    written = sorted(Path(p).name for p in json.loads(out)["files"])
    expected = sorted(p.name for p in (DATA / "figures").glob("*.svg"))
    assert written == sorted(expected + ["main-job.html", "sweep.html"])
    changed = [name for name in expected if (tmp_path / name).read_bytes() != (DATA / "figures" / name).read_bytes()]
    assert not changed, f"figures differ from the committed ones: {changed}"
    # The reports beside them: the same runs give the same page, apart from the time it was written.
    again = tmp_path / "again"
    rc, out, err = run_cli("figures", str(DATA / "experiment.toml"), "--runs", str(DATA / "runs"), "--out", str(again))
    assert rc == 0, err
    assert out == f"8 figure files and 2 HTML reports in {again}/ from 6 runs in {DATA / 'runs'}/\n"
    stamp = re.compile(r"Written [0-9T:+-]+ from")
    for name in ("main-job.html", "sweep.html"):
        first, second = ((d / name).read_text() for d in (tmp_path, again))
        assert stamp.sub("", first) == stamp.sub("", second)
    sweep = (tmp_path / "sweep.html").read_text()
    assert "<h1>experiment: 6 runs, layout × pattern.name</h1>" in sweep
    main = (tmp_path / "main-job.html").read_text()
    assert "<h1>The main job at 3,000 workers: every layout on one sheet workload</h1>" in main
