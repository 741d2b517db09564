"""The Erlang VM as a measured population: N BEAM processes, watched from outside.

`population.escript` (locality/experiment/erlang/, shipped as package data; experiments/beam/ links to it) spawns the
processes and drives seeded activation steps; it speaks one JSON object per
line on stdout and takes commands on stdin. This module starts it, asks the
VM for its own accounting (erlang:memory, allocator carriers) and measures
the same VM with the kernel instruments `locality probe` uses: per-VMA
smaps (RSS, PSS, Referenced after clear_refs), pagemap residency, fault
counters, and optionally "page out and watch" (process_madvise
MADV_PAGEOUT, then pages that come back from swap are exactly the pages
the VM accessed). The result is a run directory of kind "beam".

Why not `locality.experiment.probe.probe`: it clears referenced bits at every
sample, while windows of 1, 10 and 60 s need one clear per cycle, read at
each window's end; the per-VMA rows written here (vmas.csv) have the
probe's columns, so the report draws both alike.

The VM is always killed at the end: on error, Ctrl-C and SIGTERM too, and
if locality itself dies, the VM halts on end of stdin.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from locality.kernel.pagemap import pagemap
from locality.kernel.procfs import clear_refs, faults, smaps
from locality.kernel.reclaim import process_pageout
from locality.errors import InvalidArgument, LocalityError, Unsupported
from locality.experiment import store

ESCRIPT_NAME = "population.escript"
INSTALL_HINT = "install the Erlang VM: apt-get install erlang-nox"
PATTERNS = ("uniform", "zipf", "sheet")
STATE_INITS = ("heap", "bif")  # how a worker builds its state (see the escript)
# Who draws the activated ids: the VM (rand exsss, in the escript) or the Python
# harness's own pattern generator (locality.population), sent to the VM before the steps.
SCHEDULES = ("vm", "harness")
# A fresh process on 64-bit OTP: 327 words (Erlang efficiency guide, "Processes").
DOCUMENTED_FRESH_PROCESS_BYTES = 327 * 8
DEFAULT_WINDOWS = (1.0, 10.0, 60.0)
LATENCY_SAMPLE_MAX = 100_000


class BeamError(LocalityError):
    """The Erlang VM failed to start, answer, or reported an error."""


@dataclass(frozen=True)
class BeamConfig:
    """What `locality beam` runs. Validated on construction."""

    processes: int = 1_000_000
    pattern: str = "sheet"
    p: float = 0.01
    steps: int | None = None
    duration: float | None = None
    interval: float = 1.0
    hibernate: bool = False
    min_heap_size: int = 0
    seed: int = 0
    radius: int = 3
    zipf_s: float = 1.1
    track_refs: bool = False
    pageout_watch: bool = False
    windows: tuple[float, ...] = DEFAULT_WINDOWS
    report_ids: bool = False
    state_init: str = "heap"
    schedule: str = "vm"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise InvalidArgument(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        if self.state_init not in STATE_INITS:
            raise InvalidArgument(f"state_init must be one of {', '.join(STATE_INITS)}, not {self.state_init!r}")
        if self.processes < 1:
            raise InvalidArgument(f"processes must be >= 1, not {self.processes}")
        if self.pattern not in PATTERNS:
            raise InvalidArgument(f"pattern must be one of {', '.join(PATTERNS)}, not {self.pattern!r}")
        if not 0 < self.p <= 1:
            raise InvalidArgument(f"p must be in (0, 1], not {self.p}")
        if self.interval <= 0:
            raise InvalidArgument(f"interval must be > 0 seconds, not {self.interval}")
        if self.steps is not None and self.duration is not None:
            raise InvalidArgument("give --steps or --duration, not both")
        if self.steps is not None and self.steps < 0:
            raise InvalidArgument(f"steps must be >= 0, not {self.steps}")
        if self.duration is not None and self.duration <= 0:
            raise InvalidArgument(f"duration must be > 0 seconds, not {self.duration}")
        if self.min_heap_size < 0:
            raise InvalidArgument(f"min_heap_size must be >= 0 words, not {self.min_heap_size}")
        if self.radius < 0:
            raise InvalidArgument(f"radius must be >= 0, not {self.radius}")
        if not self.windows or any(w <= 0 for w in self.windows):
            raise InvalidArgument(f"windows must be positive seconds, not {self.windows}")

    @property
    def n_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        if self.duration is not None:
            return max(1, math.ceil(self.duration / self.interval))
        # Default: long enough for the largest window plus one interval.
        return max(1, math.ceil(max(self.windows) / self.interval) + 1)

    def escript_args(self) -> list[str]:
        return [
            f"n={self.processes}", f"pattern={self.pattern}", f"p={self.p!r}", f"seed={self.seed}",
            f"interval_ms={max(1, round(self.interval * 1000))}",
            f"hibernate={str(self.hibernate).lower()}", f"min_heap_size={self.min_heap_size}",
            f"radius={self.radius}", f"zipf_s={self.zipf_s!r}", f"report_ids={str(self.report_ids).lower()}",
            f"state_init={self.state_init}",
        ]


# --------------------------------------------------------------- the VM


def find_escript() -> str:
    """Path of `escript`; Unsupported with the install hint when Erlang is missing."""
    erl, escript = shutil.which("erl"), shutil.which("escript")
    if not erl or not escript:
        raise Unsupported("the Erlang VM", "erl/escript not found on PATH", INSTALL_HINT)
    return escript


def escript_path() -> Path:
    """The population escript, shipped as package data (experiments/beam/ links to it)."""
    path = Path(__file__).with_name("erlang") / ESCRIPT_NAME
    if not path.is_file():
        raise BeamError(f"{ESCRIPT_NAME} is missing from the installation at {path}", "reinstall locality")
    return path


class BeamVM:
    """A running population escript: send commands, read its JSON events.

    Use as a context manager; leaving it always kills the VM.
    """

    def __init__(self, config: BeamConfig, *, start_timeout: float = 60.0) -> None:
        self.config = config
        escript = find_escript()
        env = dict(os.environ)
        # +P: the process table must hold every worker plus the VM's own.
        plimit = max(1024, int(config.processes * 1.1) + 10_000)
        env["ERL_FLAGS"] = f"+P {plimit} " + env.get("ERL_FLAGS", "")
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=20)
        self.noise: deque[str] = deque(maxlen=20)
        self.proc = subprocess.Popen(
            [escript, str(escript_path()), *config.escript_args()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1, env=env,
            start_new_session=True,  # Ctrl-C reaches locality only; it kills the VM itself
        )
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        try:
            self.hello = self.wait_for("hello", start_timeout)
        except BaseException:
            self.close()
            raise
        self.pid: int = int(self.hello["os_pid"])

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                self._events.put(json.loads(line))
            except json.JSONDecodeError:
                self.noise.append(line)
        self._events.put(None)  # end of output: the VM is gone

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line.rstrip())

    def _died(self) -> BeamError:
        rc = self.proc.poll()
        tail = " | ".join(list(self._stderr)[-3:] + list(self.noise)[-3:])
        return BeamError(f"the Erlang VM exited (status {rc})" + (f": {tail}" if tail else ""),
                         "see the VM's output above; try fewer --processes")

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._died() from None

    def poll(self, timeout: float) -> dict[str, Any] | None:
        """The next event, or None if none arrives within ``timeout`` seconds."""
        try:
            event = self._events.get(timeout=timeout)
        except queue.Empty:
            return None
        if event is None:
            self._events.put(None)  # stay dead for later callers
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            raise self._died()
        if event.get("event") == "error":
            raise BeamError(f"the Erlang VM reported: {event.get('message')}")
        return event

    def wait_for(self, name: str | tuple[str, ...], timeout: float) -> dict[str, Any]:
        """Wait for the event called ``name`` (or any of several); BeamError if none comes in time."""
        names = (name,) if isinstance(name, str) else name
        deadline = time.monotonic() + timeout
        while True:
            event = self.poll(max(0.0, deadline - time.monotonic()))
            if event is None:
                raise BeamError(f"the Erlang VM did not answer within {timeout:.0f} s",
                                "the machine may be short of memory; try fewer --processes")
            if event.get("event") in names:
                return event

    def request(self, command: str, name: str, timeout: float = 120.0) -> dict[str, Any]:
        self.send(command)
        return self.wait_for(name, timeout)

    def close(self) -> None:
        """Stop the VM: close its stdin, then kill its process group. Idempotent."""
        if self.proc.poll() is None:
            # End of stdin halts the VM at once, even in the middle of `steps`.
            try:
                if self.proc.stdin:
                    self.proc.stdin.close()
                self.proc.wait(timeout=3)
            except (subprocess.TimeoutExpired, OSError, ValueError):
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        pid = getattr(self, "pid", None)
        if pid and pid != self.proc.pid and _alive(pid):
            # beam.smp outside the group (should not happen: escript execs it); ours, so kill it.
            os.kill(pid, signal.SIGKILL)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass

    def __enter__(self) -> "BeamVM":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------- VMA classes


def classify(entry: Any, grown: set[tuple[int, int]], binary_addrs: list[int]) -> str:
    """Which part of the VM a mapping holds, as far as its address and name tell.

    OTP 25 reports allocator carriers by size only (instrument:carriers has no
    addresses), so anonymous mappings are told apart by what happened to them:
    those that grew while the processes were spawned hold process heaps and
    structs (eheap_alloc, fix_alloc carriers, which are mseg mmaps); the one
    holding a fresh refc binary holds binary_alloc's carrier.
    """
    path = entry.path
    if any(entry.start <= a < entry.end for a in binary_addrs):
        return "binaries (binary_alloc)" + (" in [heap]" if path == "[heap]" else "")
    if path == "[heap]":
        return "malloc heap (sys_alloc carriers)"
    if path.startswith("[stack") or path == "[stack]":
        return "main stack"
    if path.startswith("["):
        return f"kernel {path}"
    if "memfd:vmem" in path or "jit" in path.lower():
        # OTP's JIT maps its code twice from one memfd: writable and executable views.
        return "JIT code (memfd, dual-mapped)"
    if path.startswith("/"):
        if "x" in entry.perms:
            return "code (beam.smp, shared libraries)"
        return "file-backed data"
    if "x" in entry.perms:
        return "code (beam.smp, shared libraries)"
    if (entry.start, entry.end) in grown:
        return "process heaps and structs (grew at spawn: eheap_alloc, fix_alloc)"
    return "other anonymous (allocator carriers, thread stacks, process table)"


def grown_at_spawn(before: list[Any], after: list[Any]) -> set[tuple[int, int]]:
    """Anonymous mappings after spawn whose resident bytes grew by more than 1 MiB
    or more than half (new mappings count from zero)."""
    grown = set()
    for a in after:
        if a.path or not a.perms.startswith("rw"):
            continue
        # Resident bytes the old mappings had inside this one's range (pro rata).
        prior = 0
        for b in before:
            overlap = min(a.end, b.end) - max(a.start, b.start)
            if overlap > 0 and not b.path:
                prior += b.rss * overlap // max(1, b.size)
        if a.rss - prior > max(1 << 20, prior // 2):
            grown.add((a.start, a.end))
    return grown


class _AddressClasses:
    """Classes of the mappings seen after spawn, looked up by address later, when
    mappings have merged or split (a carrier mapped next to another)."""

    def __init__(self, entries: list[Any], grown: set[tuple[int, int]], binary_addrs: list[int]) -> None:
        self._grown, self._binaries = grown, binary_addrs
        self._spans = sorted((e.start, e.end, e.path, classify(e, grown, binary_addrs)) for e in entries)
        self._starts = [span[0] for span in self._spans]

    def __call__(self, entry: Any) -> str:
        best, best_overlap = None, 0
        i = bisect.bisect_left(self._starts, entry.end) - 1
        while i >= 0 and self._spans[i][1] > entry.start:
            start, end, path, cls = self._spans[i]
            overlap = min(end, entry.end) - max(start, entry.start)
            if path == entry.path and overlap > best_overlap:
                best, best_overlap = cls, overlap
            i -= 1
        return best if best is not None else classify(entry, self._grown, self._binaries)


# --------------------------------------------------------------- tracked pages


@dataclass
class Tracked:
    """A fixed set of the VM's anonymous pages, followed per sample in pagemap."""

    ranges: list[tuple[int, int]]  # [start, end)
    names: list[str]
    page_size: int = os.sysconf("SC_PAGE_SIZE")
    addr: np.ndarray = field(init=False)  # uint64, one entry per page
    region: np.ndarray = field(init=False)  # int32 index into ranges/names

    def __post_init__(self) -> None:
        pages = [np.arange(s, e, self.page_size, dtype=np.uint64) for s, e in self.ranges]
        self.addr = np.concatenate(pages) if pages else np.zeros(0, np.uint64)
        self.region = np.repeat(np.arange(len(pages), dtype=np.int32), [p.size for p in pages])

    def read(self, pid: int) -> tuple[np.ndarray, np.ndarray]:
        """(present, swapped) bool vectors over the tracked pages now."""
        present, swapped = [], []
        for s, e in self.ranges:
            try:
                pm = pagemap(pid, s, e)
                present.append(np.asarray(pm.present, bool))
                swapped.append(np.asarray(pm.swapped, bool))
            except (LocalityError, OSError):
                if not _alive(pid):
                    raise
                # The mapping went away (a carrier was unmapped): neither present nor swapped.
                n = (e - s) // self.page_size
                present.append(np.zeros(n, bool))
                swapped.append(np.zeros(n, bool))
        if not present:
            return np.zeros(0, bool), np.zeros(0, bool)
        return np.concatenate(present), np.concatenate(swapped)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def swap_is_on() -> bool:
    from locality.kernel.swap import swap_active

    return bool(swap_active())


