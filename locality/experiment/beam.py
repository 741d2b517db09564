"""The Erlang VM as a measured population: N BEAM processes, watched from outside.

`population.escript` (experiments/beam/, shipped as package data) spawns the
processes and drives seeded activation steps; it speaks one JSON object per
line on stdout and takes commands on stdin. This module starts it, asks the
VM for its own accounting (erlang:memory, allocator carriers) and measures
the same VM with the kernel instruments `locality probe` uses: per-VMA
smaps (RSS, PSS, Referenced after clear_refs), pagemap residency, fault
counters, and optionally "page out and watch" (process_madvise
MADV_PAGEOUT, then pages that come back from swap are exactly the pages
the VM accessed). The result is a run directory of kind "beam".

The VM is always killed at the end, on error and on Ctrl-C too.
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
    radius: int = 4
    zipf_s: float = 1.1
    track_refs: bool = False
    pageout_watch: bool = False
    windows: tuple[float, ...] = DEFAULT_WINDOWS
    report_ids: bool = False

    def __post_init__(self) -> None:
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
        ]


# --------------------------------------------------------------- the VM


def find_escript() -> str:
    """Path of `escript`; Unsupported with the install hint when Erlang is missing."""
    erl, escript = shutil.which("erl"), shutil.which("escript")
    if not erl or not escript:
        raise Unsupported("the Erlang VM", "erl/escript not found on PATH", INSTALL_HINT)
    return escript


def escript_path() -> Path:
    """The population escript: the copy shipped in the package, else the repository's."""
    shipped = Path(__file__).with_name("beam") / ESCRIPT_NAME
    if shipped.is_file():
        return shipped
    repo = Path(__file__).resolve().parents[2] / "experiments" / "beam" / ESCRIPT_NAME
    if repo.is_file():
        return repo
    raise BeamError(f"{ESCRIPT_NAME} is missing from the installation", "reinstall locality")


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
    addr: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    region: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))

    def __post_init__(self) -> None:
        self.addr = np.concatenate([np.arange(s, e, self.page_size, dtype=np.uint64) for s, e in self.ranges]) \
            if self.ranges else np.zeros(0, np.uint64)
        self.region = np.concatenate([np.full((e - s) // self.page_size, i, np.int32)
                                      for i, (s, e) in enumerate(self.ranges)]) \
            if self.ranges else np.zeros(0, np.int32)

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


def _measure(vm: BeamVM, cfg: BeamConfig, progress: bool, say: Callable[[str], None]) -> dict[str, Any]:
    pid = vm.pid
    n = cfg.processes
    # The empty VM, then the population: the difference is what the processes cost.
    smaps_before = smaps(pid)
    alloc_before = vm.request("allocators", "allocators")
    say(f"spawning {n:,} processes in the Erlang VM (OS pid {pid})")
    ready = vm.request("spawn", "ready", timeout=_spawn_timeout(n))
    time.sleep(0.2)  # let the schedulers settle into idle
    smaps_after = smaps(pid)
    mem = vm.request("memory", "memory", timeout=_spawn_timeout(n))
    alloc_after = vm.request("allocators", "allocators")
    binaries = vm.request("binaries", "binaries")["addresses"]
    before, after = _totals(smaps_before), _totals(smaps_after)

    grown = grown_at_spawn(smaps_before, smaps_after)
    class_of = _AddressClasses(smaps_after, grown, binaries)
    spawn_growth_by_class: dict[str, int] = {}
    for sign, entries in ((1, smaps_after), (-1, smaps_before)):
        for e in entries:
            c = class_of(e)
            spawn_growth_by_class[c] = spawn_growth_by_class.get(c, 0) + sign * e.rss

    processes_delta = mem["memory"]["processes"] - ready["memory_before"]["processes"]
    coordinator_delta = mem["coordinator_memory"] - ready["coordinator_memory_before"]
    allocator_growth = {
        a: {k: alloc_after["allocators"][a][k] - alloc_before["allocators"].get(a, {}).get(k, 0)
            for k in ("carriers_bytes", "blocks_bytes")}
        for a in alloc_after["allocators"]
    }
    bpp = {
        "bytes_per_process_erlang": mem["workers_memory_sum"] / n,
        "bytes_per_process_vm": (processes_delta - coordinator_delta) / n,
        "bytes_per_process_memory_processes": mem["memory"]["processes"] / n,
        "bytes_per_process_rss": (after["rss_bytes"] - before["rss_bytes"]) / n,
        "bytes_per_process_pss": (after["pss_bytes"] - before["pss_bytes"]) / n,
        "pid_table_bytes_per_process": coordinator_delta / n,
    }
    bpp["rss_vs_vm_ratio"] = bpp["bytes_per_process_rss"] / bpp["bytes_per_process_vm"] if bpp["bytes_per_process_vm"] else None
    bpp["rss_vs_vm_agree_15pct"] = bpp["rss_vs_vm_ratio"] is not None and abs(bpp["rss_vs_vm_ratio"] - 1) <= 0.15

    # Pages followed in pagemap: the VM's private writable anonymous memory, as resident after spawn.
    tracked_entries = [e for e in smaps_after if e.is_anonymous and e.perms.startswith("rw") and e.rss > 0]
    tracked = Tracked([(e.start, e.end) for e in tracked_entries],
                      [f"{class_of(e)} {e.start:#x}" for e in tracked_entries])

    windows = sorted(w for w in cfg.windows)
    n_steps = cfg.n_steps
    horizon = n_steps * cfg.interval
    usable = [w for w in windows if w <= horizon + 1e-9] or [windows[0]]
    cycle_len = max(usable)

    rows: list[dict[str, Any]] = []
    vma_rows: list[dict[str, Any]] = []
    # A VMA keeps its index while its identity holds, as in `locality probe`'s timeline.
    vma_index: dict[tuple, int] = {}
    resident_bits, swapped_bits, accessed_bits, t_samples = [], [], [], []
    cold: dict[str, list[float]] = {f"{w:g}": [] for w in usable}
    cold_anon: dict[str, list[float]] = {f"{w:g}": [] for w in usable}
    window_age: dict[str, list[float]] = {f"{w:g}": [] for w in usable}
    referenced_by_class: dict[str, dict[str, list[int]]] = {f"{w:g}": {} for w in usable}
    pageout_untouched: dict[str, list[float]] = {f"{w:g}": [] for w in usable}
    pageout_log: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    latencies: list[np.ndarray] = []
    sampling_s = 0.0

    state = {"cycle_start": 0.0, "done": set(), "paged": np.zeros(tracked.addr.size, bool),
             "accessed": np.zeros(tracked.addr.size, bool)}

    def start_cycle() -> None:
        state["done"] = set()
        if cfg.track_refs:
            clear_refs(pid, 1)
        if cfg.pageout_watch:
            if pageout_log:  # close the cycle that ends here: its working set in pages
                pageout_log[-1]["accessed_pages"] = int(state["accessed"].sum())
            t0 = time.monotonic()
            ranges = [(s, e - s) for s, e in tracked.ranges]
            advised = process_pageout(pid, ranges)
            dt = time.monotonic() - t0
            _, swp = tracked.read(pid)
            state["paged"] = swp.copy()
            state["accessed"] = np.zeros(tracked.addr.size, bool)
            state["after_pageout"] = True
            pageout_log.append({"t": t0 - t_start, "advised_bytes": advised, "paged_out_pages": int(swp.sum()),
                                "pageout_ms": dt * 1000})
        # Windows run from the moment the bits were cleared / the pages paged out;
        # the sampling clock is realigned so each window is read right when it ends.
        now = time.monotonic() - t_start
        state["cycle_start"] = now
        state["next_sample"] = t_start + now + cfg.interval

    t_start = time.monotonic()
    start_cycle()
    minflt0, majflt0 = faults(pid)

    def sample(step_event: dict[str, Any] | None) -> None:
        nonlocal sampling_s
        s0 = time.monotonic()
        t = s0 - t_start
        entries = smaps(pid)
        minflt, majflt = faults(pid)
        present, swapped = tracked.read(pid)
        tot = _totals(entries)
        refaulted = 0
        accessed_now = np.zeros(tracked.addr.size, bool)
        if cfg.pageout_watch:
            came_back = state["paged"] & present & ~state["accessed"]
            accessed_now = came_back
            state["accessed"] |= came_back
            refaulted = int(came_back.sum())
        row = {"t": t, **tot, "step": step_event["step"] if step_event else -1,
               "activations": step_event["activated"] if step_event else 0,
               "resident_pages": int(present.sum()), "swapped_pages": int(swapped.sum()),
               "major_faults": majflt - majflt0, "minor_faults": minflt - minflt0,
               "refaulted_pages": refaulted,
               "accessed_pages": int(state["accessed"].sum()) if cfg.pageout_watch else None,
               "window_age_s": t - state["cycle_start"]}
        rows.append(row)
        for e in entries:
            i = vma_index.setdefault((e.start, e.end, e.perms, e.offset, e.inode, e.path), len(vma_index))
            vma_rows.append({"t": t, "vma": i, "start": e.start, "end": e.end, "perms": e.perms, "path": e.path,
                             "class": class_of(e),
                             "rss_bytes": e.rss, "pss_bytes": e.pss, "swap_bytes": e.swap,
                             # Cumulative since the window began (clear_refs), window_age_s ago.
                             "referenced_bytes": e.referenced if cfg.track_refs else None,
                             "window_age_s": t - state["cycle_start"],
                             "resident_pages": e.rss // tracked.page_size, "swapped_pages": e.swap // tracked.page_size})
        t_samples.append(t)
        resident_bits.append(np.packbits(present))
        swapped_bits.append(np.packbits(swapped))
        accessed_bits.append(np.packbits(accessed_now))
        age = t - state["cycle_start"]
        for w in usable:
            key = f"{w:g}"
            # A window is read at the first sample at least its length after the cycle start.
            if key in state["done"] or age < w - 0.05 * cfg.interval:
                continue
            state["done"].add(key)
            window_age[key].append(age)
            if cfg.track_refs and tot["rss_bytes"]:
                cold[key].append(1 - tot["referenced_bytes"] / tot["rss_bytes"])
                if tot["anon_rss_bytes"]:
                    cold_anon[key].append(1 - tot["anon_referenced_bytes"] / tot["anon_rss_bytes"])
                by = referenced_by_class[key]
                for e in entries:
                    c = class_of(e)
                    r = by.setdefault(c, [0, 0])
                    r[0] += e.referenced
                    r[1] += e.rss
            if cfg.pageout_watch and state["paged"].any():
                pageout_untouched[key].append(1 - state["accessed"].sum() / state["paged"].sum())
        sampling_s += time.monotonic() - s0
        if age >= cycle_len - 0.05 * cfg.interval and len(state["done"]) == len(usable):
            start_cycle()

    say(f"running {n_steps} steps of {cfg.pattern} activation, p={cfg.p}, every {cfg.interval:g} s")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_steps, desc="beam steps", unit="step", leave=False)
    vm.send(f"steps {n_steps}")
    last_step: dict[str, Any] | None = None
    done = False
    while not done:
        # Sample on our own clock, between the VM's step reports.
        event = vm.poll(max(0.0, state["next_sample"] - time.monotonic()))
        if event is None:
            sample(last_step)
            if state["next_sample"] <= time.monotonic():
                state["next_sample"] += cfg.interval
            if time.monotonic() - t_start > horizon + 120 + 10 * cfg.interval:
                raise BeamError("the Erlang VM stopped reporting steps", "try fewer --processes or a longer --interval")
            continue
        if event.get("event") == "step":
            last_step = event
            steps.append({k: v for k, v in event.items() if k not in ("ids", "lat_sample_ns", "event")})
            # The first step after a pageout pays the refaults of the pages it needs.
            steps[-1]["after_pageout"] = bool(state.pop("after_pageout", False))
            if cfg.report_ids:
                steps[-1]["ids"] = event.get("ids", [])
            latencies.append(np.asarray(event.get("lat_sample_ns", []), np.int64))
            if bar is not None:
                bar.update(1)
        elif event.get("event") == "steps_done":
            done = True
    # One last sample so the final step's effect is seen, and windows up to the horizon are read.
    sample(last_step)
    if bar is not None:
        bar.close()
    mem_end = vm.request("memory", "memory", timeout=_spawn_timeout(n))

    lat = np.concatenate(latencies) if latencies else np.zeros(0, np.int64)
    activations = sum(s["activated"] for s in steps)
    busy_s = sum(s["elapsed_us"] for s in steps) / 1e6
    wall = time.monotonic() - t_start
    timeline = pd.DataFrame(rows)
    refault_rate = None
    if cfg.pageout_watch and rows:
        pageout_log[-1]["accessed_pages"] = int(state["accessed"].sum())
        minutes = max(wall / 60, 1e-9)
        # WSS: pages touched per pageout cycle (mean over cycles), as DESIGN's refault rate asks.
        wss = max(1.0, float(np.mean([c["accessed_pages"] for c in pageout_log])))
        refault_rate = 100 * (timeline["refaulted_pages"].sum() / minutes) / wss

    def mean(xs: list[float]) -> float | None:
        return float(np.mean(xs)) if xs else None

    hot_regions = {
        w: {c: {"referenced_bytes": v[0] // max(1, len(window_age[w])), "rss_bytes": v[1] // max(1, len(window_age[w])),
                "referenced_fraction": (v[0] / v[1]) if v[1] else 0.0}
            for c, v in sorted(by.items(), key=lambda kv: -kv[1][0])}
        for w, by in referenced_by_class.items()
    }
    wss1 = hot_regions.get(f"{usable[0]:g}", {})
    metrics = {
        "workers": n, "layout": "beam", "scheduler": "beam", "pattern": cfg.pattern, "p": cfg.p,
        "hibernate": cfg.hibernate, "min_heap_size": cfg.min_heap_size,
        "otp_release": vm.hello["otp_release"], "erts_version": vm.hello["erts_version"],
        "bytes_per_worker": bpp["bytes_per_process_pss"],
        **bpp,
        "documented_fresh_process_bytes": DOCUMENTED_FRESH_PROCESS_BYTES,
        "workers_hibernated": mem["workers_hibernated"], "workers_heap_words_sum": mem["workers_heap_words_sum"],
        "spawn_s": ready["spawn_ms"] / 1000,
        "rss_before_spawn_bytes": before["rss_bytes"], "rss_after_spawn_bytes": after["rss_bytes"],
        "pss_before_spawn_bytes": before["pss_bytes"], "pss_after_spawn_bytes": after["pss_bytes"],
        "erlang_memory_before": ready["memory_before"], "erlang_memory_after_spawn": mem["memory"],
        "erlang_memory_end": mem_end["memory"],
        "allocator_growth_at_spawn": allocator_growth,
        "allocators_after_spawn": alloc_after["allocators"], "carriers_after_spawn": alloc_after["carriers"],
        "mseg_after_spawn": alloc_after["mseg"],
        "rss_growth_at_spawn_by_class": spawn_growth_by_class,
        "cold_fraction": {k: mean(v) for k, v in cold.items()} if cfg.track_refs else {},
        "cold_fraction_anon": {k: mean(v) for k, v in cold_anon.items()} if cfg.track_refs else {},
        "cold_fraction_windows_measured": {k: len(v) for k, v in window_age.items()},
        "cold_fraction_window_age_s": {k: mean(v) for k, v in window_age.items()},
        "referenced_by_class": hot_regions if cfg.track_refs else {},
        "untouched_after_pageout": {k: mean(v) for k, v in pageout_untouched.items()} if cfg.pageout_watch else {},
        "pageouts": pageout_log,
        "wss_bytes_mean": sum(v["referenced_bytes"] for v in wss1.values()) if cfg.track_refs else None,
        "refault_rate_pct_per_min": refault_rate,
        "step_elapsed_us_after_pageout": _median([s["elapsed_us"] for s in steps if s["after_pageout"]]),
        "step_elapsed_us_other": _median([s["elapsed_us"] for s in steps if not s["after_pageout"]]),
        "major_faults": int(timeline["major_faults"].iloc[-1]) if rows else 0,
        "swapped_pages_max": int(timeline["swapped_pages"].max()) if rows else 0,
        "steps": len(steps), "activations": activations,
        "activations_per_s": activations / busy_s if busy_s > 0 else None,
        "latency_p50_us": float(np.percentile(lat, 50)) / 1000 if lat.size else None,
        "latency_p99_us": float(np.percentile(lat, 99)) / 1000 if lat.size else None,
        "sampler_overhead_pct": 100 * sampling_s / wall if wall > 0 else None,
        "tracked_pages": int(tracked.addr.size),
    }
    metrics["wss_pages_mean"] = metrics["wss_bytes_mean"] // tracked.page_size if metrics["wss_bytes_mean"] is not None else None
    sizes = sorted({e.kernel_page_size for e in smaps_after if e.kernel_page_size} |
                   ({2 << 20} if any(e.anon_huge for e in smaps_after) else set()))
    return {
        "metrics": metrics, "timeline": timeline, "vmas": pd.DataFrame(vma_rows), "steps": steps,
        "latency_ns": lat, "page_sizes_seen": sizes or [tracked.page_size],
        "pages": {
            "t": np.asarray(t_samples, np.float64), "page_addr": tracked.addr, "region": tracked.region,
            "regions": np.asarray(tracked.names, dtype=str), "n_pages": np.int64(tracked.addr.size),
            "resident": np.stack(resident_bits) if resident_bits else np.zeros((0, 0), np.uint8),
            "swapped": np.stack(swapped_bits) if swapped_bits else np.zeros((0, 0), np.uint8),
            **({"accessed": np.stack(accessed_bits)} if cfg.pageout_watch and accessed_bits else {}),
        },
        "vm": {"hello": vm.hello, "ready": ready, "memory_after_spawn": mem, "memory_end": mem_end,
               "allocators_before": alloc_before, "allocators_after": alloc_after, "binary_probe": binaries},
    }


def _median(xs: list[float]) -> float | None:
    return float(np.median(xs)) if xs else None


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
