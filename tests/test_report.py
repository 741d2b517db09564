"""`locality report`: the HTML says exactly what the stored runs say, escaped, self-contained."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from fixtures_runs import make_probe, make_run
from locality.cli import main
from locality.errors import LocalityError
from locality.report.data import CorruptRun, RunNotFound, load_runs
from locality.report.html import render_html, write_report


class Tables(HTMLParser):
    """Cells of the table with id metrics-table, as text, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []  # the main metrics table
        self.more_rows: list[list[str]] = []  # the collapsed second table
        self.row_attrs: list[dict] = []
        self._in_table = False
        self._cell: list[str] | None = None
        self.figures: dict[str, str] = {}
        self._figure: str | None = None
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href", "xlink:href"):
            if key in a:
                self.srcs.append(a[key])
        if tag == "table" and a.get("id") in ("metrics-table", "metrics-more"):
            self._in_table = True
            self._rows = self.rows if a["id"] == "metrics-table" else self.more_rows
        elif self._in_table and tag == "tr":
            self._rows.append([])
            if self._rows is self.rows:
                self.row_attrs.append(a)
        elif self._in_table and tag in ("td", "th"):
            self._cell = []
        elif tag == "figure":
            self._figure = a["id"]
            self.figures[self._figure] = a["class"]

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False
        elif tag in ("td", "th") and self._cell is not None:
            self._rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(" " + data)


def parse(html: str) -> Tables:
    t = Tables()
    t.feed(html)
    return t


def table(html: str) -> dict[str, dict[str, str]]:
    """run label -> heading -> cell text."""
    t = parse(html)
    out: dict[str, dict[str, str]] = {}
    for rows in (t.rows, t.more_rows):
        if rows:
            head, *body = rows
            for row in body:
                out.setdefault(row[0].replace(" (baseline)", ""), {}).update(zip(head, row))
    return out


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("runs")
    return [
        make_run(d, "r-slab", "slab", bytes_per_worker=120.0, page_utilization=0.30, refault_rate=2.0),
        make_run(d, "r-objects", "objects", bytes_per_worker=1000.0, page_utilization=0.016),
        make_run(d, "r-isolated", "isolated", bytes_per_worker=4096.0, page_utilization=0.02, with_latency=False),
    ]


@pytest.fixture(scope="module")
def three_report(three_runs, tmp_path_factory) -> Path:
    """One report of the three runs, shared (rendering costs seconds)."""
    return write_report(three_runs, tmp_path_factory.mktemp("report") / "reports" / "r.html")


def test_metrics_table_values_and_ratios_to_objects_baseline(three_report):
    out = three_report
    rows = table(out.read_text())
    assert set(rows) == {"slab", "objects", "isolated"}
    assert rows["objects"]["bytes / worker (B)"] == "1,000"  # baseline: no ratio
    assert rows["slab"]["bytes / worker (B)"] == "120 0.12×"
    assert rows["isolated"]["bytes / worker (B)"] == "4,096 4.1×"
    assert rows["slab"]["page utilization, whole process (%)"] == "30 18.8×"
    assert rows["objects"]["page utilization, whole process (%)"] == "1.6"
    # Runs stored without the worker-state pages: that column is empty, not guessed.
    assert rows["slab"]["page utilization, worker state (%)"] == "—"
    assert rows["slab"]["status"] == "complete"
    assert rows["slab"]["workers"] == "1,000"
    assert rows["slab"]["cold after 1 s (%)"] == "50"
    assert rows["slab"]["cold after 10 s (%)"] == "25"
    assert "(baseline)" in parse(out.read_text()).rows[1][0]  # the baseline row comes first


def test_baseline_is_first_run_without_objects(tmp_path):
    runs = [make_run(tmp_path, "a", "slab", bytes_per_worker=200.0), make_run(tmp_path, "b", "hot-cold", bytes_per_worker=50.0)]
    rows = table(write_report(runs, tmp_path / "r.html").read_text())
    assert rows["slab"]["bytes / worker (B)"] == "200"
    assert rows["hot-cold"]["bytes / worker (B)"] == "50 0.25×"


def test_figures_drawn_or_omitted_with_a_note(three_report):
    html = three_report.read_text()
    figures = parse(html).figures
    for name in ("bytes_per_worker", "page_utilization", "wss_over_time", "pareto", "heatmap",
                 "residency_map", "latency_cdf", "page_age"):
        assert figures[f"fig-{name}"] == "drawn", name
    # isolated has no latency.csv: drawn for the others, and the caption says who is missing.
    latency = html[html.index('id="fig-latency_cdf"'):html.index('id="fig-page_age"')]
    assert "isolated: no latency.csv" in latency
    assert latency.count("<svg") == 1
    # No probe runs -> no per-VMA figures attempted.
    assert "fig-vma_rss" not in figures


