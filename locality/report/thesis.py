"""Thesis figures from an experiment file and its stored runs alone (no re-run).

An EXPERIMENT.toml is a `locality run` config (the runner's schema) plus two
tables the runner does not validate:

    [grid]      key path -> list of values; `locality sweep` runs their product
    [figures]   where the runs are and which figures to draw from them

    [figures]
    runs = "runs/thesis"            # default: the config's `out`
    out = "reports/figures"
    format = ["pdf", "svg"]
    run_ids = ["a", "b"]            # optional: instead of the [grid] points
    [[figures.figure]]
    name = "bytes_per_worker"       # a name from locality.report.figures.FIGURES
    file = "bytes-per-worker-sheet" # file stem (default: name)
    where = { "pattern.name" = "sheet", "reclaim.policy" = "none" }
    label = "{layout}"              # legend label from config key paths
    [[figures.report]]              # optional: an HTML report (locality report) of some of the runs
    file = "main-job"               # -> OUT/main-job.html
    where = { "pattern.name" = "sheet", "reclaim.policy" = "none" }
    title = "..."                   # default: experiment name, runs, axes
    baseline = "objects"            # default: each group's objects run

Output is deterministic: runs in grid order, figures drawn under the shipped
style with a fixed SVG id salt and no dates, so the same runs give
byte-identical SVG (the HTML reports differ only in their "Written" time).
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from locality.errors import ConfigError, LocalityError
from locality.experiment.config import parse_overrides
from locality.report import figures as figs
from locality.report import foreign  # noqa: F401 - registers the probe and VM figures
from locality.report.figure_files import save as save_figure
from locality.report.data import RunData, load_run_data

FORMATS = ("pdf", "svg", "png")
NON_CONFIG_TABLES = ("grid", "figures")


class MissingRuns(LocalityError):
    """Runs an experiment file names are not stored (or not complete)."""


@dataclass
class FigureRequest:
    name: str
    file: str
    where: dict[str, Any] = field(default_factory=dict)
    label: str | None = None


@dataclass
class FigureSet:
    source: Path
    runs_dir: Path
    run_ids: list[str]
    requests: list[FigureRequest]
    formats: list[str]
    out: Path
    produce: str  # the command that produces the runs
    points: list[Any] = field(default_factory=list)  # the grid's SweepPoints (empty with figures.run_ids)
    needs: str = ""  # what producing the missing runs needs (experiment.plan), for the error
    reports: list["ReportRequest"] = field(default_factory=list)  # HTML reports written beside the figures
    overrides: list[str] = field(default_factory=list)  # the --set it was loaded with

    def missing_points(self) -> list[Any]:
        """Grid points whose run is not stored complete under runs_dir."""
        from locality.experiment.sweep import pending

        return pending(self.points, self.runs_dir, resume=True)


def split_experiment(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list], dict[str, Any]]:
    """TOML dict -> (runner config, grid, figures table)."""
    config = {k: v for k, v in data.items() if k not in NON_CONFIG_TABLES}
    grid = data.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError("grid: must be a table of key path -> non-empty list of values")
    table = data.get("figures") or {}
    if not isinstance(table, dict):
        raise ConfigError("figures: must be a table")
    return config, grid, table


def grid_points(path: Path, grid: dict[str, list], overrides: Sequence[str] = ()) -> list[Any]:
    """The sweep points of the experiment file with ``--set`` overrides: the ids `locality sweep` gives them."""
    from locality.experiment import sweep
    from locality.experiment.config import load_config

    return sweep.points(load_config(path, overrides), grid)


def load_figure_set(path: str | Path, formats: list[str] | None = None, out: str | Path | None = None,
                    overrides: Sequence[str] = ()) -> FigureSet:
    """The figure set of an experiment file; ``overrides`` (``key=value``, as ``--set``) change
    the base config, hence the run ids, exactly as `locality sweep FILE --set ...` does."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"experiment file {str(path)!r} not found", "e.g. experiments/thesis.toml") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"experiment file {str(path)!r}: cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"experiment file {str(path)!r}: invalid TOML: {e}") from None
    config, grid, table = split_experiment(data)
    known = {"runs", "out", "format", "run_ids", "figure", "report"}
    for key in table:
        if key not in known:
            raise ConfigError(f"unknown key 'figures.{key}'", f"allowed: {', '.join(sorted(known))}")

    run_ids = table.get("run_ids")
    sets = "".join(f" --set {shlex.quote(o)}" for o in overrides)
    sweep_hint = f"locality sweep {path}{sets}"  # the sweep reads the file's [grid]
    points: list[Any] = []
    if run_ids is not None:
        if not isinstance(run_ids, list) or not run_ids or not all(isinstance(r, str) and r for r in run_ids):
            raise ConfigError("figures.run_ids: must be a non-empty list of run ids")
    elif grid:
        points = grid_points(path, grid, overrides)
        run_ids = [p.point_id for p in points]
    else:
        raise ConfigError(f"{path}: names no runs", "add a [grid] table or figures.run_ids")

    overridden_out = dict(parse_overrides(overrides)).get("out")
    runs_dir = Path(overridden_out or table.get("runs") or config.get("out") or "runs")
    fmts = formats or table.get("format") or ["pdf", "svg"]
    fmts = [fmts] if isinstance(fmts, str) else list(fmts)
    for f in fmts:
        if f not in FORMATS:
            raise ConfigError(f"figures.format: unknown {f!r} (allowed: {', '.join(FORMATS)})")

    requests = []
    entries = table.get("figure") or [{"name": n} for n in figs.FIGURES if not figs.FIGURES[n].probe_only]
    for i, entry in enumerate(entries):
        where = f"figures.figure[{i}]"
        _check_entry(where, entry, ("name", "file", "where", "label"))
        name = entry.get("name")
        if name not in figs.FIGURES:
            raise ConfigError(f"{where}.name: unknown {name!r} (allowed: {', '.join(figs.FIGURES)})")
        file = _stem(where, entry.get("file") or name)
        requests.append(FigureRequest(name, file, dict(entry.get("where", {})), entry.get("label")))
    reports = [_report_request(i, entry) for i, entry in enumerate(table.get("report") or [])]
    return FigureSet(path, runs_dir, list(run_ids), requests, fmts, Path(out or table.get("out") or "reports/figures"),
                     sweep_hint if grid and table.get("run_ids") is None else f"locality run CONFIG --id RUN_ID --out {runs_dir}",
                     points=points, reports=reports, overrides=list(overrides))


