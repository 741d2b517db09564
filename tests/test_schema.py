"""The store schema: every writer's files against it, and docs/internals.md generated from it."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from childproc import Child

from locality.experiment import schema, store
from locality.experiment.config import validate
from locality.experiment.probe import probe
from locality.experiment.runner import run


@pytest.fixture(autouse=True)
def strict_schema(monkeypatch):
    """Here an undeclared column or key is an error (elsewhere a warning, which pytest lists)."""
    monkeypatch.setenv("LOCALITY_STRICT_SCHEMA", "1")


def metrics_problems(kind: str, metrics: dict) -> list[str]:
    problems = []
    for key, value in metrics.items():
        field = schema.metrics_field(kind, key)
        problem = f"{key}: not declared" if field is None else schema.value_problems(field, value)
        if problem:
            problems.append(problem)
    return problems


def test_docs_are_generated_from_the_schema():
    text = schema.DOCS.read_text()
    assert schema.docs_with_schema(text) == text, "run `python -m locality.experiment.schema --docs`"
    for kind in schema.KINDS:
        for f in schema.TIMELINE[kind]:
            assert f"| `{f.name}` |" in text


def test_a_run_writes_exactly_what_the_schema_declares(tmp_path):
    cfg = validate({"workers": 3000, "steps": 6, "step_interval": 0.02, "layout": "slab",
                    "pattern": {"name": "uniform", "p": 0.1}, "sampling": {"interval": 0.04, "cold_thresholds": [0.05, 1]}})
    d = run(cfg, tmp_path, run_id="r", progress=False)
    timeline = pd.read_csv(d / "timeline.csv")
    assert len(timeline) >= 3
    assert schema.frame_problems("run", timeline) == []
    # Every declared column is written by a sampled run with write tracking and state pages.
    declared = {f.name for f in schema.TIMELINE["run"]}
    assert set(timeline.columns) - {"cold_pages_0.05", "cold_pages_1"} == declared - {"cold_pages_<T>"}
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics_problems("run", metrics) == []
    # paging_error is written only when the paging figures could not be computed
    assert set(metrics) == {f.name for f in schema.METRICS["run"]} - {"paging_error"}


def test_a_probe_writes_exactly_what_the_schema_declares(tmp_path):
    with Child(pages=8) as c:
        c.touch([0, 1, 2])
        d = probe(c.pid, tmp_path / "p", interval=0.1, duration=0.25)
    timeline = pd.read_csv(d / "timeline.csv")
    assert len(timeline) and schema.frame_problems("probe", timeline) == []
    assert list(timeline.columns) == [f.name for f in schema.TIMELINE["probe"]]


def test_an_undeclared_column_or_key_is_an_error_in_tests():
    with pytest.raises(schema.SchemaError, match="no_such_column not declared"):
        store.row("run", {"t": 0.0, "no_such_column": 3})
    with pytest.raises(schema.SchemaError, match="speedup not declared"):
        store.check_metrics("beam", {"workers": 1, "speedup": 2.0})
    assert store.row("run", {"t": 0.5, "cold_pages_2.5": 7}) == {"t": 0.5, "cold_pages_2.5": 7}


def test_value_types_are_checked():
    f = schema.metrics_field("run", "bytes_per_worker")
    assert schema.value_problems(f, 12.5) is None and schema.value_problems(f, None) is None
    assert "declared float" in schema.value_problems(f, "12")
    assert "not nullable" in schema.value_problems(schema.metrics_field("run", "workers"), None)
    assert schema.frame_problems("run", pd.DataFrame({"t": [0.0], "step": [1.5]})) == ["step: not whole numbers"]


@pytest.mark.beam
def test_a_beam_run_writes_what_the_schema_declares(tmp_path):
    """The VM driver's timeline and metrics, declared in the schema (the driver's writer is wired to it separately)."""
    import shutil

    from locality.experiment.beam import BeamConfig, run_beam

    if shutil.which("escript") is None:
        pytest.skip("no Erlang here (apt-get install erlang-nox)")
    d = run_beam(BeamConfig(processes=2000, pattern="uniform", p=0.05, steps=3, interval=0.05, windows=(0.1,)),
                 tmp_path, progress=False)
    assert schema.frame_problems("beam", pd.read_csv(d / "timeline.csv")) == []
    assert metrics_problems("beam", json.loads((d / "metrics.json").read_text())) == []
