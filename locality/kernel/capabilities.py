"""Which kernel instruments work on this machine, and why the others do not.

Every probe does the real thing once on a tiny scratch mapping of this
process (touch known pages, ask the instrument, compare), so "available"
means "measured to work here", not "the file exists". Probes are cheap
(a few pages, a few syscalls), never raise, never touch another process,
and each missing feature says why and how to enable it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gzip
import mmap
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from locality.errors import Unsupported

__all__ = ["capabilities", "CAPABILITIES"]

Result = dict[str, Any]

_PAGES = 4


def _ok(reason: str, **extra: Any) -> Result:
    return {"available": True, "reason": reason, "hint": "", **extra}


def _missing(reason: str, hint: str, **extra: Any) -> Result:
    return {"available": False, "reason": reason, "hint": hint, **extra}


def _kconfig(option: str) -> str | None:
    """'y', 'm', 'n' (not set) from /proc/config.gz, or None if the config is not exposed."""
    try:
        text = gzip.decompress(Path("/proc/config.gz").read_bytes()).decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(option + "="):
            return line.split("=", 1)[1]
        if line == f"# {option} is not set":
            return "n"
    return "n"


def _kconfig_phrase(option: str) -> str:
    value = _kconfig(option)
    if value is None:
        return f"{option} unknown (no /proc/config.gz)"
    return f"{option} is not set in this kernel" if value == "n" else f"{option}={value}"


class _Scratch:
    """``_PAGES`` private anonymous pages between two PROT_NONE guard pages, so
    the range is a VMA of its own that the kernel cannot merge with a neighbour."""

    def __init__(self) -> None:
        from locality.kernel._platform import MADV_NOHUGEPAGE, PAGE_SIZE, libc

        self.page = PAGE_SIZE
        self.map = mmap.mmap(-1, (_PAGES + 2) * PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        self.addr = base + PAGE_SIZE
        self.length = _PAGES * PAGE_SIZE
        libc.madvise(ctypes.c_void_p(self.addr), self.length, MADV_NOHUGEPAGE)
        mprotect = ctypes.CDLL(None).mprotect
        for guard in (base, self.addr + self.length):
            mprotect(ctypes.c_void_p(guard), PAGE_SIZE, 0)

    def touch(self, *pages: int) -> None:
        for p in pages:
            self.map[(p + 1) * self.page] = 1

    def read(self, *pages: int) -> int:
        return sum(self.map[(p + 1) * self.page] for p in pages)

    def close(self) -> None:
        with contextlib.suppress(BufferError):
            self.map.close()


@contextlib.contextmanager
def _scratch() -> Iterator[_Scratch]:
    s = _Scratch()
    try:
        yield s
    finally:
        s.close()


def _pages(mask) -> list[int]:
    return [i for i, v in enumerate(mask) if v]


# --- the probes ---------------------------------------------------------------------


def _mincore() -> Result:
    from locality.kernel.mincore import mincore

    with _scratch() as s:
        s.touch(0, 2)
        seen = _pages(mincore(s.addr, s.length))
    if seen == [0, 2]:
        return _ok("mincore(2) reported exactly the 2 touched pages of a 4-page probe mapping")
    return _missing(f"mincore(2) reported pages {seen} resident, expected [0, 2]", "check the kernel's mincore(2)")


def _pagemap_sample() -> tuple[list[int], int]:
    from locality.kernel.pagemap import pagemap

    with _scratch() as s:
        s.touch(0, 2)
        pm = pagemap(os.getpid(), s.addr, s.addr + s.length)
        return _pages(pm.present), int(pm.pfn[0])


def _pagemap() -> Result:
    present, _ = _pagemap_sample()
    if present == [0, 2]:
        return _ok("/proc/PID/pagemap reported exactly the 2 touched pages of a 4-page probe mapping")
    return _missing(f"/proc/PID/pagemap reported pages {present} present, expected [0, 2]",
                    "check CONFIG_PROC_PAGE_MONITOR")


def _pagemap_pfn() -> Result:
    present, pfn = _pagemap_sample()
    if present == [0, 2] and pfn:
        return _ok("pagemap shows physical frame numbers (this process has CAP_SYS_ADMIN)")
    return _missing("pagemap shows PFN 0 for a present page: physical frame numbers need CAP_SYS_ADMIN",
                    "run as root to see PFNs (needed for kpageflags: THP and page-sharing details)")


def _pagemap_scan() -> Result:
    from locality.kernel.writetrack import WriteTracker

    hint = ("needs Linux >= 6.7 with CONFIG_USERFAULTFD; if userfaultfd is refused, "
            "set sysctl vm.unprivileged_userfaultfd=1 or run as root")
    with _scratch() as s:
        s.touch(0, 1, 2, 3)
        with WriteTracker(s.addr, s.length) as tracker:
            before = _pages(tracker.written())
            s.touch(1)
            after = _pages(tracker.written())
    if before == [] and after == [1]:
        return _ok("userfaultfd WP_ASYNC + PAGEMAP_SCAN reported exactly the 1 page written after a reset")
    return _missing(f"PAGEMAP_SCAN reported written pages {before} before and {after} after writing page 1",
                    hint)


def _clear_refs() -> Result:
    from locality.kernel.procfs import clear_refs, smaps

    if b"Referenced:" not in Path("/proc/self/smaps_rollup").read_bytes():
        return _missing("smaps has no Referenced field", "needs CONFIG_PROC_PAGE_MONITOR")
    with _scratch() as s:
        s.touch(0, 1, 2, 3)
        clear_refs(os.getpid())  # this process only: resets its own accessed bits (and flushes its TLB)
        s.read(1, 3)
        (vma,) = [e for e in smaps(os.getpid()) if e.start == s.addr]
    from locality.kernel.procfs import _soft_dirty_built_in

    flush = ("the TLB is flushed with clear_refs mode 4, a no-op otherwise without soft-dirty"
             if not _soft_dirty_built_in() else
             "soft-dirty is built in, so there is no side-effect-free TLB flush: pages touched through "
             "cached translations right after a clear may go uncounted")
    if vma.referenced == 2 * s.page:
        return _ok(f"after clear_refs, smaps Referenced counted exactly the 2 pages read of a 4-page probe mapping; {flush}")
    return _missing(f"after clear_refs and reading 2 pages, smaps Referenced was {vma.referenced} bytes, "
                    f"expected {2 * s.page}", "check /proc/PID/clear_refs support (CONFIG_PROC_PAGE_MONITOR)")


def _process_madvise() -> Result:
    from locality.kernel.reclaim import process_cold

    with _scratch() as s:
        s.touch(0)
        advised = process_cold(os.getpid(), [(s.addr, s.page)])
    if advised == s.page:
        return _ok("process_madvise(MADV_COLD) on this process advised the whole probe page; "
                   "another process also needs ptrace access and CAP_SYS_NICE")
    return _missing(f"process_madvise advised {advised} of {s.page} bytes", "needs Linux >= 5.10")


def _swap() -> Result:
    from locality.kernel.swap import swap_active

    areas = swap_active()
    if areas:
        names = ", ".join(f"{a['filename']} ({a['size_bytes'] >> 20} MiB, {a['used_bytes'] >> 20} MiB used)" for a in areas)
        return _ok(f"active swap: {names}", devices=areas)
    return _missing("no active swap device (/proc/swaps is empty): anonymous memory cannot be paged out",
                    "`locality swap on` (zram, root), or swapon a device; file-backed arenas page out without swap")


def _zram() -> Result:
    dev = Path("/sys/block/zram0")
    if not dev.exists():
        config = _kconfig_phrase("CONFIG_ZRAM")
        return _missing(f"no /sys/block/zram0 ({config})", "modprobe zram (as root), or use a kernel with CONFIG_ZRAM")

    def attr(name: str) -> str:
        try:
            return (dev / name).read_text().strip()
        except OSError:
            return "?"

    algorithm = next((w.strip("[]") for w in attr("comp_algorithm").split() if w.startswith("[")), "?")
    disksize = attr("disksize")
    size = f"{int(disksize) >> 20} MiB" if disksize.isdigit() else disksize
    from locality.kernel.swap import swap_active

    in_use = any(a["filename"].endswith("/zram0") for a in swap_active())
    state = "in use as swap" if in_use else "not in use as swap"
    return _ok(f"/sys/block/zram0 exists (disksize {size}, algorithm {algorithm}), {state}")


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, fstype, super options) of every mount, from /proc/self/mountinfo."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) >= 5 and len(rfields) >= 3:
            out.append((fields[4].replace("\\040", " "), rfields[0], rfields[2]))
    return out


def _cgroup_v2() -> tuple[str | None, list[str]]:
    for point, fstype, _ in _mounts():
        if fstype == "cgroup2":
            try:
                controllers = (Path(point) / "cgroup.controllers").read_text().split()
            except OSError:
                controllers = []
            return point, controllers
    return None, []


def _cgroup_v1_memory() -> str | None:
    for point, fstype, options in _mounts():
        if fstype == "cgroup" and "memory" in options.split(","):
            return point
    return None


def _cgroup_memory() -> Result:
    point, controllers = _cgroup_v2()
    v1 = _cgroup_v1_memory()
    v1_phrase = f"the memory controller is bound to cgroup v1 at {v1}" if v1 else "no cgroup v1 memory controller either"
    hint = ("boot with systemd.unified_cgroup_hierarchy=1 (or cgroup_no_v1=memory) so the v2 hierarchy "
            "gets the memory controller (memory.max)")
    if point is None:
        return _missing(f"no cgroup v2 hierarchy is mounted; {v1_phrase}", hint, v2_mount=None, v1_memory_mount=v1)
    if "memory" not in controllers:
        listed = "[" + ", ".join(controllers) + "]"
        return _missing(f"cgroup v2 at {point} has controllers {listed}, no memory; {v1_phrase}",
                        hint, v2_mount=point, v1_memory_mount=v1)
    return _ok(f"cgroup v2 at {point} has the memory controller (memory.max)", v2_mount=point, v1_memory_mount=v1)


def _cgroup_v1_memory_capability() -> Result:
    v1 = _cgroup_v1_memory()
    if v1 and (Path(v1) / "memory.limit_in_bytes").exists():
        return _ok(f"cgroup v1 memory controller mounted at {v1} (memory.limit_in_bytes)", mount=v1)
    return _missing("no cgroup v1 memory controller is mounted",
                    "none needed if cgroup v2 has the memory controller (see cgroup_memory)")


_PERF_TYPE_HARDWARE, _PERF_TYPE_SOFTWARE = 0, 1
_PERF_COUNT_HW_CPU_CYCLES, _PERF_COUNT_SW_PAGE_FAULTS = 0, 2
_PERF_FLAG_FD_CLOEXEC = 1 << 3


class _PerfEventAttr(ctypes.Structure):  # PERF_ATTR_SIZE_VER0 (64 bytes)
    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
                ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
                ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64),
                ("wakeup_events", ctypes.c_uint32), ("bp_type", ctypes.c_uint32), ("bp_addr", ctypes.c_uint64)]


def _perf_open(type_: int, config: int) -> int:
    """0 if a user-space-only counter of this process opens, else the errno."""
    from locality.kernel._platform import syscall

    # disabled | exclude_kernel | exclude_hv: allowed up to perf_event_paranoid 2
    attr = _PerfEventAttr(type=type_, size=ctypes.sizeof(_PerfEventAttr), config=config, flags=1 | 32 | 64)
    try:
        fd = syscall("perf_event_open", ctypes.addressof(attr), 0, -1, -1, _PERF_FLAG_FD_CLOEXEC)
    except Unsupported:
        return errno.ENOSYS
    except OSError as e:
        return e.errno
    os.close(fd)
    return 0


def _perf_events() -> Result:
    try:
        paranoid = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    except OSError:
        return _missing("no /proc/sys/kernel/perf_event_paranoid (kernel without CONFIG_PERF_EVENTS)",
                        "use a kernel with CONFIG_PERF_EVENTS", paranoid=None)
    sw = _perf_open(_PERF_TYPE_SOFTWARE, _PERF_COUNT_SW_PAGE_FAULTS)
    hw = _perf_open(_PERF_TYPE_HARDWARE, _PERF_COUNT_HW_CPU_CYCLES)
    hw_phrase = "hardware counters work" if hw == 0 else f"hardware counters do not ({errno.errorcode.get(hw, hw)}: no PMU exposed, e.g. in a VM)"
    if sw == 0:
        return _ok(f"perf_event_paranoid={paranoid}; perf_event_open(page-faults, user space) works; {hw_phrase}",
                   paranoid=paranoid, hardware=hw == 0)
    return _missing(f"perf_event_paranoid={paranoid}; perf_event_open(page-faults) failed: {os.strerror(sw)}",
                    "sysctl kernel.perf_event_paranoid=2 (or lower), or run as root", paranoid=paranoid, hardware=False)


def _vm_flags(addr: int) -> list[str]:
    text = Path("/proc/self/smaps").read_bytes()
    at = text.find(b"\n%x-" % addr)
    flags_at = text.find(b"\nVmFlags:", at)
    return text[flags_at + 9 : text.find(b"\n", flags_at + 1)].decode().split()


def _soft_dirty() -> Result:
    hint = ("rebuild the kernel with CONFIG_MEM_SOFT_DIRTY=y; locality measures written pages with "
            "userfaultfd WP_ASYNC + PAGEMAP_SCAN instead (see pagemap_scan)")
    with _scratch() as s:
        flags = _vm_flags(s.addr)
    # A kernel with soft-dirty support marks every new VMA soft-dirty ("sd").
    if "sd" in flags:
        return _ok("new mappings carry the soft-dirty VmFlag 'sd' (clear_refs mode 4 + pagemap bit 55)")
    return _missing(f"{_kconfig_phrase('CONFIG_MEM_SOFT_DIRTY')} (a new mapping has no 'sd' VmFlag)", hint)


def _idle_page_tracking() -> Result:
    if Path("/sys/kernel/mm/page_idle/bitmap").exists():
        return _ok("/sys/kernel/mm/page_idle/bitmap exists (root only)")
    return _missing(f"{_kconfig_phrase('CONFIG_IDLE_PAGE_TRACKING')} (no /sys/kernel/mm/page_idle/bitmap)",
                    "rebuild the kernel with CONFIG_IDLE_PAGE_TRACKING=y; for other processes locality "
                    "uses clear_refs + smaps Referenced per VMA instead")


def _thp() -> Result:
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not path.exists():
        return _missing(f"{_kconfig_phrase('CONFIG_TRANSPARENT_HUGEPAGE')} (no {path})",
                        "use a kernel with CONFIG_TRANSPARENT_HUGEPAGE for the huge-page experiments", mode=None)
    mode = next((w.strip("[]") for w in path.read_text().split() if w.startswith("[")), "?")
    meaning = {
        "always": "every large enough anonymous region may get 2 MiB pages",
        "madvise": "only regions that ask with madvise(MADV_HUGEPAGE) get 2 MiB pages",
    }
    if mode in meaning:
        return _ok(f"transparent huge pages: mode [{mode}]: {meaning[mode]}", mode=mode)
    return _missing(f"transparent huge pages: mode [{mode}]", f"echo madvise > {path} (as root)", mode=mode)


CAPABILITIES: dict[str, Callable[[], Result]] = {
    "mincore": _mincore,
    "pagemap": _pagemap,
    "pagemap_pfn": _pagemap_pfn,
    "pagemap_scan": _pagemap_scan,
    "clear_refs": _clear_refs,
    "process_madvise": _process_madvise,
    "swap": _swap,
    "zram": _zram,
    "cgroup_memory": _cgroup_memory,
    "cgroup_v1_memory": _cgroup_v1_memory_capability,
    "perf_events": _perf_events,
    "soft_dirty": _soft_dirty,
    "idle_page_tracking": _idle_page_tracking,
    "thp": _thp,
}


def capabilities() -> dict[str, Result]:
    """name -> {"available": bool, "reason": str, "hint": str, ...} for every
    instrument; some add detail keys (thp "mode", perf_events "paranoid")."""
    out = {}
    for name, probe in CAPABILITIES.items():
        try:
            out[name] = probe()
        except Exception as e:  # a probe reports, it never raises
            hint = getattr(e, "hint", None) or "see the reason"
            reason = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
            out[name] = _missing(f"probe failed: {reason}", hint)
    return out
