"""The report of `locality compare`: the layouts' runs side by side, `objects` as the baseline.

The runs are made by ``locality.experiment.compare``; this module only renders them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from locality.experiment.compare import CompareResult
from locality.report.data import RunData, label_runs, load_run_data


@dataclass
class CompareReport:
    report: Path
    runs: list[RunData]

    @property
    def failed(self) -> list[str]:
        return [r.label for r in self.runs if r.failed]


def write_compare_report(result: CompareResult, out: str | Path) -> CompareReport:
    """Write the HTML report of ``result``'s runs to ``out``."""
    from locality.report.html import write_report

    runs = label_runs([load_run_data(d) for d in result.run_dirs])
    for r in runs:  # run ids name layout and case: objects, waves-objects, clustered-pageout-idle-30s
        r.label = r.id
    return CompareReport(write_report(runs, out, title=result.title, notes=result.notes, keep_labels=True), runs)
