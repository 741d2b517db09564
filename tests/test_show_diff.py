"""`locality show` and `locality diff` on fixture runs: exact text, JSON and CSV."""

from __future__ import annotations

import json

import pytest

from fixtures_runs import make_run
from locality.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def times(run) -> tuple[str, str]:
    m = json.loads((run / "manifest.json").read_text())
    return m["created"], m["finished"]


@pytest.fixture
def runs(tmp_path):
    d = tmp_path / "runs"
    objects = make_run(d, "objects", "objects", bytes_per_worker=1000.0, page_utilization=0.016)
    # Three repeats of one slab config (seeds 1-3) beside it: the noise of B.
    slabs = [make_run(d, f"slab-{s}", "slab", bytes_per_worker=100.0 + s,
                      config={"workers": 1000, "layout": "slab", "scheduler": "lean", "seed": s,
                              "pattern": {"name": "sheet", "p": 0.01}, "steps": 60}) for s in (1, 2, 3)]
    return objects, slabs


def test_show_text(runs, capsys):
    objects, _ = runs
    created, finished = times(objects)
    rc, out, err = run_cli(capsys, "show", str(objects))
    assert rc == 0 and err == ""
    assert out == f"""{objects}  (run objects, complete)
  created {created}, finished {finished}
config
  workers                1000
  layout                 objects
  scheduler              lean
  steps                  60
  seed                   1
  pattern.name           sheet
  pattern.p              0.01
metrics
  bytes / worker (B)                          1,000
  page utilization, whole process (%)           1.6
  mean WSS, whole process (MiB)             0.03125
  refault rate (% WSS/min)                        0
  latency p50 (µs)                             50.5
  latency p99 (µs)                               99
  activations / s                            12,345
  relocation (ms / step)                          0
  swapped pages (max)                             0
  sampler overhead (%)                          0.8
  cold after 1 s (%)                             50
  cold after 10 s (%)                            25
files
  {objects}/manifest.json
  {objects}/metrics.json
  {objects}/timeline.csv
  {objects}/pages.npz
  {objects}/latency.csv
"""


def test_show_json_and_csv(runs, capsys):
    objects, _ = runs
    created, finished = times(objects)
    rc, out, _ = run_cli(capsys, "show", str(objects), "--json")
    doc = json.loads(out)
    assert rc == 0
    assert set(doc["files"]) == {"manifest.json", "metrics.json", "timeline.csv", "pages.npz", "latency.csv"}
    assert all(doc["files"][name] == (objects / name).stat().st_size for name in doc["files"])
    del doc["files"]
    assert doc == {
        "run_dir": str(objects), "id": "objects", "kind": "run", "status": "complete", "error": None,
        "created": created, "finished": finished,
        "config": {"workers": 1000, "layout": "objects", "scheduler": "lean", "steps": 60, "seed": 1,
                   "pattern.name": "sheet", "pattern.p": 0.01},
        "metrics": [
            {"metric": "bytes_per_worker", "heading": "bytes / worker (B)", "value": 1000.0},
            {"metric": "page_utilization", "heading": "page utilization, whole process (%)", "value": 1.6},
            {"metric": "wss_bytes_mean", "heading": "mean WSS, whole process (MiB)", "value": 0.03125},
            {"metric": "refault_rate_pct_per_min", "heading": "refault rate (% WSS/min)", "value": 0.0},
            {"metric": "latency_p50_us", "heading": "latency p50 (µs)", "value": 50.5},
            {"metric": "latency_p99_us", "heading": "latency p99 (µs)", "value": 99.01},
            {"metric": "activations_per_s", "heading": "activations / s", "value": 12345.0},
            {"metric": "relocation_ms_per_step", "heading": "relocation (ms / step)", "value": 0.0},
            {"metric": "swapped_pages_max", "heading": "swapped pages (max)", "value": 0.0},
            {"metric": "sampler_overhead_pct", "heading": "sampler overhead (%)", "value": 0.8},
            {"metric": "cold_fraction.1", "heading": "cold after 1 s (%)", "value": 50.0},
            {"metric": "cold_fraction.10", "heading": "cold after 10 s (%)", "value": 25.0},
        ],
    }
    rc, out, _ = run_cli(capsys, "show", str(objects), "--format", "csv")
    lines = out.splitlines()
    assert rc == 0 and lines[0] == "run_dir,metric,heading,value"
    assert lines[1] == f"{objects},bytes_per_worker,bytes / worker (B),1000.0"
    assert lines[-1] == f"{objects},cold_fraction.10,cold after 10 s (%),25.0"
    assert len(lines) == 13


