"""The measured process: ``python -m locality.experiment.child``.

It builds the population, registers its memory for write tracking and then
only steps the workers. All measurement happens in the parent through
/proc/<this pid>/ (pagemap, PAGEMAP_SCAN, smaps_rollup), so nothing here
walks or copies the measured heap.

Protocol: JSON lines. The parent writes commands to our stdin; we answer on
the original stdout (fd 1 is redirected to stderr first, so a stray print
from a library cannot corrupt the protocol).

    parent -> child                      child -> parent
    {"cmd": "config", "config", "latency_path"}
                                         {"msg": "empty"}          (interpreter + pattern, no workers)
    {"cmd": "spawn"}
                                         {"msg": "spawned", "regions": [...], "spawn_s"}
    {"cmd": "state_pages", "path"}       (optional, before "go")
                                         {"msg": "state_pages", "count", "source", "seconds"}
                                         (sorted uint64 page addresses saved with np.save to path)
    {"cmd": "portions", "path"}          (optional, before "go")
                                         {"msg": "portions", "seconds", "pages", "pools"}
                                         (population.portions.walk arrays saved with np.savez to path)
    {"cmd": "go"}
                                         {"msg": "steps", ...}     (batched progress, every ~50 ms)
    {"cmd": "register", "ranges": [[start, length], ...]}
                                         {"msg": "registered", "ranges": [...], "failed": [...]}
    {"cmd": "stop"}                      {"msg": "done", ...}      (after the last step)
    {"cmd": "exit"}
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import time
from typing import Any

import numpy as np

from locality.experiment.channel import ChildEnd

LATENCY_SAMPLE = 100_000
PROGRESS_EVERY_S = 0.05


_END: ChildEnd | None = None  # the protocol, once open: errors are reported through it


class Bookkeeping:
    """The child's own measurement memory -- the latency sample, the window marks and their
    scratch -- in one anonymous mapping of its own, which the parent does not track.

    It is the instrument's, not the population's: charged to the child's working set it was
    ~300 pages a window at 1M (the sample's random overwrites alone ~100), a tenth of the best
    layout's whole-process WSS. Its range goes to the parent (manifest ``bookkeeping``), and
    its resident pages count as ``other``. Scratch is sized for n ids but only a step's
    share of it is ever touched."""

    def __init__(self, n: int, latency_cap: int) -> None:
        import mmap

        from locality.kernel import PAGE_SIZE

        words = -(-n // 64)
        parts = [("latency", latency_cap, np.float32), ("hot", words, np.int64), ("cold", words, np.int64),
                 ("scratch", 3 * max(n, 1), np.int64)]
        offsets, total = {}, 0
        for name, count, dtype in parts:
            offsets[name] = total
            total += -(-count * np.dtype(dtype).itemsize // PAGE_SIZE) * PAGE_SIZE
        self._map = mmap.mmap(-1, total)
        raw = np.frombuffer(self._map, dtype=np.uint8)
        self.start, self.length = int(raw.ctypes.data), total
        self.arrays = {name: raw[offsets[name] : offsets[name] + count * np.dtype(dtype).itemsize].view(dtype)
                       for name, count, dtype in parts}
        self.arrays["scratch"] = self.arrays["scratch"].reshape(3, max(n, 1))


class LatencyReservoir:
    """A uniform sample of at most ``cap`` latencies (reservoir sampling, batched).

    Kept as float32 nanoseconds: once full, each step overwrites random slots, so the buffer's
    every page is written each window in the measured child; 4 bytes a sample halve that. Exact
    below 16.7 ms, within 1e-7 of the value above (a second is kept to 64 ns)."""

    def __init__(self, cap: int, seed: int, buf: np.ndarray | None = None) -> None:
        self.buf = np.empty(cap, dtype=np.float32) if buf is None else buf[:cap]
        self.cap = cap
        self.seen = 0
        self.rng = np.random.default_rng(seed)

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values).ravel()
        m = len(values)
        if m == 0:
            return
        free = max(0, self.cap - self.seen)
        if free:
            k = min(free, m)
            self.buf[self.seen : self.seen + k] = values[:k]
            self.seen += k
            values = values[k:]
            m = len(values)
            if m == 0:
                return
        keep = self.rng.random(m) < self.cap / (self.seen + np.arange(1, m + 1))
        n = int(keep.sum())
        if n:
            self.buf[self.rng.integers(0, self.cap, n)] = values[keep]
        self.seen += m

    def sample(self) -> np.ndarray:
        """The sample, as int64 nanoseconds."""
        return np.rint(self.buf[: min(self.seen, self.cap)]).astype(np.int64)


class WindowUseful:
    """Useful bytes of one sampling window: each woken worker's hot bytes once, and its cold bytes once
    if any of its activations in the window touched the cold part (the layout's cold_touched rule).

    Who was counted is kept in two bitmaps, not bool arrays: this bookkeeping lives in the measured
    process, and at 1M workers a bool per worker wrote 490 pages a window (marks, then the reset's
    zeros), about a tenth of the best layout's whole working set; a bit per worker writes at most 62.
    """

    def __init__(self, n: int, layout: Any, book: Bookkeeping | None = None) -> None:
        from locality.layouts.base import COLD_BYTES, HOT_BYTES

        self.hot_bytes, self.cold_bytes = HOT_BYTES, COLD_BYTES
        self.layout = layout
        if book is not None:  # zero-filled: a new anonymous mapping
            self.hot, self.cold, self._scratch = (book.arrays[k] for k in ("hot", "cold", "scratch"))
        else:
            self.hot = np.zeros(-(-n // 64), dtype=np.int64)  # bit i & 63 of word i >> 6: worker i counted
            self.cold = np.zeros(-(-n // 64), dtype=np.int64)
            self._scratch = np.empty((3, 0), dtype=np.int64)  # word, bit, marked: grown to a step's size

    def _first_seen(self, bits: np.ndarray, ids: np.ndarray) -> int:
        """Mark distinct ``ids`` in ``bits``; how many were not marked before (in scratch buffers:
        the temporaries of a step's 10k ids were heap churn the child's working set counts)."""
        m = ids.size
        if self._scratch.shape[1] < m:
            self._scratch = np.empty((3, m), dtype=np.int64)
        word, bit, got = self._scratch[:, :m]
        np.right_shift(ids, 6, out=word)
        np.bitwise_and(ids, 63, out=bit)
        np.left_shift(1, bit, out=bit)
        np.take(bits, word, out=got, mode="clip")
        got &= bit
        new = got == 0
        np.bitwise_or.at(bits, word[new], bit[new])
        return int(np.count_nonzero(new))

    def add(self, ids: np.ndarray, step: int) -> int:
        """Bytes first counted in this window by a step that woke ``ids`` (distinct, as a step's are)."""
        ids = np.asarray(ids, dtype=np.int64)
        new = self._first_seen(self.hot, ids)
        new_cold = self._first_seen(self.cold, ids[self.layout.cold_touched(ids, step)])
        return int(new * self.hot_bytes + new_cold * self.cold_bytes)

    def reset(self) -> None:
        for bits in (self.hot, self.cold):
            bits[np.flatnonzero(bits)] = 0  # only the words marked: zeros written over zeros dirty pages too


def _arenas(layout: Any) -> list[tuple[str, Any]]:
    """(name, arena) of the layout's arenas (``Layout.arenas`` is a dict name -> Arena)."""
    arenas = getattr(layout, "arenas", None) or {}
    items = arenas.items() if isinstance(arenas, dict) else enumerate(arenas)
    return [(str(name), a) for name, a in items if a is not None and getattr(a, "length", 0) > 0]


def state_pages(layout: Any) -> tuple[np.ndarray, str]:
    """Sorted page addresses holding worker state now, and where they come from.

    Arena layouts: every page of every arena (what the layout reserved for
    state, used or not). ``objects``: the pages holding its objects
    (``heap_pages()``), as measured now; pages its objects move to later
    (a dict or list that grows) are not in the set.
    """
    from locality.kernel import PAGE_SIZE

    arenas = _arenas(layout)
    if arenas:
        ps = int(PAGE_SIZE)
        parts = [np.arange(a.length // ps, dtype=np.uint64) * np.uint64(ps) + np.uint64(a.address) for _, a in arenas]
        return np.unique(np.concatenate(parts)), "arenas"
    heap_pages = getattr(layout, "heap_pages", None)
    if heap_pages is not None:
        return np.unique(np.asarray(heap_pages(), dtype=np.uint64)), "heap_pages"
    return np.empty(0, dtype=np.uint64), "none"


def _register(ranges: list[tuple[int, int]]) -> tuple[list[list[int]], list[list[Any]]]:
    from locality.kernel import register_write_tracking

    ok, failed = [], []
    for start, length in ranges:
        try:
            register_write_tracking(start, length)
            ok.append([start, length])
        except Exception as e:  # a VMA can vanish or change between listing and registering
            failed.append([start, length, f"{type(e).__name__}: {e}"])
    return ok, failed


def main() -> None:
    # Ctrl-C goes to the whole foreground process group; the parent decides
    # when we stop (it sends "stop"), so the run ends with a final sample.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stopping = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    # The parent-death signal was set before exec (channel.Channel).
    global _END
    chan = _END = ChildEnd()

    m = chan.expect("config")
    from locality.experiment.config import from_parent

    cfg = from_parent(m["config"])
    latency_path = m.get("latency_path")
    # Aligned windows: after every window_steps steps, wait for the parent's
    # "sampled" (it samples while this process sleeps step_interval).
    window_steps = int(m.get("window_steps") or 0)
    awaiting = False

    from locality.experiment.sampler import anonymous_ranges
    from locality.kernel import PAGE_SIZE, vmas
    from locality.layouts import make_layout
    from locality.population import Population, make_pattern

    n = cfg.workers
    pattern = make_pattern(cfg.pattern.name, n, seed=cfg.seed, **cfg.pattern_params)
    gc.collect()
    chan.send("empty")
    chan.expect("spawn")

    t0 = time.perf_counter()
    layout = make_layout(cfg.layout, n, **cfg.layout_params)
    pop = Population(n, scheduler=cfg.scheduler, pattern=pattern, seed=cfg.seed, layout=layout)
    pop.spawn()
    # Frozen objects are never traversed by the collector again, so a GC pass
    # does not write every object header (which would read as "all touched").
    gc.collect()
    gc.freeze()
    spawn_s = time.perf_counter() - t0

    book = Bookkeeping(n, LATENCY_SAMPLE)
    regions: list[dict[str, Any]] = []
    arena_ranges = []
    for name, arena in _arenas(layout):
        arena_ranges.append((int(arena.address), int(arena.length)))
        regions.append({"name": f"arena:{name}", "start": int(arena.address), "length": int(arena.length)})
    failed: list[list[Any]] = []
    if cfg.heap_tracking:
        regions += [{"name": name, "start": s, "length": ln}
                    for name, s, ln in anonymous_ranges(vmas(os.getpid()), exclude=[*arena_ranges, (book.start, book.length)])]
    if cfg.write_tracking:
        ok, failed = _register([(r["start"], r["length"]) for r in regions])
        okset = {tuple(r) for r in ok}
        regions = [r for r in regions if (r["start"], r["length"]) in okset]
    chan.send("spawned", regions=regions, failed=failed, spawn_s=spawn_s, pid=os.getpid(),
              bookkeeping=[book.start, book.length])
    while (m := chan.recv()).get("cmd") != "go":
        if m.get("cmd") in ("exit", "stop"):
            raise SystemExit(0)
        if m.get("cmd") == "portions":  # once, like state_pages: never per step
            from locality.population.portions import walk

            anon = [(s, ln) for _, s, ln in anonymous_ranges(vmas(os.getpid()), exclude=[*arena_ranges, (book.start, book.length)])]
            arrays = walk(pop, layout, anon, PAGE_SIZE)
            np.savez(m["path"], **arrays)
            chan.send("portions", seconds=float(arrays["seconds"]), pages=int(arrays["page"].size), pools=len(arrays["pools"]))
            del arrays
            continue
        if m.get("cmd") != "state_pages":
            raise RuntimeError(f"protocol: expected 'state_pages', 'portions' or 'go', got {m!r}")
        # After the parent read PSS and before its first sample: the arrays
        # built here are neither in bytes_per_worker nor in any window.
        t_s = time.perf_counter()
        pages, source = state_pages(layout)
        np.save(m["path"], pages)
        chan.send("state_pages", count=int(pages.size), source=source, seconds=time.perf_counter() - t_s)
        del pages

    steps_max = cfg.steps
    duration = cfg.duration
    interval = cfg.step_interval
    reservoir = LatencyReservoir(LATENCY_SAMPLE, cfg.seed, book.arrays["latency"])
    useful_fn = getattr(layout, "useful_bytes", None)
    # With aligned windows a worker's bytes count once per window however often it wakes in it: a page
    # holding it is written once per window either way, so page utilization stays a share (<= 1).
    window_useful = WindowUseful(cfg.workers, layout, book) if window_steps and useful_fn is not None else None
    # pageout-idle on a file arena: dirty file pages cannot be paged out, so
    # write them back once per sampling interval (the policy the user chose).
    sync_every = cfg.file_sync_interval
    file_arenas = [a for _, a in _arenas(layout) if getattr(a, "kind", "") == "file"]
    last_sync = time.monotonic()

    k = 0
    total_acts = 0
    total_step_ns = 0
    total_cpu_ns = 0
    total_useful = 0
    total_reloc_ns = 0
    batch = {"steps": 0, "activations": 0, "step_ns": 0, "useful_bytes": 0, "relocation_ns": 0}
    last_send = time.monotonic()
    start = time.monotonic()
    stop_reason = "steps"
    while True:
        cmd = chan.poll()
        while cmd is not None or (awaiting and not stopping):
            if cmd is None:
                chan.wait(0.1)
            elif cmd.get("cmd") == "register":
                ok, bad = _register([tuple(r) for r in cmd["ranges"]])
                names = dict(zip((tuple(r) for r in cmd["ranges"]), cmd.get("names") or []))
                chan.send("registered", ranges=ok, failed=bad, names=[names.get(tuple(r), "anon") for r in ok])
            elif cmd.get("cmd") == "sampled":
                awaiting = False
            elif cmd.get("cmd") in ("stop", "exit"):
                stopping = True
            cmd = chan.poll()
        if steps_max is not None and k >= steps_max:
            stop_reason = "steps"
            break
        if duration is not None and time.monotonic() - start >= duration:
            stop_reason = "duration"
            break
        if stopping:
            stop_reason = "stopped"
            break
        c_s = time.thread_time_ns()
        t_s = time.perf_counter_ns()
        try:
            result = pop.step()
        except StopIteration:
            stop_reason = "pattern exhausted"
            break
        step_ns = time.perf_counter_ns() - t_s
        # CPU time too: on a loaded machine wall time mostly measures the neighbours.
        step_cpu_ns = time.thread_time_ns() - c_s
        if result is None:
            stop_reason = "pattern exhausted"
            break
        ids = np.asarray(result.ids)
        lat = getattr(result, "latency_ns", None)
        if lat is not None:
            reservoir.add(np.atleast_1d(lat))
        if window_useful is not None:
            useful = window_useful.add(ids, result.step)
        else:
            useful = int(useful_fn(ids, result.step)) if useful_fn is not None else 0
        reloc = int(getattr(result, "relocation_ns", 0) or 0)
        k += 1
        total_acts += len(ids)
        total_step_ns += step_ns
        total_cpu_ns += step_cpu_ns
        total_useful += useful
        total_reloc_ns += reloc
        batch["steps"] += 1
        batch["activations"] += len(ids)
        batch["step_ns"] += step_ns
        batch["useful_bytes"] += useful
        batch["relocation_ns"] += reloc
        now = time.monotonic()
        if now - last_send >= PROGRESS_EVERY_S or interval > 0:
            chan.send("steps", step=k, **batch)
            batch = dict.fromkeys(batch, 0)
            last_send = now
        if sync_every and now - last_sync >= sync_every:
            for a in file_arenas:
                a.sync()
            last_sync = now
        if window_steps and k % window_steps == 0:
            if window_useful is not None:
                window_useful.reset()
            chan.send("window", step=k)
            awaiting = True
        if interval > 0:
            time.sleep(interval)
    if batch["steps"]:
        chan.send("steps", step=k, **batch)

    if latency_path:
        np.save(latency_path, reservoir.sample())
    chan.send(
        "done",
        steps=k,
        activations=total_acts,
        step_ns=total_step_ns,
        step_cpu_ns=total_cpu_ns,
        useful_bytes=total_useful,
        relocation_ns=total_reloc_ns,
        latencies=int(reservoir.seen),
        reason=stop_reason,
        cpu_s=time.process_time(),
    )
    # Stay alive until the parent took its final measurements.
    try:
        while True:
            m = chan.recv()
            if m.get("cmd") == "exit":
                break
    finally:
        close = getattr(pop, "close", None)
        if close is not None:
            close()


def _main_reporting_errors() -> None:
    from locality.errors import LocalityError

    try:
        main()
    except LocalityError as e:
        # A problem the user can fix (bad replay file, arena directory...): one
        # line to the parent, which stores it as the run's error.
        try:
            if _END is not None:
                _END.send("error", error=str(e))
        except OSError:
            pass
        print(f"locality child: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    _main_reporting_errors()
