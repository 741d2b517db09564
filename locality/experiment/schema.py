"""The store schema: every timeline column and metrics key of each kind of run, once.

Writers build their rows with ``row(kind, values)`` and check their metrics
with ``check_metrics(kind, metrics)``; an undeclared name is an error under
tests (``LOCALITY_STRICT_SCHEMA=1``, set by tests/conftest.py) and a warning
otherwise. docs/internals.md's store tables are rendered from here
(``python -m locality.experiment.schema --docs`` rewrites them; a test checks
the committed file equals the rendering).

A name may end in ``<T>``: one column or key per value of a parameter (a
cold threshold in seconds, a window), e.g. ``cold_pages_<T>``.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

KINDS = ("run", "probe", "beam")
TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "dict": (dict,), "list": (list,)}


class SchemaError(ValueError):
    """A writer used a column or key the schema does not declare."""


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # a key of TYPES
    unit: str  # s, ms, bytes, pages, B/worker, %, fraction, count, ... ("" for names and labels)
    doc: str
    nullable: bool = False  # may be empty (CSV) / null (JSON) when not measured

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(re.escape(self.name).replace(re.escape("<T>"), r"[0-9.e+-]+") + r"\Z")


def F(name: str, type_: str, unit: str, doc: str, nullable: bool = False) -> Field:  # noqa: N802 - a table row
    return Field(name, type_, unit, doc, nullable)


_RSS = [
    F("rss_bytes", "int", "bytes", "resident set (smaps_rollup Rss)"),
    F("pss_bytes", "int", "bytes", "proportional set (smaps_rollup Pss)"),
    F("swap_bytes", "int", "bytes", "swapped out (smaps_rollup Swap)"),
]

TIMELINE: dict[str, tuple[Field, ...]] = {
    "run": (
        F("t", "float", "s", "time since the first sample (taken after spawn)"),
        F("step", "int", "count", "steps the child had finished"),
        F("activations", "int", "count", "workers activated since the previous sample"),
        F("useful_bytes", "int", "bytes", "state bytes the activations since the previous sample touched"),
        *_RSS,
        F("major_faults", "int", "count", "the child's major faults so far (/proc/PID/stat)"),
        F("minor_faults", "int", "count", "the child's minor faults so far"),
        F("written_pages", "int", "pages", "tracked pages written since the previous sample (PAGEMAP_SCAN)"),
        F("discarded_pages", "int", "pages", "tracked pages the kernel reads as written that were dropped since the "
          "previous sample (MADV_DONTNEED): no page left, not in written_pages"),
        F("resident_pages", "int", "pages", "tracked pages present in RAM"),
        F("swapped_pages", "int", "pages", "tracked pages in swap (uffd-wp markers excluded)"),
        F("unresolved_pages", "int", "pages", "tracked pages in swap or holding a uffd-wp marker, which a reader "
          "without CAP_SYS_ADMIN cannot tell apart (0 as root); in neither resident_pages nor swapped_pages"),
        F("populated_pages", "int", "pages", "tracked pages present or swapped"),
        F("refaulted_pages", "int", "pages", "tracked pages back in RAM since the previous sample after being swapped"),
        F("paged_out_pages", "int", "pages", "tracked pages that went from RAM to swap since the previous sample"),
        F("tracked_pages", "int", "pages", "pages the sampler tracks (arenas and heap VMAs)"),
        F("pageout_bytes", "int", "bytes", "bytes the reclaim policy advised out after this sample"),
        F("sample_ms", "float", "ms", "the sampler's time for this sample"),
        F("policy_ms", "float", "ms", "the reclaim policy's time after it (e.g. MADV_PAGEOUT)"),
        F("written_state_pages", "int", "pages", "written pages holding worker state (written AND state)"),
        F("cold_pages_<T>", "int", "pages", "populated tracked pages not written for T seconds"),
    ),
    "probe": (
        F("t", "float", "s", "time since the first sample"),
        F("sample", "int", "count", "sample number"),
        F("vma", "int", "", "index of the VMA in pages.npz `regions` (start, end, perms, offset, inode, path)"),
        F("start", "int", "address", "first byte of the VMA"),
        F("end", "int", "address", "first byte after the VMA"),
        F("perms", "str", "", "permissions as in /proc/PID/maps"),
        F("path", "str", "", "backing file or [heap], [stack], ... (empty: anonymous)", nullable=True),
        *_RSS,
        F("referenced_bytes", "int", "bytes", "referenced since the previous sample (empty without --track-refs and at sample 0)", nullable=True),
        F("anonymous_bytes", "int", "bytes", "anonymous memory of the VMA"),
        F("anon_huge_bytes", "int", "bytes", "anonymous memory in transparent huge pages"),
        F("resident_pages", "int", "pages", "pages present in RAM (pagemap)"),
        F("swapped_pages", "int", "pages", "pages in swap (pagemap)"),
        F("minor_faults", "int", "count", "the target's minor faults so far"),
        F("major_faults", "int", "count", "the target's major faults so far"),
        F("sample_ms", "float", "ms", "the sampler's time for this sample"),
    ),
    "beam": (
        F("t", "float", "s", "time since sampling began"),
        *_RSS,
        F("referenced_bytes", "int", "bytes", "referenced since the window began (smaps, with --track-refs)"),
        F("anon_rss_bytes", "int", "bytes", "resident anonymous memory of the VM"),
        F("anon_referenced_bytes", "int", "bytes", "referenced anonymous memory since the window began"),
        F("step", "int", "count", "last activation step the VM reported (-1: none yet)"),
        F("activations", "int", "count", "processes the last step activated"),
        F("resident_pages", "int", "pages", "tracked pages present in RAM"),
        F("swapped_pages", "int", "pages", "tracked pages in swap"),
        F("major_faults", "int", "count", "the VM's major faults since sampling began"),
        F("minor_faults", "int", "count", "the VM's minor faults since sampling began"),
        F("refaulted_pages", "int", "pages", "paged-out pages that came back since the previous sample"),
        F("accessed_pages", "int", "pages", "pages accessed since the page-out (with --pageout-watch)", nullable=True),
        F("window_age_s", "float", "s", "time since the current referenced window began"),
    ),
}

_COMMON_METRICS = (
    F("workers", "int", "count", "workers (processes) in the population"),
    F("layout", "str", "", "allocation strategy (`beam` for a VM)"),
    F("scheduler", "str", "", "scheduler (`beam` for a VM)"),
    F("pattern", "str", "", "activation pattern"),
    F("steps", "int", "count", "activation steps run"),
    F("activations", "int", "count", "workers activated in all"),
    F("bytes_per_worker", "float", "B/worker", "growth of the process's memory from empty to spawned / workers", nullable=True),
    F("wss_pages_mean", "float", "pages", "mean working set per window", nullable=True),
    F("wss_bytes_mean", "float", "bytes", "wss_pages_mean x page size", nullable=True),
    F("cold_fraction", "dict", "fraction", "T seconds -> share of pages untouched for T", nullable=True),
    F("refault_rate_pct_per_min", "float", "%/min", "pages brought back per minute, % of the working set", nullable=True),
    F("latency_p50_us", "float", "us", "median activation latency", nullable=True),
    F("latency_p99_us", "float", "us", "99th percentile activation latency", nullable=True),
    F("activations_per_s", "float", "1/s", "activations per second of stepping", nullable=True),
    F("sampler_overhead_pct", "float", "%", "the sampler's share of the run's wall time", nullable=True),
    F("swapped_pages_max", "int", "pages", "most tracked pages in swap at one sample"),
    F("spawn_s", "float", "s", "time to spawn the workers", nullable=True),
)

METRICS: dict[str, tuple[Field, ...]] = {
    "run": _COMMON_METRICS + (
        F("arena", "str", "", "arena backing: anon or file"),
        F("reclaim", "str", "", "reclaim policy"),
        F("page_size", "int", "bytes", "base page size"),
        F("pss_empty_bytes", "int", "bytes", "the child's PSS before spawning", nullable=True),
        F("pss_spawned_bytes", "int", "bytes", "the child's PSS after spawning", nullable=True),
        F("useful_bytes", "int", "bytes", "state bytes the activations touched"),
        F("page_utilization", "float", "fraction", "useful bytes / (written pages over all windows x page size)", nullable=True),
        F("state_pages", "int", "pages", "pages holding worker state", nullable=True),
        F("state_tracked_pages", "int", "pages", "of those, pages the sampler tracks", nullable=True),
        F("state_page_utilization", "float", "fraction", "page_utilization over the worker-state pages", nullable=True),
        F("state_wss_pages_mean", "float", "pages", "wss_pages_mean over the worker-state pages", nullable=True),
        F("state_wss_bytes_mean", "float", "bytes", "state_wss_pages_mean x page size", nullable=True),
        F("duration_s", "float", "s", "time from the first to the last sample"),
        F("refaulted_pages", "int", "pages", "tracked pages refaulted in all windows", nullable=True),
        F("refaults_per_min", "float", "pages/min", "refaulted pages per minute", nullable=True),
        F("major_faults_per_min", "float", "1/min", "the child's major faults per minute", nullable=True),
        F("minor_faults_per_s", "float", "1/s", "the child's minor faults per second (write tracking shows here)", nullable=True),
        F("memory_saved_bytes_mean", "float", "bytes", "mean swap of the child over the samples"),
        F("activations_per_cpu_s", "float", "1/s", "activations per CPU second of the stepping thread", nullable=True),
        F("relocation_ms_per_step", "float", "ms", "time a relocating layout spent moving state, per step", nullable=True),
        F("reclaim_overhead_pct", "float", "%", "the reclaim policy's share of the wall time", nullable=True),
        F("sampler_overhead_kind", "str", "", "how sampler_overhead_pct is measured"),
        F("pageout_bytes", "int", "bytes", "bytes the reclaim policy advised out in all"),
        F("portions", "dict", "", "portion -> resident_bytes, share_of_rss, tracked_pages, wss_pages_mean, wss_bytes_mean, "
          "page_utilization, cold_fraction, paged_out_pages_max, refaulted_pages (experiment/portions.py)", nullable=True),
        F("mixed_pages", "int", "pages", "tracked pages holding bytes of two or more portions", nullable=True),
        F("portions_rss_bytes", "int", "bytes", "RSS read right after the portions' resident bytes", nullable=True),
        F("portions_walk_s", "float", "s", "the child's walk of the portions it can name, once after spawn", nullable=True),
        F("portion_dominating_wss", "str", "", "the portion with the largest mean WSS", nullable=True),
    ),
    "probe": (),
    "beam": _COMMON_METRICS + (
        F("p", "float", "fraction", "share of processes activated per step"),
        F("hibernate", "bool", "", "idle processes wait hibernated"),
        F("min_heap_size", "int", "words", "min_heap_size of the spawned processes"),
        F("state_init", "str", "", "how each process builds its state"),
        F("schedule", "str", "", "who draws the activated ids: vm or harness"),
        F("otp_release", "str", "", "OTP release of the VM"),
        F("erts_version", "str", "", "erts version of the VM"),
        F("bytes_per_process_erlang", "float", "B/process", "mean process_info(memory) of the workers"),
        F("bytes_per_process_vm", "float", "B/process", "erlang:memory(processes) growth / N, pid table excluded"),
        F("bytes_per_process_memory_processes", "float", "B/process", "erlang:memory(processes) after spawn / N"),
        F("bytes_per_process_rss", "float", "B/process", "the VM's RSS growth at spawn / N"),
        F("bytes_per_process_pss", "float", "B/process", "the VM's PSS growth at spawn / N"),
        F("pid_table_bytes_per_process", "float", "B/process", "the coordinator's pid tuple growth / N"),
        F("rss_vs_vm_ratio", "float", "ratio", "bytes_per_process_rss / bytes_per_process_vm", nullable=True),
        F("rss_vs_vm_agree_15pct", "bool", "", "that ratio is within 15% of 1"),
        F("documented_fresh_process_bytes", "int", "bytes", "a fresh process's size as OTP documents it"),
        F("workers_hibernated", "int", "count", "workers hibernated after spawn"),
        F("workers_heap_words_sum", "int", "words", "total heap of the workers after spawn"),
        F("rss_before_spawn_bytes", "int", "bytes", "the VM's RSS before spawning"),
        F("rss_after_spawn_bytes", "int", "bytes", "the VM's RSS after spawning"),
        F("pss_before_spawn_bytes", "int", "bytes", "the VM's PSS before spawning"),
        F("pss_after_spawn_bytes", "int", "bytes", "the VM's PSS after spawning"),
        F("erlang_memory_before", "dict", "bytes", "erlang:memory() before spawning"),
        F("erlang_memory_after_spawn", "dict", "bytes", "erlang:memory() after spawning"),
        F("erlang_memory_end", "dict", "bytes", "erlang:memory() at the end"),
        F("allocator_growth_at_spawn", "dict", "bytes", "allocator -> carriers/blocks growth at spawn"),
        F("allocators_after_spawn", "dict", "bytes", "allocator statistics after spawn"),
        F("carriers_after_spawn", "dict", "bytes", "carrier statistics after spawn"),
        F("mseg_after_spawn", "dict", "bytes", "mseg_alloc statistics after spawn"),
        F("rss_growth_at_spawn_by_class", "dict", "bytes", "address class -> RSS growth at spawn"),
        F("cold_fraction_anon", "dict", "fraction", "cold_fraction over anonymous memory"),
        F("cold_fraction_windows_measured", "dict", "count", "windows measured per T"),
        F("cold_fraction_window_age_s", "dict", "s", "mean age of the windows per T"),
        F("referenced_by_class", "dict", "bytes", "window -> address class -> referenced and resident bytes"),
        F("untouched_after_pageout", "dict", "fraction", "window -> share paged out and not refaulted"),
        F("pageouts", "list", "", "each page-out: t, advised bytes, pages, time"),
        F("step_elapsed_us_after_pageout", "float", "us", "median step time right after a page-out", nullable=True),
        F("step_elapsed_us_other", "float", "us", "median step time otherwise", nullable=True),
        F("major_faults", "int", "count", "the VM's major faults during sampling"),
        F("tracked_pages", "int", "pages", "pages the sampler tracks"),
    ),
}


def _find(fields: Iterable[Field], name: str) -> Field | None:
    for f in fields:
        if f.name == name or ("<T>" in f.name and f.pattern.match(name)):
            return f
    return None


def timeline_field(kind: str, name: str) -> Field | None:
    return _find(TIMELINE[kind], name)


def metrics_field(kind: str, name: str) -> Field | None:
    return _find(METRICS[kind], name)


def _undeclared(what: str, names: list[str]) -> None:
    if not names:
        return
    msg = f"{what}: {', '.join(names)} not declared in locality/experiment/schema.py (add them there)"
    if os.environ.get("LOCALITY_STRICT_SCHEMA"):
        raise SchemaError(msg)
    warnings.warn(msg, stacklevel=3)


def row(kind: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """A timeline row (or part of one) of ``kind``, its column names checked against the schema."""
    _undeclared(f"{kind} timeline column", [k for k in values if timeline_field(kind, k) is None])
    return dict(values)


def check_metrics(kind: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics`` of ``kind``, its keys checked against the schema."""
    _undeclared(f"{kind} metrics key", [k for k in metrics if metrics_field(kind, k) is None])
    return dict(metrics)