def test_diff_with_repeats_flags_what_exceeds_the_noise(runs, capsys):
    objects, slabs = runs
    rc, out, err = run_cli(capsys, "diff", str(objects), str(slabs[0]))
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[:4] == [
        f"A: {objects} (objects, complete)",
        f"B: {slabs[0]} (slab, complete)",
        "config: layout objects -> slab",
        "noise: from 1 run(s) of A's config and 3 of B's (same directory, config equal but seed)",
    ]
    # B's repeats: 101, 102, 103 B/worker, sd 1; A borrows it: 2 x sqrt(2) = 2.83 B, 0.28% of A's 1,000.
    assert lines[5] == "bytes / worker (B)                          1,000           101    0.101x  significant (±0.28%)"
    assert lines[6] == "page utilization, whole process (%)           1.6            50     31.2x  significant (±0%)"
    assert lines[7] == "mean WSS, whole process (MiB)             0.03125       0.03125        1x  within noise (±0%)"
    doc = json.loads(run_cli(capsys, "diff", str(objects), str(slabs[0]), "--json")[1])
    assert doc["run_dirs"] == [str(objects), str(slabs[0])]
    assert doc["repeats"] == {"a": 1, "b": 3}
    assert doc["config_differences"] == {"layout": ["objects", "slab"]}
    assert doc["metrics"][0] == {"metric": "bytes_per_worker", "heading": "bytes / worker (B)", "a": 1000.0, "b": 101.0,
                                 "ratio": 0.101, "noise_pct": pytest.approx(0.2828427), "significant": True}
    rc, out, _ = run_cli(capsys, "diff", str(objects), str(slabs[0]), "--format", "csv")
    header, first = out.splitlines()[:2]
    assert header == "run_a,run_b,metric,heading,a,b,ratio,noise_pct,significant"
    assert first == f"{objects},{slabs[0]},bytes_per_worker,bytes / worker (B),1000.0,101.0,0.101,{2 * 2 ** 0.5 / 10},True"


def test_diff_without_repeats_says_the_noise_is_unknown(tmp_path, capsys):
    a = make_run(tmp_path / "a", "x", "objects", bytes_per_worker=1000.0)
    b = make_run(tmp_path / "b", "y", "slab", bytes_per_worker=250.0)
    rc, out, _ = run_cli(capsys, "diff", str(a), str(b))
    lines = out.splitlines()
    assert lines[3] == ("noise: unknown (no repeats beside either run: store runs of the same config, "
                        "e.g. --grid seed=1,2,3, in the same directory)")
    assert lines[5] == "bytes / worker (B)                          1,000           250     0.25x"


def test_show_missing_run_is_one_error_line(tmp_path, capsys):
    rc, out, err = run_cli(capsys, "show", str(tmp_path / "nope"))
    assert rc == 2 and out == ""
    assert err == f"locality: error: no run directory at {tmp_path / 'nope'} (pass directories written by " \
                  "`locality run`, `probe`, `compare` or `beam`)\n"


def test_bench_csv_is_its_rows_or_every_scalar():
    from locality.cli.output import doc_csv

    assert doc_csv({"rows": [{"name": "mincore", "best_ms": 1.5}, {"name": "pagemap", "best_ms": 31.0}], "size": 4}) == \
        "name,best_ms\nmincore,1.5\npagemap,31.0\n"
    assert doc_csv({"workers": 1000, "ratio_off": {"written": 0.97}, "runs": [1, 2]}) == \
        'key,value\nworkers,1000\nratio_off.written,0.97\nruns,"[1, 2]"\n'


def test_json_and_another_format_disagree(runs, capsys):
    objects, _ = runs
    rc, out, err = run_cli(capsys, "show", str(objects), "--json", "--format", "csv")
    assert rc == 2 and out == ""
    assert err == "locality: error: --json and --format csv disagree; give one of them (see `locality show --help`)\n"
