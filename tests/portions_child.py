"""A child with known objects in known places, for tests/test_portions.py.

It builds a lean population over a slab arena (worker_state, coroutine
frames, the scheduler's list), then allocates what it does not report: a
list of floats (pymalloc pools), an 8 MiB bytearray (malloc) and a thread
blocked in sleep (a thread stack). It saves its portion walk to argv[1] and
prints one JSON line with the addresses the test checks, then waits for
stdin to close.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import sys
import threading
import time

import numpy as np

from locality.experiment.sampler import anonymous_ranges
from locality.kernel import PAGE_SIZE, vmas
from locality.layouts import make_layout
from locality.population import Population, make_pattern
from locality.population.portions import walk
from locality.population.schedulers import object_span

N = 5000


def _own_stack() -> list[int]:
    """[low, high) of the calling thread's stack, from pthread_getattr_np."""
    libc = ctypes.CDLL(None)
    attr = ctypes.create_string_buffer(128)  # pthread_attr_t is 56 bytes on x86_64 and aarch64
    libc.pthread_self.restype = ctypes.c_void_p
    if libc.pthread_getattr_np(ctypes.c_void_p(libc.pthread_self()), attr) != 0:
        return []
    addr, size = ctypes.c_void_p(), ctypes.c_size_t()
    libc.pthread_attr_getstack(attr, ctypes.byref(addr), ctypes.byref(size))
    libc.pthread_attr_destroy(attr)
    return [addr.value, addr.value + size.value]


def main() -> None:
    layout = make_layout("slab", N)
    pop = Population(N, scheduler="lean", pattern=make_pattern("uniform", N), layout=layout)
    pop.spawn()
    floats = [float(i) + 0.5 for i in range(100_000)]
    blob = bytearray(8 << 20)
    blob[::4096] = b"x" * len(blob[::4096])  # resident, every page
    started = threading.Event()
    stack: list[int] = []

    def sleeper() -> None:
        stack.extend(_own_stack())
        started.set()
        time.sleep(3600)

    threading.Thread(target=sleeper, daemon=True).start()
    started.wait()
    gc.collect()
    arenas = [(a.address, a.length) for a in layout.arenas.values()]
    anon = [(s, ln) for _, s, ln in anonymous_ranges(vmas(os.getpid()), exclude=arenas)]
    np.savez(sys.argv[1], **walk(pop, layout, anon, int(PAGE_SIZE)))
    coros = pop._scheduler._coros
    facts = {
        "arenas": arenas,
        "coroutines": [object_span(c) for c in coros],
        "scheduler_items": [ctypes.c_void_p.from_address(id(coros) + 24).value, 8 * len(coros)],
        "floats": [[id(f), id(f) + sys.getsizeof(f)] for f in floats],
        "blob": [int(np.frombuffer(blob, np.uint8).ctypes.data), len(blob)],
        "thread_stack": stack,
        "code": ctypes.cast(ctypes.pythonapi.Py_IncRef, ctypes.c_void_p).value,
    }
    print(json.dumps(facts), flush=True)
    sys.stdin.read()
    del floats, blob


if __name__ == "__main__":
    main()