def test_figure_omitted_when_no_run_has_its_data(tmp_path):
    run = make_run(tmp_path, "a", "slab", with_pages=False, with_latency=False)
    html = write_report([run], tmp_path / "r.html").read_text()
    figures = parse(html).figures
    for name in ("heatmap", "residency_map", "page_age", "latency_cdf"):
        assert figures[f"fig-{name}"] == "omitted"
    assert "Not drawn: no run has latency.csv." in html
    assert "Not drawn: no run has written matrix in pages.npz." in html
    assert figures["fig-bytes_per_worker"] == "drawn"


def test_failed_run_marked_failed_and_left_out_of_figures(tmp_path):
    runs = [make_run(tmp_path, "ok", "objects"),
            make_run(tmp_path, "bad", "compacting", status="failed", error="child exited with status 1: MemoryError",
                     with_metrics=False)]
    html = write_report(runs, tmp_path / "r.html").read_text()
    t = parse(html)
    failed = [a for a in t.row_attrs if "failed" in (a.get("class") or "")]
    assert [a["data-run"] for a in failed] == ["bad"]
    rows = table(html)
    assert rows["compacting"]["status"] == "failed child exited with status 1: MemoryError"
    assert rows["compacting"]["bytes / worker (B)"] == "—"
    assert "compacting: run failed" in html


def test_script_in_names_paths_and_config_is_escaped(tmp_path):
    evil = "<script>alert(1)</script>"
    d = tmp_path / f"dir{evil.replace('/', '_')}"
    runs = [
        make_run(d, f"id{evil.replace('/', '_')}", layout=evil),
        make_run(tmp_path, "cfg", "slab", config={"layout": "slab", "workers": 10, "note": evil, "pattern": {"name": evil}}),
    ]
    html = write_report(runs, tmp_path / "r.html").read_text()
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # layout label and config string
    assert "&lt;script&gt;alert(1)&lt;_script&gt;" in html  # the run path
    # Labels inside the SVG figures are escaped by matplotlib too.
    assert evil not in html


def test_self_contained_no_external_references(three_report):
    html = three_report.read_text()
    t = parse(html)
    assert all(s.startswith(("#", "data:")) for s in t.srcs), [s for s in t.srcs if not s.startswith(("#", "data:"))][:3]
    assert "<link" not in html and "@import" not in html and "url(http" not in html
    assert "default-src 'none'" in html


def test_probe_run_renders_per_vma_figures(tmp_path):
    probe = make_probe(tmp_path, pid=4242)
    html = write_report([probe], tmp_path / "r.html").read_text()
    figures = parse(html).figures
    assert figures["fig-vma_rss"] == "drawn"
    assert figures["fig-vma_referenced"] == "drawn"
    assert "probe 4242" in html and "fig-vma_class_memory" in figures
    # Its row holds what a probe measures (VMAs summed at the last sample), not worker columns of dashes:
    # 6 x 500 pages resident, 40 swapped, half the resident referenced.
    (row,) = table(html).values()
    assert "metrics-more" not in html  # nothing else measured: no second table
    assert {k: v for k, v in row.items() if k not in ("run", "status", "workers")} == {
        "resident, last sample (MiB)": "11.72", "swapped, last sample (MiB)": "0.1562",
        "referenced, last interval (MiB)": "5.859"}
    assert not any(f"fig-{n}" in figures for n in ("bytes_per_worker", "heatmap", "page_age", "pareto"))
    assert "beam.smp" in html  # VMA named by its file


def test_setup_section_shows_machine_and_capabilities(three_runs, three_report):
    html = three_report.read_text()
    manifest = json.loads((three_runs[0] / "manifest.json").read_text())
    assert manifest["machine"]["kernel"] in html
    assert "no swap device is active" in html and "locality swap on" in html
    assert re.search(r"question.*million small", html, re.S)


def test_write_is_atomic_and_readable(three_report):
    out = three_report
    assert [p.name for p in out.parent.iterdir()] == ["r.html"]
    assert out.stat().st_mode & 0o044  # not the temp file's 0600


def test_directory_of_runs_stands_for_its_runs(tmp_path):
    make_run(tmp_path / "sweep", "b", "slab")
    make_run(tmp_path / "sweep", "a", "objects")
    (tmp_path / "sweep" / "notes").mkdir()
    assert [r.id for r in load_runs([tmp_path / "sweep"])] == ["a", "b"]


