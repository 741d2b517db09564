"""The store schema: every timeline column and metrics key of each kind of run, once.

Writers build their rows with ``row(kind, values)`` and check their metrics
with ``check_metrics(kind, metrics)``; an undeclared name is an error with
``LOCALITY_STRICT_SCHEMA=1`` (tests/test_schema.py runs a run, a probe and a
VM run so) and a warning otherwise. docs/internals.md's store tables are rendered from here
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


def _fields(table: str) -> tuple[Field, ...]:
    """Rows ``name  type  unit  meaning``; a type ending in ``?`` may be empty/null; unit ``-``: none."""
    out = []
    for line in table.strip().splitlines():
        name, type_, unit, doc = line.split(None, 3)
        out.append(Field(name, type_.rstrip("?"), "" if unit == "-" else unit, doc, type_.endswith("?")))
    return tuple(out)


TIMELINE: dict[str, tuple[Field, ...]] = {
    "run": _fields("""
t                    float  s      time since the first sample (taken after spawn)
step                 int    count  steps the child had finished
activations          int    count  workers activated since the previous sample
useful_bytes         int    bytes  state bytes the activations since the previous sample touched (each worker once per aligned window)
rss_bytes            int    bytes  resident set (smaps_rollup Rss)
pss_bytes            int    bytes  proportional set (smaps_rollup Pss)
swap_bytes           int    bytes  swapped out (smaps_rollup Swap)
major_faults         int    count  the child's major faults so far (/proc/PID/stat)
minor_faults         int    count  the child's minor faults so far
written_pages        int    pages  tracked pages written since the previous sample (PAGEMAP_SCAN)
discarded_pages      int    pages  tracked pages the kernel reads as written that were dropped since the previous sample (MADV_DONTNEED): no page left, not in written_pages
resident_pages       int    pages  tracked pages present in RAM
swapped_pages        int    pages  tracked pages in swap (uffd-wp markers excluded)
unresolved_pages     int    pages  tracked pages in swap or holding a uffd-wp marker, which a reader without CAP_SYS_ADMIN cannot tell apart (0 as root); in neither resident_pages nor swapped_pages
populated_pages      int    pages  tracked pages present or swapped
refaulted_pages      int    pages  tracked pages back in RAM since the previous sample after being swapped
paged_out_pages      int    pages  tracked pages that went from RAM to swap since the previous sample
tracked_pages        int    pages  pages the sampler tracks (arenas and heap VMAs)
pageout_bytes        int    bytes  bytes the reclaim policy advised out after this sample
sample_ms            float  ms     the sampler's time for this sample
policy_ms            float  ms     the reclaim policy's time after it (e.g. MADV_PAGEOUT)
written_state_pages  int    pages  written pages holding worker state (written AND state)
cold_pages_<T>       int    pages  populated tracked pages not written for T seconds
"""),
    "probe": _fields("""
t                 float  s        time since the first sample
sample            int    count    sample number
vma               int    -        index of the VMA in pages.npz `regions` (start, end, perms, offset, inode, path)
start             int    address  first byte of the VMA
end               int    address  first byte after the VMA
perms             str    -        permissions as in /proc/PID/maps
path              str?   -        backing file or [heap], [stack], ... (empty: anonymous)
rss_bytes         int    bytes    resident set (smaps_rollup Rss)
pss_bytes         int    bytes    proportional set (smaps_rollup Pss)
swap_bytes        int    bytes    swapped out (smaps_rollup Swap)
referenced_bytes  int?   bytes    referenced since the previous sample (empty without --track-refs and at sample 0)
anonymous_bytes   int    bytes    anonymous memory of the VMA
anon_huge_bytes   int    bytes    anonymous memory in transparent huge pages
resident_pages    int    pages    pages present in RAM (pagemap)
swapped_pages     int    pages    pages in swap (pagemap)
minor_faults      int    count    the target's minor faults so far
major_faults      int    count    the target's major faults so far
sample_ms         float  ms       the sampler's time for this sample
"""),
    "beam": _fields("""