@dataclass
class ReportRequest:
    """One HTML report (``[[figures.report]]``) of the runs matching ``where``, written as OUT/<file>.html."""

    file: str
    where: dict[str, Any] = field(default_factory=dict)
    title: str | None = None
    baseline: str | None = None


def _check_entry(where: str, entry: Any, allowed: tuple[str, ...]) -> None:
    """A [[figures.figure]] or [[figures.report]] table: known keys, ``where`` a table."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a table")
    for key in entry:
        if key not in allowed:
            raise ConfigError(f"unknown key '{where}.{key}'", f"allowed: {', '.join(allowed)}")
    if not isinstance(entry.get("where", {}), dict):
        raise ConfigError(f"{where}.where: must be a table of key path = value")


def _stem(where: str, file: Any) -> str:
    if not isinstance(file, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", file):
        raise ConfigError(f"{where}.file: {file!r} must be a plain file stem (letters, digits, . _ -)")
    return file


def _report_request(i: int, entry: Any) -> ReportRequest:
    where = f"figures.report[{i}]"
    _check_entry(where, entry, ("file", "where", "title", "baseline"))
    file = _stem(where, entry.get("file"))
    return ReportRequest(file, dict(entry.get("where", {})), entry.get("title"), entry.get("baseline"))


def dotted(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def matches(run: RunData, where: dict[str, Any]) -> bool:
    """Every key path equals its value (or is one of them, for a list)."""
    for key, want in where.items():
        value = dotted(run.config, key)
        if not (value in want if isinstance(want, list) else value == want):
            return False
    return True


def _label(template: str, run: RunData) -> str:
    def sub(m: re.Match) -> str:
        value = dotted(run.config, m.group(1))
        return "—" if value is None else str(value)
    return re.sub(r"\{([A-Za-z0-9_.-]+)\}", sub, template)


def load_complete_runs(fs: FigureSet) -> list[RunData]:
    """The named runs, in order; MissingRuns naming every absent or incomplete one."""
    runs, missing = [], []
    for run_id in fs.run_ids:
        run_dir = fs.runs_dir / run_id
        if not (run_dir / "manifest.json").exists():
            missing.append(run_id)
            continue
        run = load_run_data(run_dir)
        if run.status != "complete":
            missing.append(f"{run_id} ({run.status})")
            continue
        runs.append(run)
    if missing:
        shown = ", ".join(missing[:8]) + (f", and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise MissingRuns(
            f"{len(missing)} of {len(fs.run_ids)} runs missing in {fs.runs_dir}: {shown}",
            (f"produce them with: {fs.produce} --out {fs.runs_dir} --resume" if "sweep" in fs.produce
             else f"produce them with: {fs.produce}") + (f"; {fs.needs}" if fs.needs else ""),
        )
    return runs


def write_figures(fs: FigureSet) -> tuple[list[Path], list[str]]:
    """Draw every requested figure in every format.

    All figures are drawn before the first file is written, so a figure that
    cannot be drawn leaves no half-regenerated set behind. Returns the files
    written and notes on runs left out of a figure for lack of data.
    """
    runs = load_complete_runs(fs)
    rendered: list[tuple[FigureRequest, figs.Rendered]] = []
    notes: list[str] = []
    with figs.style():
        for req in fs.requests:
            chosen = [r for r in runs if matches(r, req.where)]
            if not chosen:
                raise MissingRuns(f"figure {req.file}: no stored run matches where = {req.where}",
                                  f"check the [grid] of {fs.source} and the figure's where table")
            for r in chosen:
                r.label = _label(req.label, r) if req.label else (r.layout or r.id)
            try:
                rendered.append((req, figs.render(req.name, chosen)))
            except figs.NoData as e:
                raise MissingRuns(f"figure {req.file}: {e}", "the runs were stored without this data; re-run them") from None
            notes += [f"{req.file}: left out {what}" for what in rendered[-1][1].left_out]
        pages = _render_reports(fs, runs)
        written: list[Path] = []
        for req, result in rendered:
            for fmt in fs.formats:
                path = save_figure(result.figure, fs.out / f"{req.file}.{fmt}", fmt, salt=f"locality-{req.file}")
                written.append(path)
    from locality.experiment.store import atomic_write_text

    written += [atomic_write_text(fs.out / f"{file}.html", html) for file, html in pages]
    return written, notes


def _render_reports(fs: FigureSet, runs: list[RunData]) -> list[tuple[str, str]]:
    """(file stem, HTML) of each requested report, rendered before any file is written."""
    from locality.report.data import label_runs
    from locality.report.html import render_html

    pages = []
    for req in fs.reports:
        chosen = [r for r in runs if matches(r, req.where)]
        if not chosen:
            raise MissingRuns(f"report {req.file}: no stored run matches where = {req.where}",
                              f"check the [grid] of {fs.source} and the report's where table")
        label_runs(chosen)
        command = f"locality figures {fs.source}" + "".join(f" --set {o}" for o in fs.overrides)
        pages.append((req.file, render_html(chosen, title=req.title, baseline=req.baseline, experiment=fs.source.stem,
                                            notes=[f"Regenerate with: {command} (runs in {fs.runs_dir})."])))
    return pages