# --------------------------------------------------------------- the run


def run_beam(config: BeamConfig, out: str | os.PathLike, *, run_id: str | None = None,
             progress: bool = True, on_event: Callable[[str], None] | None = None) -> Path:
    """Start the VM, spawn, measure, store a run directory of kind "beam", return it."""
    find_escript()  # fail before creating anything
    if config.pageout_watch and not swap_is_on():
        raise Unsupported("--pageout-watch", "no swap is active, so anonymous pages cannot be paged out",
                          "turn zram swap on first: `locality swap on`")
    with _sigterm_as_interrupt():
        return _run(config, out, run_id, progress, on_event)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends a run like Ctrl-C: marked interrupted, VM killed (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(config: BeamConfig, out: str | os.PathLike, run_id: str | None, progress: bool,
         on_event: Callable[[str], None] | None) -> Path:
    run_dir = store.new_run_dir(out, "beam", run_id)
    from locality.kernel.capabilities import capabilities

    manifest = store.start_manifest("beam", run_dir.name, asdict(config), capabilities())
    store.write_manifest(run_dir, manifest)
    vm: BeamVM | None = None
    try:
        vm = BeamVM(config, start_timeout=60)
        manifest["config"]["pid"] = vm.pid
        manifest["versions"].update(otp_release=vm.hello["otp_release"], erts=vm.hello["erts_version"],
                                    emu_flavor=vm.hello["emu_flavor"])
        store.write_manifest(run_dir, manifest)
        result = _measure(vm, config, progress, on_event or (lambda s: None))
        _write_run(run_dir, result)
        manifest["page_sizes_seen"] = result["page_sizes_seen"]
        manifest.update(status="complete", finished=store.utcnow())
        store.write_manifest(run_dir, manifest)
        return run_dir
    except KeyboardInterrupt:
        manifest.update(status="interrupted", finished=store.utcnow())
        store.write_manifest(run_dir, manifest)
        raise
    except BaseException as e:
        manifest.update(status="failed", error=str(e) or type(e).__name__, finished=store.utcnow())
        store.write_manifest(run_dir, manifest)
        raise
    finally:
        if vm is not None:
            vm.close()


def _totals(entries: list[Any]) -> dict[str, int]:
    anon = [e for e in entries if e.is_anonymous]
    return {
        "rss_bytes": sum(e.rss for e in entries), "pss_bytes": sum(e.pss for e in entries),
        "swap_bytes": sum(e.swap for e in entries), "referenced_bytes": sum(e.referenced for e in entries),
        "anon_rss_bytes": sum(e.rss for e in anon), "anon_referenced_bytes": sum(e.referenced for e in anon),
    }


def _spawn_timeout(n: int) -> float:
    return 60.0 + n / 5_000  # 1M processes: a few seconds here, generous for slow CI


@dataclass
class SpawnAccount:
    """What spawning the population cost, by the VM's accounting and by the kernel's."""

    bytes_per_process: dict[str, Any]
    smaps_after: list[Any]
    classes: "_AddressClasses"
    growth_by_class: dict[str, int]
    allocator_growth: dict[str, dict[str, int]]
    totals_before: dict[str, int]
    totals_after: dict[str, int]
    reports: dict[str, Any]  # the VM's raw answers


def account_spawn(vm: BeamVM, n: int, say: Callable[[str], None]) -> SpawnAccount:
    """Measure the empty VM, spawn ``n`` processes, measure again: the difference
    is what the processes cost, in the VM's words and in resident pages."""
    smaps_before = smaps(vm.pid)
    alloc_before = vm.request("allocators", "allocators")
    say(f"spawning {n:,} processes in the Erlang VM (OS pid {vm.pid})")
    ready = vm.request("spawn", "ready", timeout=_spawn_timeout(n))
    time.sleep(0.2)  # let the schedulers settle into idle
    smaps_after = smaps(vm.pid)
    mem = vm.request("memory", "memory", timeout=_spawn_timeout(n))
    alloc_after = vm.request("allocators", "allocators")
    binaries = vm.request("binaries", "binaries")["addresses"]
    before, after = _totals(smaps_before), _totals(smaps_after)

    classes = _AddressClasses(smaps_after, grown_at_spawn(smaps_before, smaps_after), binaries)
    growth_by_class: dict[str, int] = {}
    for sign, entries in ((1, smaps_after), (-1, smaps_before)):
        for e in entries:
            c = classes(e)
            growth_by_class[c] = growth_by_class.get(c, 0) + sign * e.rss

    # The coordinator's tuple of pids (8 bytes a process) is addressing, not the processes.
    processes_delta = mem["memory"]["processes"] - ready["memory_before"]["processes"]
    coordinator_delta = mem["coordinator_memory"] - ready["coordinator_memory_before"]
    bpp: dict[str, Any] = {
        "bytes_per_process_erlang": mem["workers_memory_sum"] / n,
        "bytes_per_process_vm": (processes_delta - coordinator_delta) / n,
        "bytes_per_process_memory_processes": mem["memory"]["processes"] / n,
        "bytes_per_process_rss": (after["rss_bytes"] - before["rss_bytes"]) / n,
        "bytes_per_process_pss": (after["pss_bytes"] - before["pss_bytes"]) / n,
        "pid_table_bytes_per_process": coordinator_delta / n,
    }
    ratio = bpp["bytes_per_process_rss"] / bpp["bytes_per_process_vm"] if bpp["bytes_per_process_vm"] else None
    bpp["rss_vs_vm_ratio"] = ratio
    bpp["rss_vs_vm_agree_15pct"] = ratio is not None and abs(ratio - 1) <= 0.15
    return SpawnAccount(
        bytes_per_process=bpp, smaps_after=smaps_after, classes=classes, growth_by_class=growth_by_class,
        allocator_growth={
            a: {k: alloc_after["allocators"][a][k] - alloc_before["allocators"].get(a, {}).get(k, 0)
                for k in ("carriers_bytes", "blocks_bytes")}
            for a in alloc_after["allocators"]
        },
        totals_before=before, totals_after=after,
        reports={"hello": vm.hello, "ready": ready, "memory_after_spawn": mem, "allocators_before": alloc_before,
                 "allocators_after": alloc_after, "binary_probe": binaries},
    )


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def _median(xs: list[float]) -> float | None:
    return float(np.median(xs)) if xs else None


class WindowSampler:
    """Samples the VM on its own clock and reads untouched memory per window.

    A cycle starts with clear_refs (``track_refs``) and/or a pageout of the
    tracked pages (``pageout_watch``); each window T is read at the first
    sample at least T after that (Referenced only accumulates, so one clear
    serves every window), and the cycle restarts after the longest window.
    """

    def __init__(self, pid: int, cfg: BeamConfig, account: SpawnAccount) -> None:
        self.pid, self.cfg, self.classes = pid, cfg, account.classes
        # Pages followed in pagemap: the VM's private writable anonymous memory resident after spawn.
        entries = [e for e in account.smaps_after if e.is_anonymous and e.perms.startswith("rw") and e.rss > 0]
        self.tracked = Tracked([(e.start, e.end) for e in entries], [f"{self.classes(e)} {e.start:#x}" for e in entries])
        horizon = cfg.n_steps * cfg.interval
        self.windows = [w for w in sorted(cfg.windows) if w <= horizon + 1e-9] or [min(cfg.windows)]
        keys = [f"{w:g}" for w in self.windows]
        self.rows: list[dict[str, Any]] = []
        self.vma_rows: list[dict[str, Any]] = []
        # A VMA keeps its index while its identity holds, as in `locality probe`'s timeline.
        self.vma_index: dict[tuple, int] = {}
        self.t: list[float] = []
        self.bits: dict[str, list[np.ndarray]] = {"resident": [], "swapped": [], "accessed": []}
        self.cold: dict[str, list[float]] = {k: [] for k in keys}
        self.cold_anon: dict[str, list[float]] = {k: [] for k in keys}
        self.window_age: dict[str, list[float]] = {k: [] for k in keys}
        self.referenced_by_class: dict[str, dict[str, list[int]]] = {k: {} for k in keys}
        self.untouched_after_pageout: dict[str, list[float]] = {k: [] for k in keys}
        self.pageouts: list[dict[str, Any]] = []
        self.sampling_s = 0.0
        n_pages = self.tracked.addr.size
        self.paged = np.zeros(n_pages, bool)  # swapped right after this cycle's pageout
        self.accessed = np.zeros(n_pages, bool)  # of those, present again since
        self.after_pageout = False
        self.read_windows: set[str] = set()
        self.t0 = time.monotonic()
        self.start_cycle()
        self.minflt0, self.majflt0 = faults(pid)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start_cycle(self) -> None:
        self.read_windows = set()
        if self.cfg.track_refs:
            clear_refs(self.pid, 1)
        if self.cfg.pageout_watch:
            self._close_pageout_cycle()
            t0 = time.monotonic()
            advised = process_pageout(self.pid, [(s, e - s) for s, e in self.tracked.ranges])
            took = time.monotonic() - t0
            _, swapped = self.tracked.read(self.pid)
            self.paged = swapped
            self.accessed = np.zeros_like(swapped)
            self.after_pageout = True
            self.pageouts.append({"t": t0 - self.t0, "advised_bytes": advised,
                                  "paged_out_pages": int(swapped.sum()), "pageout_ms": took * 1000})
        # Windows run from the moment the bits were cleared / the pages paged out;
        # the sampling clock is realigned so each window is read right when it ends.
        self.cycle_start = self.now()
        self.next_sample = self.t0 + self.cycle_start + self.cfg.interval

    def _close_pageout_cycle(self) -> None:
        if self.pageouts:  # the cycle's working set, in pages
            self.pageouts[-1]["accessed_pages"] = int(self.accessed.sum())

    def sample(self, step_event: dict[str, Any] | None) -> None:
        s0 = time.monotonic()
        t = s0 - self.t0
        entries = smaps(self.pid)
        minflt, majflt = faults(self.pid)
        present, swapped = self.tracked.read(self.pid)
        totals = _totals(entries)
        came_back = self.paged & present & ~self.accessed  # all False without pageout
        self.accessed |= came_back
        age = t - self.cycle_start
        self.rows.append({
            "t": t, **totals, "step": step_event["step"] if step_event else -1,
            "activations": step_event["activated"] if step_event else 0,
            "resident_pages": int(present.sum()), "swapped_pages": int(swapped.sum()),
            "major_faults": majflt - self.majflt0, "minor_faults": minflt - self.minflt0,
            "refaulted_pages": int(came_back.sum()),
            "accessed_pages": int(self.accessed.sum()) if self.cfg.pageout_watch else None,
            "window_age_s": age,
        })
        page = self.tracked.page_size
        for e in entries:
            i = self.vma_index.setdefault((e.start, e.end, e.perms, e.offset, e.inode, e.path), len(self.vma_index))
            self.vma_rows.append({
                "t": t, "vma": i, "start": e.start, "end": e.end, "perms": e.perms, "path": e.path,
                "class": self.classes(e), "rss_bytes": e.rss, "pss_bytes": e.pss, "swap_bytes": e.swap,
                # Cumulative since the window began (clear_refs), window_age_s ago.
                "referenced_bytes": e.referenced if self.cfg.track_refs else None, "window_age_s": age,
                "resident_pages": e.rss // page, "swapped_pages": e.swap // page,
            })
        self.t.append(t)
        self.bits["resident"].append(np.packbits(present))
        self.bits["swapped"].append(np.packbits(swapped))
        self.bits["accessed"].append(np.packbits(came_back))
        self._read_windows(age, entries, totals)
        self.sampling_s += time.monotonic() - s0
        slack = 0.05 * self.cfg.interval
        if age >= max(self.windows) - slack and len(self.read_windows) == len(self.windows):
            self.start_cycle()
        elif self.next_sample <= time.monotonic():
            self.next_sample += self.cfg.interval

    def _read_windows(self, age: float, entries: list[Any], totals: dict[str, int]) -> None:
        for w in self.windows:
            key = f"{w:g}"
            if key in self.read_windows or age < w - 0.05 * self.cfg.interval:
                continue
            self.read_windows.add(key)
            self.window_age[key].append(age)
            if self.cfg.track_refs and totals["rss_bytes"]:
                self.cold[key].append(1 - totals["referenced_bytes"] / totals["rss_bytes"])
                if totals["anon_rss_bytes"]:
                    self.cold_anon[key].append(1 - totals["anon_referenced_bytes"] / totals["anon_rss_bytes"])
                by_class = self.referenced_by_class[key]
                for e in entries:
                    acc = by_class.setdefault(self.classes(e), [0, 0])
                    acc[0] += e.referenced
                    acc[1] += e.rss
            if self.cfg.pageout_watch and self.paged.any():
                self.untouched_after_pageout[key].append(1 - self.accessed.sum() / self.paged.sum())

    def hot_regions(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per window: referenced and resident bytes per region class (mean over cycles)."""
        out = {}
        for key, by_class in self.referenced_by_class.items():
            n = max(1, len(self.window_age[key]))
            out[key] = {c: {"referenced_bytes": ref // n, "rss_bytes": rss // n,
                            "referenced_fraction": ref / rss if rss else 0.0}
                        for c, (ref, rss) in sorted(by_class.items(), key=lambda kv: -kv[1][0])}
        return out

    def refault_rate_pct_per_min(self) -> float | None:
        """Pages brought back per minute as % of the working set (mean pages touched per cycle)."""
        if not self.cfg.pageout_watch or not self.rows:
            return None
        self._close_pageout_cycle()
        minutes = max(self.now() / 60, 1e-9)
        wss = max(1.0, float(np.mean([c["accessed_pages"] for c in self.pageouts])))
        return 100 * (sum(r["refaulted_pages"] for r in self.rows) / minutes) / wss

    def pages(self) -> dict[str, np.ndarray]:
        def stack(name: str) -> np.ndarray:
            return np.stack(self.bits[name]) if self.bits[name] else np.zeros((0, 0), np.uint8)

        tr = self.tracked
        return {
            "t": np.asarray(self.t, np.float64), "page_addr": tr.addr, "region": tr.region,
            "regions": np.asarray(tr.names, dtype=str), "n_pages": np.int64(tr.addr.size),
            "resident": stack("resident"), "swapped": stack("swapped"),
            **({"accessed": stack("accessed")} if self.cfg.pageout_watch else {}),
        }


def harness_schedule(cfg: BeamConfig) -> list[np.ndarray]:
    """The ids the Python harness's pattern activates in each of the run's steps (same seed)."""
    import itertools

    from locality.population import make_pattern

    params: dict[str, Any] = {"p": cfg.p}
    if cfg.pattern == "zipf":
        params["s"] = cfg.zipf_s
    elif cfg.pattern == "sheet":
        params["radius"] = float(cfg.radius)
    pattern = make_pattern(cfg.pattern, cfg.processes, seed=cfg.seed, **params)
    return list(itertools.islice(pattern.steps(), cfg.n_steps))


def drive_steps(vm: BeamVM, sampler: WindowSampler, progress: bool) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Have the VM run its steps while sampling it on our clock; the steps and a latency sample."""
    cfg = sampler.cfg
    n_steps = cfg.n_steps
    bar = None
    if progress:
        from locality.progress import progress as progress_bar

        bar = progress_bar(n_steps, "beam steps", "step", every=10.0, leave=False)
    steps: list[dict[str, Any]] = []
    latencies: list[np.ndarray] = []
    give_up = n_steps * cfg.interval + 120 + 10 * cfg.interval
    vm.send(f"steps {n_steps}")
    last_step: dict[str, Any] | None = None
    try:
        while True:
            event = vm.poll(max(0.0, sampler.next_sample - time.monotonic()))
            if event is None:
                sampler.sample(last_step)
                if sampler.now() > give_up:
                    raise BeamError("the Erlang VM stopped reporting steps", "try fewer --processes or a longer --interval")
            elif event.get("event") == "step":
                last_step = event
                step = {k: v for k, v in event.items() if k not in ("ids", "lat_sample_ns", "event")}
                # The first step after a pageout pays the refaults of the pages it needs.
                step["after_pageout"], sampler.after_pageout = sampler.after_pageout, False
                if cfg.report_ids:
                    step["ids"] = event.get("ids", [])
                steps.append(step)
                latencies.append(np.asarray(event.get("lat_sample_ns", []), np.int64))
                if bar is not None:
                    bar.update(1)
            elif event.get("event") == "steps_done":
                break
        # One last sample, so the last step's effect and windows up to the end are read.
        sampler.sample(last_step)
    finally:
        if bar is not None:
            bar.close()
    return steps, (np.concatenate(latencies) if latencies else np.zeros(0, np.int64))


def _measure(vm: BeamVM, cfg: BeamConfig, progress: bool, say: Callable[[str], None]) -> dict[str, Any]:
    n = cfg.processes
    account = account_spawn(vm, n, say)
    if cfg.schedule == "harness":
        # Queued before the first window opens, so parsing it is not counted as the VM's accesses.
        for ids in harness_schedule(cfg):
            vm.send("ids " + " ".join(map(str, ids.tolist())))
        vm.request("ping", "pong")
    sampler = WindowSampler(vm.pid, cfg, account)
    say(f"running {cfg.n_steps} steps of {cfg.pattern} activation, p={cfg.p}, every {cfg.interval:g} s")
    steps, lat = drive_steps(vm, sampler, progress)
    mem_end = vm.request("memory", "memory", timeout=_spawn_timeout(n))

    mem, ready = account.reports["memory_after_spawn"], account.reports["ready"]
    alloc_after = account.reports["allocators_after"]
    activations = sum(s["activated"] for s in steps)
    busy_s = sum(s["elapsed_us"] for s in steps) / 1e6
    wall = sampler.now()
    track, watch = cfg.track_refs, cfg.pageout_watch
    hot = sampler.hot_regions()
    shortest = hot.get(f"{sampler.windows[0]:g}", {})
    wss_bytes = sum(v["referenced_bytes"] for v in shortest.values()) if track else None
    rows = sampler.rows
    metrics = {
        "workers": n, "layout": "beam", "scheduler": "beam", "pattern": cfg.pattern, "p": cfg.p,
        "hibernate": cfg.hibernate, "min_heap_size": cfg.min_heap_size, "state_init": cfg.state_init,
        "schedule": cfg.schedule,
        "otp_release": vm.hello["otp_release"], "erts_version": vm.hello["erts_version"],
        "bytes_per_worker": account.bytes_per_process["bytes_per_process_pss"],
        **account.bytes_per_process,
        "documented_fresh_process_bytes": DOCUMENTED_FRESH_PROCESS_BYTES,
        "workers_hibernated": mem["workers_hibernated"], "workers_heap_words_sum": mem["workers_heap_words_sum"],
        "spawn_s": ready["spawn_ms"] / 1000,
        "rss_before_spawn_bytes": account.totals_before["rss_bytes"], "rss_after_spawn_bytes": account.totals_after["rss_bytes"],
        "pss_before_spawn_bytes": account.totals_before["pss_bytes"], "pss_after_spawn_bytes": account.totals_after["pss_bytes"],
        "erlang_memory_before": ready["memory_before"], "erlang_memory_after_spawn": mem["memory"],
        "erlang_memory_end": mem_end["memory"],
        "allocator_growth_at_spawn": account.allocator_growth,
        "allocators_after_spawn": alloc_after["allocators"], "carriers_after_spawn": alloc_after["carriers"],
        "mseg_after_spawn": alloc_after["mseg"],
        "rss_growth_at_spawn_by_class": account.growth_by_class,
        "cold_fraction": {k: _mean(v) for k, v in sampler.cold.items()} if track else {},
        "cold_fraction_anon": {k: _mean(v) for k, v in sampler.cold_anon.items()} if track else {},
        "cold_fraction_windows_measured": {k: len(v) for k, v in sampler.window_age.items()},
        "cold_fraction_window_age_s": {k: _mean(v) for k, v in sampler.window_age.items()},
        "referenced_by_class": hot if track else {},
        "untouched_after_pageout": {k: _mean(v) for k, v in sampler.untouched_after_pageout.items()} if watch else {},
        "refault_rate_pct_per_min": sampler.refault_rate_pct_per_min(),
        "pageouts": sampler.pageouts,
        "wss_bytes_mean": wss_bytes,
        "wss_pages_mean": wss_bytes // sampler.tracked.page_size if wss_bytes is not None else None,
        "step_elapsed_us_after_pageout": _median([s["elapsed_us"] for s in steps if s["after_pageout"]]),
        "step_elapsed_us_other": _median([s["elapsed_us"] for s in steps if not s["after_pageout"]]),
        "major_faults": rows[-1]["major_faults"] if rows else 0,
        "swapped_pages_max": max((r["swapped_pages"] for r in rows), default=0),
        "steps": len(steps), "activations": activations,
        "activations_per_s": activations / busy_s if busy_s > 0 else None,
        "latency_p50_us": float(np.percentile(lat, 50)) / 1000 if lat.size else None,
        "latency_p99_us": float(np.percentile(lat, 99)) / 1000 if lat.size else None,
        "sampler_overhead_pct": 100 * sampler.sampling_s / wall if wall > 0 else None,
        "tracked_pages": int(sampler.tracked.addr.size),
    }
    sizes = sorted({e.kernel_page_size for e in account.smaps_after if e.kernel_page_size} |
                   ({2 << 20} if any(e.anon_huge for e in account.smaps_after) else set()))
    return {
        "metrics": metrics, "timeline": pd.DataFrame(rows), "vmas": pd.DataFrame(sampler.vma_rows),
        "steps": steps, "latency_ns": lat, "page_sizes_seen": sizes or [sampler.tracked.page_size],
        "pages": sampler.pages(), "vm": {**account.reports, "memory_end": mem_end},
    }


def _write_run(run_dir: Path, result: dict[str, Any]) -> None:
    store.atomic_write_csv(run_dir / "timeline.csv", result["timeline"])
    store.atomic_write_csv(run_dir / "vmas.csv", result["vmas"])
    store.atomic_write_npz(run_dir / "pages.npz", **result["pages"])
    lat = result["latency_ns"]
    if lat.size > LATENCY_SAMPLE_MAX:
        lat = np.random.default_rng(0).choice(lat, LATENCY_SAMPLE_MAX, replace=False)
    store.atomic_write_csv(run_dir / "latency.csv", pd.DataFrame({"latency_ns": lat}))
    store.atomic_write_json(run_dir / "steps.json", result["steps"])
    store.atomic_write_json(run_dir / "beam.json", result["vm"])
    store.atomic_write_json(run_dir / "metrics.json", result["metrics"])