t                      float  s      time since sampling began
rss_bytes              int    bytes  resident set (smaps_rollup Rss)
pss_bytes              int    bytes  proportional set (smaps_rollup Pss)
swap_bytes             int    bytes  swapped out (smaps_rollup Swap)
referenced_bytes       int    bytes  referenced since the window began (smaps, with --track-refs)
anon_rss_bytes         int    bytes  resident anonymous memory of the VM
anon_referenced_bytes  int    bytes  referenced anonymous memory since the window began
step                   int    count  last activation step the VM reported (-1: none yet)
activations            int    count  processes the last step activated
resident_pages         int    pages  tracked pages present in RAM
swapped_pages          int    pages  tracked pages in swap
major_faults           int    count  the VM's major faults since sampling began
minor_faults           int    count  the VM's minor faults since sampling began
refaulted_pages        int    pages  paged-out pages that came back since the previous sample
accessed_pages         int?   pages  pages accessed since the page-out (with --pageout-watch)
window_age_s           float  s      time since the current referenced window began
"""),
}


_COMMON_METRICS = _fields("""
workers                   int     count     workers (processes) in the population
layout                    str     -         allocation strategy (`beam` for a VM)
scheduler                 str     -         scheduler (`beam` for a VM)
pattern                   str     -         activation pattern
steps                     int     count     activation steps run
activations               int     count     workers activated in all
bytes_per_worker          float?  B/worker  growth of the process's memory from empty to spawned / workers
wss_pages_mean            float?  pages     mean working set per window
wss_bytes_mean            float?  bytes     wss_pages_mean x page size
cold_fraction             dict?   fraction  T seconds -> share of pages untouched for T
refault_rate_pct_per_min  float?  %/min     pages brought back per minute, % of the working set
latency_p50_us            float?  us        median activation latency
latency_p99_us            float?  us        99th percentile activation latency
activations_per_s         float?  1/s       activations per second of stepping
sampler_overhead_pct      float?  %         the sampler's share of the run's wall time
swapped_pages_max         int     pages     most tracked pages in swap at one sample
spawn_s                   float?  s         time to spawn the workers
""")


METRICS: dict[str, tuple[Field, ...]] = {
    "run": _COMMON_METRICS + _fields("""
arena                         str     -          arena backing: anon or file
reclaim                       str     -          reclaim policy
page_size                     int     bytes      base page size
pss_empty_bytes               int?    bytes      the child's PSS before spawning
pss_spawned_bytes             int?    bytes      the child's PSS after spawning
owned_empty_bytes             int?    bytes      the child's USS (Private_Clean + Private_Dirty) before spawning
owned_spawned_bytes           int?    bytes      the child's USS after spawning; bytes_per_worker is its growth / workers
bytes_per_worker_pss          float?  B/worker   growth of the child's PSS from empty to spawned / workers
useful_bytes                  int     bytes      state bytes the activations touched
page_utilization              float?  fraction   useful bytes / (written pages x page size), over the full windows
state_pages                   int?    pages      pages holding worker state
state_tracked_pages           int?    pages      of those, pages the sampler tracks
state_page_utilization        float?  fraction   page_utilization over the worker-state pages
state_wss_pages_mean          float?  pages      wss_pages_mean over the worker-state pages
state_wss_bytes_mean          float?  bytes      state_wss_pages_mean x page size
duration_s                    float   s          time from the first to the last sample
refaulted_pages               int?    pages      tracked pages refaulted in all windows
refaults_per_min              float?  pages/min  refaulted pages per minute
major_faults_per_min          float?  1/min      the child's major faults per minute
minor_faults_per_s            float?  1/s        the child's minor faults per second (write tracking shows here)
memory_saved_bytes_mean       float   bytes      mean swap of the child over the samples
activations_per_cpu_s         float?  1/s        activations per CPU second of the stepping thread
relocation_ms_per_step        float?  ms         time a relocating layout spent moving state, per step
reclaim_overhead_pct          float?  %          the reclaim policy's share of the wall time
sampler_overhead_kind         str     -          how sampler_overhead_pct is measured
pageout_bytes                 int     bytes      bytes the reclaim policy advised out in all
idle_profile                  dict?   -          the workload's idle-time profile from the pattern's ids: share_idle_at_least {T s: fraction of workers never woken twice within T, null if the run is shorter}, run_seconds, workers, workers_woken_twice_or_more, gap_histogram {edges_s, counts}, definition
paging                        dict?   -          the simulated page-out-after-T curve for every T: thresholds_s, record_bytes, page_size, budget_pct_wss_per_min; state and process {pages, wss_pages_mean, per-T lists saved_fraction, held_pages, refault_pages, refaults_per_min, refault_pct_wss_per_min, refault_pct_resolution; state adds amplification}; oracle {refault_pages, refault_workers, saved_fraction}
pageout_check                 dict?   -          pageout-idle runs: measured vs simulated refaults of the same run: idle_seconds, scope, state/process {refaulted_written, refaulted_readonly, measured_refaults, simulated_refaults, saved_fraction, measured_refault_pct_wss_per_min}, timeline_refaulted_pages
paging_error                  str?    -          why the paging figures could not be computed (only then)
portions                      dict?   -          portion -> resident_bytes, share_of_rss, tracked_pages, wss_pages_mean, wss_bytes_mean, page_utilization, cold_fraction, paged_out_pages_max, refaulted_pages (experiment/portions.py)
mixed_pages                   int?    pages      tracked pages holding bytes of two or more portions
portions_rss_bytes            int?    bytes      RSS read right after the portions' resident bytes
portions_walk_s               float?  s          the child's walk of the portions it can name, once after spawn
portion_dominating_wss        str?    -          the portion with the largest mean WSS
page_utilization_ceiling      float?  fraction   useful bytes / pages of every window's co-activation groups packed in the layout's record packing (experiment/ceiling.py)
page_utilization_packed       float?  fraction   useful bytes / every window's distinct useful bytes packed into whole pages
state_utilization_of_ceiling  float?  fraction   state_page_utilization / page_utilization_ceiling
ceiling_packing               list?   bytes      [hot, cold] bytes per worker the ceiling packs
ceiling_useful_bytes          int?    bytes      useful bytes of the steps the ceiling replayed
"""),
    "probe": (),
    "beam": _COMMON_METRICS + _fields("""
