"""A child process with a known mapping, driven over a pipe: ground truth for tests.

    from childproc import Child          # tests/ is on sys.path (pytest rootdir-relative import)

    with Child(pages=1024) as c:        # anonymous, MAP_PRIVATE, MADV_NOHUGEPAGE
        c.touch([3, 7])                 # write one byte in pages 3 and 7 (populates them)
        pagemap(c.pid, c.addr, c.addr + c.length).present  # -> exactly pages 3, 7

``Child(pages, backing="file", directory=tmp_path)`` maps a file on disk
instead (MAP_SHARED, so pages are page cache; MADV_RANDOM, so no readahead
or fault-around maps pages that were not touched). Every method sends one JSON
command and waits for the child's answer; errors in the child are raised as
``ChildError`` with its message. ``close()`` (or leaving the ``with``) always
kills the child. Page lists are page indices into the mapping.

Commands: touch/write/read(pages), register_write_tracking()/unregister(),
tracker_start()/tracker_written() (a WriteTracker inside the child),
mincore(), faults() -> (minflt, majflt), msync(), pageout(pages=None),
sleep(seconds), loop_touch(pages, rate, seconds) (touches at ``rate`` pages/s),
madvise(pages, advice), munmap(pages), mremap(write) (moves the whole mapping to a
new address, writes pages ``write`` there and returns that address; the
child's own views of the old mapping are dead afterwards).
``start(op, **args)`` sends without waiting; ``result()`` collects the answer.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT = 60.0


class ChildError(RuntimeError):
    pass


class Child:
    def __init__(self, pages: int = 1024, backing: str = "anon", directory: str | os.PathLike | None = None):
        if backing not in ("anon", "file"):
            raise ValueError(f"backing must be 'anon' or 'file', got {backing!r}")
        if backing == "file" and directory is None:
            raise ValueError("a file-backed child needs a directory on a disk filesystem (not tmpfs)")
        self.pages = pages
        self.backing = backing
        spec = {"pages": pages, "backing": backing, "directory": str(directory) if directory else None}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.pid = self.proc.pid
        try:
            hello = self._read()
        except BaseException:
            self.close()
            raise
        self.addr: int = hello["addr"]
        self.length: int = hello["length"]
        self.page_size: int = hello["page_size"]
        self.path: str | None = hello["path"]

    # -- protocol
    def start(self, op: str, **args: Any) -> None:
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = DEFAULT_TIMEOUT) -> Any:
        return self._read(timeout)

    def call(self, op: str, **args: Any) -> Any:
        self.start(op, **args)
        return self.result()

    def _read(self, timeout: float = DEFAULT_TIMEOUT) -> Any:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise ChildError(f"child {self.pid} did not answer within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise ChildError(f"child {self.pid} exited (status {self.proc.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            raise ChildError(reply["error"])
        return reply["result"] if "result" in reply else reply

    # -- commands
    def touch(self, pages) -> None:
        self.call("write", pages=[int(p) for p in pages])

    write = touch

    def read(self, pages) -> None:
        self.call("read", pages=[int(p) for p in pages])

    def register_write_tracking(self) -> None:
        self.call("register")

    def unregister_write_tracking(self) -> None:
        self.call("unregister")

    def tracker_start(self) -> None:
        self.call("tracker_start")

    def tracker_written(self) -> list[int]:
        return self.call("tracker_written")

    def mincore(self) -> list[int]:
        return self.call("mincore")

    def faults(self) -> tuple[int, int]:
        return tuple(self.call("faults"))

    def msync(self) -> None:
        self.call("msync")

    def pageout(self, pages=None) -> int:
        return self.call("pageout", pages=None if pages is None else [int(p) for p in pages])

    def sleep(self, seconds: float) -> None:
        self.call("sleep", seconds=seconds)

    def madvise(self, pages, advice: int) -> None:
        self.call("madvise", pages=[int(p) for p in pages], advice=int(advice))

    def munmap(self, pages) -> None:
        self.call("munmap", pages=[int(p) for p in pages])

    def mremap(self, write=()) -> int:
        return self.call("mremap", write=[int(p) for p in write])

    def loop_touch(self, pages, rate: float, seconds: float) -> int:
        return self.call("loop_touch", pages=[int(p) for p in pages], rate=rate, seconds=seconds)

    # -- lifetime
    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        path = getattr(self, "path", None)
        if path:
            Path(path).unlink(missing_ok=True)

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the child side ------------------------------------------------------------


def _child_main(spec: dict) -> None:
    import ctypes
    import mmap
    import resource
    import tempfile
    import time

    import numpy as np

    page = mmap.PAGESIZE
    length = spec["pages"] * page
    path = None
    if spec["backing"] == "file":
        fd, path = tempfile.mkstemp(prefix="childproc-", suffix=".arena", dir=spec["directory"])
        os.ftruncate(fd, length)
        m = mmap.mmap(fd, length, flags=mmap.MAP_SHARED)
        os.close(fd)
    else:
        m = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_NOHUGEPAGE)
    if spec["backing"] == "file":
        # No readahead: otherwise a fault on one page reads its neighbours into the
        # page cache and fault-around maps them too, and "touched" is no longer exact.
        m.madvise(mmap.MADV_RANDOM)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    view = np.frombuffer(m, dtype=np.uint8)
    tracker = None

    def reply(obj: dict) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def offsets(pages) -> np.ndarray:
        return np.asarray(pages, dtype=np.int64) * page

    def run(op: str, args: dict) -> Any:
        nonlocal tracker
        from locality import kernel

        if op == "write":
            view[offsets(args["pages"])] += 1  # a real store to one byte per page
        elif op == "read":
            return int(view[offsets(args["pages"])].sum())
        elif op == "register":
            kernel.register_write_tracking(addr, length)
        elif op == "unregister":
            kernel.unregister_write_tracking(addr, length)
        elif op == "tracker_start":
            tracker = kernel.WriteTracker(addr, length)
        elif op == "tracker_written":
            return np.flatnonzero(tracker.written()).tolist()
        elif op == "mincore":
            return np.flatnonzero(kernel.mincore(addr, length)).tolist()
        elif op == "faults":
            ru = resource.getrusage(resource.RUSAGE_SELF)
            return [ru.ru_minflt, ru.ru_majflt]
        elif op == "msync":
            m.flush()
        elif op == "pageout":
            if args.get("pages") is None:
                return kernel.pageout(addr, length)
            return sum(kernel.pageout(addr + p * page, page) for p in args["pages"])
        elif op == "sleep":
            time.sleep(args["seconds"])
        elif op in ("madvise", "munmap"):
            from locality.kernel._platform import libc

            libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            for p in args["pages"]:
                rv = (libc.madvise(ctypes.c_void_p(addr + p * page), page, args["advice"]) if op == "madvise"
                      else libc.munmap(ctypes.c_void_p(addr + p * page), page))
                if rv != 0:
                    raise OSError(ctypes.get_errno(), f"{op} of page {p}")
        elif op == "mremap":
            from locality.kernel._platform import libc

            libc.mremap.restype = ctypes.c_void_p
            libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
            libc.mmap.restype = ctypes.c_void_p
            libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
            # Onto a fresh placeholder mapping (MREMAP_MAYMOVE | MREMAP_FIXED), so it surely moves.
            target = libc.mmap(None, length, 3, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
            new = libc.mremap(ctypes.c_void_p(addr), length, length, 3, ctypes.c_void_p(target))
            if new in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), "mremap")
            for p in args["write"]:
                ctypes.c_char.from_address(new + p * page).value = b"w"
            return new
        elif op == "loop_touch":
            idx = offsets(args["pages"])
            interval, deadline, done = 1.0 / args["rate"], time.monotonic() + args["seconds"], 0
            while time.monotonic() < deadline:
                view[idx[done % len(idx)]] += 1
                done += 1
                time.sleep(interval)
            return done
        else:
            raise ValueError(f"unknown command {op!r}")
        return None

    reply({"addr": addr, "length": length, "page_size": page, "path": path, "pid": os.getpid()})
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            reply({"result": run(cmd.pop("op"), cmd)})
        except Exception as e:  # report to the parent, keep serving
            reply({"error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    _child_main(json.loads(sys.argv[1]))
