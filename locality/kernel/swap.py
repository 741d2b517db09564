"""A zram swap device, so anonymous memory can be paged out (root only).

``zram_swap_on`` records the device's prior state in
``/run/locality/zram-state.json`` before changing anything, and undoes every
step it made if a later one fails (or on Ctrl-C); ``zram_swap_off`` restores
that state and deletes the file. A zram device or swap that locality did not
set up is never touched. Calls are serialised with flock on the device's
sysfs directory, so concurrent test runs cannot interleave.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

from locality.errors import InvalidArgument, LocalityError, Unsupported
from locality.kernel._platform import PAGE_SIZE, SWAP_FLAG_PREFER, SWAP_FLAG_PRIO_MASK, libc

ZRAM_SYSFS = Path("/sys/block/zram0")
ZRAM_DEVICE = Path("/dev/zram0")
STATE_FILE = Path("/run/locality/zram-state.json")
SWAP_PRIORITY = 32767  # the highest: used before any disk swap
MIN_SIZE = 1 << 20  # mkswap needs at least 10 pages; below 1 MiB swap is pointless


def swap_active() -> list[dict]:
    """Active swap areas from /proc/swaps: filename, type, size_bytes, used_bytes, priority."""
    try:
        lines = Path("/proc/swaps").read_text().splitlines()[1:]
    except FileNotFoundError:
        return []
    areas = []
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        name, kind, size_kib, used_kib, prio = fields[:5]
        areas.append(
            {
                "filename": name.replace("\\040", " "),
                "type": kind,
                "size_bytes": int(size_kib) * 1024,
                "used_bytes": int(used_kib) * 1024,
                "priority": int(prio),
            }
        )
    return areas


def _zram_is_swap() -> bool:
    device = os.path.realpath(ZRAM_DEVICE)
    return any(os.path.realpath(a["filename"]) == device for a in swap_active())


def _read(attr: str) -> str:
    return (ZRAM_SYSFS / attr).read_text().strip()


def _write(attr: str, value: str) -> None:
    with open(ZRAM_SYSFS / attr, "w") as f:
        f.write(value)


def _selected_algorithm() -> str | None:
    m = re.search(r"\[([^\]]+)\]", _read("comp_algorithm"))
    return m.group(1) if m else None


def _start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (tells a live owner from a reused PID)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _live_owner(state: dict) -> int | None:
    """PID of the process that turned swap on, if it is another process still running."""
    pid = state.get("owner_pid")
    if not pid or pid == os.getpid():
        return None
    return pid if _start_time(pid) == state.get("owner_start") else None


def _require_zram_and_root() -> None:
    if not ZRAM_SYSFS.is_dir() or not ZRAM_DEVICE.exists():
        raise Unsupported("zram swap", "there is no zram device (/sys/block/zram0)", "load the module: modprobe zram")
    if os.geteuid() != 0:
        raise Unsupported("zram swap", "configuring zram and swapon need root", "run it as root (sudo locality swap on)")


@contextlib.contextmanager
def _device_lock() -> Iterator[None]:
    fd = os.open(ZRAM_SYSFS, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_state(state: dict) -> None:
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    # The owner's PID in the name: `locality doctor` removes it only once that process is dead.
    fd, tmp = tempfile.mkstemp(prefix=f".zram-state.{os.getpid()}.", dir=STATE_FILE.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, STATE_FILE)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _mkswap(size_bytes: int) -> None:
    if shutil.which("mkswap"):
        out = subprocess.run(["mkswap", str(ZRAM_DEVICE)], capture_output=True, text=True)
        if out.returncode != 0:
            raise LocalityError(f"mkswap {ZRAM_DEVICE} failed: {out.stderr.strip() or out.stdout.strip()}")
        return
    # util-linux is missing: write the swap header (struct swap_header, version 1) ourselves.
    header = bytearray(PAGE_SIZE)
    struct.pack_into("<III16s", header, 1024, 1, size_bytes // PAGE_SIZE - 1, 0, uuid.uuid4().bytes)
    header[PAGE_SIZE - 10 :] = b"SWAPSPACE2"
    fd = os.open(ZRAM_DEVICE, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.pwrite(fd, bytes(header), 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def _swapon() -> None:
    if libc.swapon(os.fsencode(ZRAM_DEVICE), SWAP_FLAG_PREFER | (SWAP_PRIORITY & SWAP_FLAG_PRIO_MASK)) != 0:
        err = ctypes.get_errno()
        raise LocalityError(f"swapon {ZRAM_DEVICE} failed: {os.strerror(err)}")


def _swapoff() -> None:
    if libc.swapoff(os.fsencode(ZRAM_DEVICE)) != 0:
        err = ctypes.get_errno()
        hint = "free some memory: swapped pages must fit back in RAM" if err == errno.ENOMEM else None
        raise LocalityError(f"swapoff {ZRAM_DEVICE} failed: {os.strerror(err)}", hint)


def _restore(prior: dict) -> None:
    """Undo zram_swap_on: swapoff, reset the device, restore its settings, forget the state."""
    if _zram_is_swap():
        _swapoff()
    _write("reset", "1")
    algorithm = prior.get("comp_algorithm")
    if algorithm and _selected_algorithm() != algorithm:
        _write("comp_algorithm", algorithm)
    if prior.get("disksize"):
        _write("disksize", str(prior["disksize"]))
    STATE_FILE.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # leave /run as found when nothing else is in there
        STATE_FILE.parent.rmdir()


def zram_swap_on(size_bytes: int, *, keep: bool = False) -> None:
    """Turn on a zram swap device of ``size_bytes`` (uncompressed capacity), highest priority.

    Refuses if the device is already in use (as swap, or initialised for
    something else). Every step is undone if a later one fails. ``keep``:
    meant to outlive this process (`locality swap on`); otherwise swap left
    on after this process died is a leftover that `locality doctor --fix`
    turns off.
    """
    if isinstance(size_bytes, bool) or not isinstance(size_bytes, int) or size_bytes < MIN_SIZE:
        raise InvalidArgument(f"zram swap size must be at least {MIN_SIZE} bytes (1M), got {size_bytes!r}")
    size_bytes = (size_bytes + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
    _require_zram_and_root()
    with _device_lock():
        if _zram_is_swap():
            if STATE_FILE.exists():
                raise LocalityError("zram swap is already on", "run `locality swap off` first to change its size")
            raise LocalityError(f"{ZRAM_DEVICE} is already used as swap, not set up by locality", "leave it alone, or swapoff it yourself")
        disksize = int(_read("disksize"))
        if disksize != 0:
            raise LocalityError(
                f"{ZRAM_DEVICE} is already initialised ({disksize} bytes) for another use",
                "reset it with `echo 1 > /sys/block/zram0/reset` if nothing uses it",
            )
        prior = {
            "device": str(ZRAM_DEVICE),
            "disksize": disksize,
            "comp_algorithm": _selected_algorithm(),
            "was_swap": False,
            "size_bytes": size_bytes,
            "turned_on": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "owner_pid": os.getpid(),
            "owner_start": _start_time(os.getpid()),
            "keep": keep,
        }
        _write_state(prior)
        try:
            try:
                _write("disksize", str(size_bytes))
            except OSError as e:
                raise LocalityError(f"cannot set zram disksize to {size_bytes}: {os.strerror(e.errno)}") from None
            _mkswap(size_bytes)
            _swapon()
        except BaseException:
            _restore(prior)
            raise


def zram_swap_off(*, force: bool = False) -> None:
    """Turn off the zram swap locality turned on and restore the device's prior state.

    A no-op when locality has nothing turned on. Refuses while the process
    that turned it on is still running (another experiment or test may be
    using it), unless ``force``; `locality swap on` exits at once, so swap it
    turned on can be turned off from anywhere.
    """
    _require_zram_and_root()
    with _device_lock():
        if not STATE_FILE.exists():
            if _zram_is_swap():
                raise LocalityError(
                    f"{ZRAM_DEVICE} swap was not turned on by locality (no {STATE_FILE})",
                    f"swapoff {ZRAM_DEVICE} yourself if you mean it",
                )
            return
        try:
            prior = json.loads(STATE_FILE.read_text())
        except (OSError, ValueError) as e:
            raise LocalityError(f"cannot read {STATE_FILE}: {e}", "inspect it, or delete it and reset zram0 by hand") from None
        owner = _live_owner(prior)
        if owner is not None and not force:
            raise LocalityError(
                f"zram swap is in use: PID {owner} turned it on and is still running",
                "let it finish, or force it off with `locality swap off --force`",
            )
        _restore(prior)


@contextlib.contextmanager
def zram_swap(size_bytes: int) -> Iterator[None]:
    """``with zram_swap(1 << 30):`` swap on for the block, off again afterwards (also on error)."""
    zram_swap_on(size_bytes)
    try:
        yield
    finally:
        zram_swap_off()