p                                   float   fraction   share of processes activated per step
hibernate                           bool    -          idle processes wait hibernated
min_heap_size                       int     words      min_heap_size of the spawned processes
state_init                          str     -          how each process builds its state
schedule                            str     -          who draws the activated ids: vm or harness
otp_release                         str     -          OTP release of the VM
erts_version                        str     -          erts version of the VM
bytes_per_process_erlang            float   B/process  mean process_info(memory) of the workers
bytes_per_process_vm                float   B/process  erlang:memory(processes) growth / N, pid table excluded
bytes_per_process_memory_processes  float   B/process  erlang:memory(processes) after spawn / N
bytes_per_process_rss               float   B/process  the VM's RSS growth at spawn / N
bytes_per_process_pss               float   B/process  the VM's PSS growth at spawn / N
pid_table_bytes_per_process         float   B/process  the coordinator's pid tuple growth / N
rss_vs_vm_ratio                     float?  ratio      bytes_per_process_rss / bytes_per_process_vm
rss_vs_vm_agree_15pct               bool    -          that ratio is within 15% of 1
documented_fresh_process_bytes      int     bytes      a fresh process's size as OTP documents it
workers_hibernated                  int     count      workers hibernated after spawn
workers_heap_words_sum              int     words      total heap of the workers after spawn
rss_before_spawn_bytes              int     bytes      the VM's RSS before spawning
rss_after_spawn_bytes               int     bytes      the VM's RSS after spawning
pss_before_spawn_bytes              int     bytes      the VM's PSS before spawning
pss_after_spawn_bytes               int     bytes      the VM's PSS after spawning
erlang_memory_before                dict    bytes      erlang:memory() before spawning
erlang_memory_after_spawn           dict    bytes      erlang:memory() after spawning
erlang_memory_end                   dict    bytes      erlang:memory() at the end
allocator_growth_at_spawn           dict    bytes      allocator -> carriers/blocks growth at spawn
allocators_after_spawn              dict    bytes      allocator statistics after spawn
carriers_after_spawn                dict    bytes      carrier statistics after spawn
mseg_after_spawn                    dict    bytes      mseg_alloc statistics after spawn
rss_growth_at_spawn_by_class        dict    bytes      address class -> RSS growth at spawn
cold_fraction_anon                  dict    fraction   cold_fraction over anonymous memory
cold_fraction_windows_measured      dict    count      windows measured per T
cold_fraction_window_age_s          dict    s          mean age of the windows per T
referenced_by_class                 dict    bytes      window -> address class -> referenced and resident bytes
untouched_after_pageout             dict    fraction   window -> share paged out and not refaulted
pageouts                            list    -          each page-out: t, advised bytes, pages, time
step_elapsed_us_after_pageout       float?  us         median step time right after a page-out
step_elapsed_us_other               float?  us         median step time otherwise
major_faults                        int     count      the VM's major faults during sampling
tracked_pages                       int     pages      pages the sampler tracks
technique                           str     -          technique the run used (`default` for plain `locality beam`)
vm_flags                            list    -          emulator flags beyond +P (the technique's, e.g. +MHas aobf)
processes                           int     count      Erlang processes of the population (workers / group_size, rounded up)
group_size                          int     count      columns per process
spawn_order                         str     -          order the columns were spawned in: id or hilbert
state_store                         str     -          where column state lives: heap or atomics
complete                            bool    -          false when the run was interrupted or failed: the files hold what it measured
bytes_per_process_vm_total          float   B/process  erlang:memory(total) growth / N, pid table excluded
rss_vs_vm_total_ratio               float?  ratio      bytes_per_process_rss / bytes_per_process_vm_total
rss_vs_vm_total_agree_15pct         bool    -          that ratio is within 15% of 1
wss_bytes_by_window                 dict    bytes      window -> referenced bytes of the whole VM at its end (mean)
migrations                          list    -          each migration of migrate-hot: step, processes moved, time
migrated_total                      int     count      processes migrate-hot re-created in all
relocation_s                        float   s          time the migrations took in all
relocation_ms_per_step              float?  ms         migration time per step (migrate-hot)
portions                            dict    -          portion -> resident_bytes, share_of_rss, wss_bytes and cold_fraction per window
"""),
}


@dataclass(frozen=True)
class StoreFile:
    name: str
    kinds: tuple[str, ...]  # which kinds of run write it
    written: str  # how: whole and atomic, or appended while the run runs
    doc: str


# Every file of a run directory. "Growing" files are on disk while the run runs
# (appendstore): a runner killed with SIGKILL leaves them with at most the last
# few seconds missing.
FILES: tuple[StoreFile, ...] = (
    StoreFile("manifest.json", ("run", "probe", "beam"), "atomic, at start, at milestones and at the end",
              "config, versions, machine, runner, status"),
    StoreFile("timeline.csv", ("run", "probe", "beam"), "growing (run, probe): rows appended every few seconds, rewritten whole at the end",
              "one row per sample (tables below); a reader drops a torn last row"),
    StoreFile("pages/chunk-NNNNN.npz", ("run", "probe"), "growing: one chunk atomically every few seconds; removed once pages.npz is written",
              "the samples since the previous chunk and the columns as they are now; a reader of a run without pages.npz merges them"),
    StoreFile("pages.npz", ("run", "probe", "beam"), "atomic, at the end", "page x time bit matrices"),
    StoreFile("latency.csv", ("run", "beam"), "atomic, at the end", "a sample of activation latencies (run: a uniform reservoir of 100,000, kept in the child as "
              "float32 ns: exact below 16.7 ms, within 1e-7 above)"),
    StoreFile("metrics.json", ("run", "beam"), "atomic, at the end", "the run's metrics (tables below); absent if the runner died"),
    StoreFile("portions.csv", ("run",), "atomic, at the end", "the run's memory portions (experiment/portions.py)"),
    StoreFile("vmas.csv", ("beam",), "atomic, at the end", "one row per (sample, VMA) of the VM"),
    StoreFile("steps.json", ("beam",), "atomic, at the end", "the VM's steps as it reported them"),
    StoreFile("beam.json", ("beam",), "atomic, at the end", "the VM's own accounting (erlang:memory, allocators)"),
)


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


def frame_problems(kind: str, frame: Any) -> list[str]:
    """Why a stored timeline (as pandas reads it back) does not fit the schema of ``kind``; [] if it does."""
    import pandas as pd

    problems = []
    for column in frame.columns:
        f = timeline_field(kind, column)
        if f is None:
            problems.append(f"{column}: not declared")
            continue
        values = frame[column]
        if values.isna().any() and not f.nullable:
            problems.append(f"{column}: empty cells, but not nullable")
        values = values.dropna()
        if f.type == "int" and not (pd.api.types.is_integer_dtype(values) or (values % 1 == 0).all()):
            problems.append(f"{column}: not whole numbers")
        elif f.type == "float" and not pd.api.types.is_numeric_dtype(values):
            problems.append(f"{column}: not numbers")
        elif f.type == "str" and len(values) and not pd.api.types.is_string_dtype(values):
            problems.append(f"{column}: not text")
    return problems


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
BEGIN = "<!-- schema:begin -->"
END = "<!-- schema:end -->"


def _table(fields: Iterable[Field]) -> list[str]:
    lines = ["| name | type | unit | meaning |", "|---|---|---|---|"]
    for f in fields:
        kind = f.type + (" or empty" if f.nullable else "")
        lines.append(f"| `{f.name}` | {kind} | {f.unit or '—'} | {f.doc} |")
    return lines


def render_markdown() -> str:
    """The store-schema section of docs/internals.md."""
    out = [BEGIN, "<!-- generated from locality/experiment/schema.py by `python -m locality.experiment.schema --docs` -->", "",
           "#### Files of a run directory", "", "| file | kinds | written | what |", "|---|---|---|---|"]
    out += [f"| `{f.name}` | {', '.join(f.kinds)} | {f.written} | {f.doc} |" for f in FILES] + [""]
    for kind in KINDS:
        out += [f"#### `timeline.csv` ({kind})", ""] + _table(TIMELINE[kind]) + [""]
        if METRICS[kind]:
            out += [f"#### `metrics.json` ({kind})", ""] + _table(METRICS[kind]) + [""]
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