def test_missing_and_corrupt_runs_are_clear_errors(tmp_path):
    with pytest.raises(RunNotFound, match="no run directory at"):
        load_runs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunNotFound, match="no manifest.json"):
        load_runs([tmp_path / "empty"])
    run = make_run(tmp_path, "x", "slab")
    (run / "metrics.json").write_text("{not json")
    with pytest.raises(CorruptRun, match="metrics.json"):
        load_runs([run])
    assert issubclass(CorruptRun, LocalityError)


def test_cli_report(three_runs, tmp_path, capsys):
    out = tmp_path / "cli.html"
    with pytest.raises(SystemExit) as e:
        main(["report", *map(str, three_runs), "--out", str(out), "--json"])
    assert e.value.code == 0
    assert json.loads(capsys.readouterr().out)["report"] == str(out)
    assert out.read_text().startswith("<!DOCTYPE html>")


def test_cli_report_missing_run_exit_2_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r.html")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no run directory at" in err and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


def test_render_is_deterministic_apart_from_timestamp(three_runs):
    a, b = render_html(load_runs(three_runs[:1])), render_html(load_runs(three_runs[:1]))
    strip = lambda s: re.sub(r"Written \S+ from", "", s)  # noqa: E731
    assert strip(a) == strip(b)


# --- real runs (the runner and the probe, not fixtures) -------------------------


def test_report_of_real_runs_shows_their_stored_metrics(tmp_path):
    from locality.experiment.config import validate
    from locality.experiment.runner import run
    from locality.report import figures as figs
    from locality.report.html import REPORT_STYLE, fmt_number

    dirs, metrics = {}, {}
    for layout in ("objects", "slab"):
        config = validate({"workers": 5000, "layout": layout, "pattern": {"name": "sheet"}, "steps": 20,
                           "step_interval": 0.02, "sampling": {"interval": 0.1, "cold_thresholds": [0.1]}, "seed": 3})
        dirs[layout] = run(config, tmp_path / "runs", run_id=layout, progress=False)
        metrics[layout] = json.loads((dirs[layout] / "metrics.json").read_text())
    html = write_report(list(dirs.values()), tmp_path / "r.html").read_text()
    rows = table(html)
    row, m, base = rows["slab"], metrics["slab"], metrics["objects"]
    assert row["status"] == "complete" and row["workers"] == "5,000"
    assert row["bytes / worker (B)"] == fmt_number(m["bytes_per_worker"], 4) + f" {m['bytes_per_worker'] / base['bytes_per_worker']:.3g}×"

    # Both page utilizations, worker state first, each with its ratio to the objects baseline.
    heads = parse(html).rows[0]
    state_col = "page utilization, worker state (%)"
    whole_col = "page utilization, whole process (%)"
    assert heads.index(state_col) + 1 == heads.index(whole_col)
    for key, col in (("state_page_utilization", state_col), ("page_utilization", whole_col),
                     ("state_wss_bytes_mean", "mean WSS, worker state (MiB)"),
                     ("wss_bytes_mean", "mean WSS, whole process (MiB)")):
        assert isinstance(m[key], float) and isinstance(base[key], float), key
        scale, digits = (100.0, 3) if "utilization" in key else (1 / 2**20, 4)
        assert rows["objects"][col] == fmt_number(base[key] * scale, digits)
        assert row[col] == fmt_number(m[key] * scale, digits) + f" {m[key] / base[key]:.3g}×"
    assert m["state_page_utilization"] > m["page_utilization"]  # the state pages are a subset of those written

    figures = parse(html).figures
    assert all(figures[f"fig-{n}"] == "drawn" for n in ("bytes_per_worker", "page_utilization", "wss_over_time",
                                                        "heatmap", "residency_map", "latency_cdf", "page_age"))
    # The page utilization figure: worker state panel, then whole process, bars = the stored metrics in %.
    with figs.style(**REPORT_STYLE):
        fig = figs.render("page_utilization", load_runs(list(dirs.values()))).figure
    assert [ax.get_xlabel() for ax in fig.axes] == [state_col, whole_col]
    for ax, key in zip(fig.axes, ("state_page_utilization", "page_utilization")):
        assert [p.get_width() for p in ax.patches] == [100 * metrics[k][key] for k in ("objects", "slab")]


def test_page_utilization_figure_of_runs_without_state_pages_is_the_whole_process(three_runs):
    from locality.report import figures as figs

    with figs.style():
        rendered = figs.render("page_utilization", load_runs(three_runs))
    (ax,) = rendered.figure.axes
    assert ax.get_xlabel() == "page utilization, whole process (%)"
    assert [p.get_width() for p in ax.patches] == [30.0, 1.6, 2.0]
    assert "slab: no worker state page utilization" in rendered.left_out