def empty_timeline(kind: str) -> Any:
    """An empty timeline of ``kind`` with the columns every sample has (a run stopped before its first)."""
    import pandas as pd

    return pd.DataFrame(columns=[f.name for f in TIMELINE[kind] if f.name in ("t", "rss_bytes", "pss_bytes", "swap_bytes")])


def value_problems(field: Field, value: Any) -> str | None:
    """Why ``value`` does not fit ``field`` (None if it does)."""
    if value is None or (isinstance(value, float) and value != value):
        return None if field.nullable else f"{field.name}: empty, but not nullable"
    if field.type != "bool" and isinstance(value, bool):
        return f"{field.name}: {value!r} is a bool, declared {field.type}"
    if not isinstance(value, TYPES[field.type]):
        return f"{field.name}: {value!r} is {type(value).__name__}, declared {field.type}"
    return None


# -- docs ------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "internals.md"
BEGIN = "<!-- schema:begin (generated by `python -m locality.experiment.schema --docs`; edit schema.py) -->"
END = "<!-- schema:end -->"


def _table(fields: Iterable[Field]) -> list[str]:
    lines = ["| name | type | unit | meaning |", "|---|---|---|---|"]
    for f in fields:
        kind = f.type + (" or empty" if f.nullable else "")
        lines.append(f"| `{f.name}` | {kind} | {f.unit or '—'} | {f.doc} |")
    return lines


def render_markdown() -> str:
    """The store-schema section of docs/internals.md."""
    out = [BEGIN, ""]
    for kind in KINDS:
        out += [f"#### `timeline.csv` of a {kind} run", ""] + _table(TIMELINE[kind]) + [""]
        if METRICS[kind]:
            out += [f"#### `metrics.json` of a {kind} run", ""] + _table(METRICS[kind]) + [""]
    out.append(END)
    return "\n".join(out)


def docs_with_schema(text: str) -> str:
    """``text`` (docs/internals.md) with its generated section replaced by the current rendering."""
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + render_markdown() + text[end:]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["--docs"]:
        print(render_markdown())
        return 0
    text = DOCS.read_text()
    DOCS.write_text(docs_with_schema(text))
    print(f"rewrote the schema section of {DOCS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