def test_report_of_a_real_probe_shows_the_touched_file(tmp_path):
    from locality.report import foreign

    import subprocess
    import sys

    from childproc import Child

    from locality.report import figures as figs

    run_dir = tmp_path / "probe"
    with Child(pages=256, backing="file", directory=tmp_path) as child:
        child.touch(list(range(64)))
        # As a user runs it: `locality probe PID` in its own process.
        subprocess.run([sys.executable, "-m", "locality", "probe", str(child.pid), "--interval", "100ms",
                        "--duration", "300ms", "--out", str(run_dir), "--json"], check=True, capture_output=True)
        maps = Path(f"/proc/{child.pid}/maps").read_text()
    arena = next(line.split()[-1] for line in maps.splitlines() if line.endswith(".arena"))
    (run,) = load_runs([run_dir])
    t, names, values = foreign._vma_series(run, "rss_bytes", top=1000)
    series = values[names.index(Path(arena).name)]
    assert series.tolist() == [64 * 4096] * len(t)  # exactly the touched pages, every sample
    html = write_report([run_dir], tmp_path / "r.html").read_text()
    assert parse(html).figures["fig-vma_rss"] == "drawn"


def test_pages_state_bits_are_the_runs_state_columns(tmp_path):
    from locality.experiment import load_run
    from locality.experiment.config import validate
    from locality.experiment.runner import run

    config = validate({"workers": 3000, "layout": "hot-cold", "pattern": {"name": "uniform", "p": 0.05}, "steps": 5,
                       "step_interval": 0.0, "sampling": {"interval": 0.1, "cold_thresholds": [0.1]}, "seed": 1})
    run_dir = run(config, tmp_path, run_id="hc", progress=False)
    (data,) = load_runs([run_dir])
    pages = load_run(run_dir).pages
    arenas = [i for i, name in enumerate(data.pages.regions) if name.startswith("arena:")]
    assert sorted(data.pages.regions[i] for i in arenas) == ["arena:cold", "arena:hot"]
    # hot-cold state = its two arenas, every page of them, nothing else.
    assert data.pages.state.tolist() == np.isin(pages["region"], arenas).tolist()
    assert int(data.pages.state.sum()) == data.metrics["state_pages"]


def test_runs_that_shared_a_node_are_flagged(tmp_path):
    from locality.experiment import store

    alone = make_run(tmp_path, "alone", "slab")
    shared = make_run(tmp_path, "shared", "objects")
    store.update_manifest(alone, node={"hostname": "n1"}, shared_node_with=[])
    store.update_manifest(shared, node={"hostname": "n2"}, shared_node_with=["layout=slab-x", "layout=grouped-y"])
    html = render_html(load_runs([alone, shared]))
    notes = re.findall(r'<p class="note">(.*?)</p>', html, flags=re.S)
    flagged = [n for n in notes if "shared" in n]
    assert len(flagged) == 1
    assert "n2" in flagged[0] and "layout=slab-x, layout=grouped-y" in flagged[0]


def test_sweep_tree_grouped_with_baseline_option_and_skips_named(tmp_path, capsys):
    from fixtures_runs import make_sweep

    make_sweep(tmp_path / "runs")
    out = tmp_path / "r.html"
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path / "runs"), "--out", str(out), "--baseline", "slab", "--json"])
    assert e.value.code == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["run_dirs"]) == 12
    assert doc["skipped"] == [
        {"path": str(tmp_path / "runs" / "thesis" / "broken"),
         "reason": f"cannot read {tmp_path / 'runs' / 'thesis' / 'broken' / 'metrics.json'}: "
                   "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"},
        {"path": str(tmp_path / "runs" / "thesis" / "scratch"), "reason": "no manifest.json: not a run directory"},
    ]
    rows = table(out.read_text())
    # Each ratio against the slab run of its own group: uniform objects 2,000 / uniform slab 400.
    assert rows["objects · uniform · none"]["bytes / worker (B)"] == "2,000 5×"
    assert rows["objects · sheet · none"]["bytes / worker (B)"] == "1,000 10×"
    assert rows["slab · sheet · pageout-idle"]["bytes / worker (B)"] == "100"  # a baseline: no ratio
    html = out.read_text()
    assert "Found 12 runs under" in html and "skipped 2:" in html
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "x.html"), "--baseline", "nope"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == ("locality: error: --baseline 'nope' matches no run (give a layout (objects), "
                   "a run label or a run id from the report)\n")
    assert not (tmp_path / "x.html").exists()
