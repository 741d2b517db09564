"""Exact page-level instruments from the kernel. Knows nothing of workers.

One small module per kernel source (psutil's model); platform facts
(syscall and ioctl numbers, page size) live only in ``_platform``.

Three modules share their name with their main function (mincore, pagemap,
capabilities). The names are bound here after their modules are imported, so
``from locality.kernel import pagemap`` is always the function; use
``from locality.kernel.pagemap import X`` for a module's other names.
"""

from locality.kernel._platform import PAGE_SIZE, SWP_PTE_MARKER, check_pid, die_with_parent
from locality.kernel.capabilities import capabilities
from locality.kernel.mincore import mincore
from locality.kernel.pagemap import PageMap, pagemap, read_entries, residency
from locality.kernel.procfs import Vma, clear_refs, faults, rollup, smaps, thread_stack_pointers, vmas
from locality.kernel.reclaim import cold, pageout, process_cold, process_pageout
from locality.kernel.swap import swap_active, zram_swap_off, zram_swap_on
from locality.kernel.writetrack import WriteTracker, register_write_tracking, unregister_write_tracking

__all__ = [
    "PAGE_SIZE",
    "SWP_PTE_MARKER",
    "PageMap",
    "Vma",
    "WriteTracker",
    "capabilities",
    "check_pid",
    "clear_refs",
    "cold",
    "die_with_parent",
    "faults",
    "mincore",
    "pagemap",
    "pageout",
    "process_cold",
    "process_pageout",
    "read_entries",
    "register_write_tracking",
    "residency",
    "rollup",
    "smaps",
    "swap_active",
    "thread_stack_pointers",
    "unregister_write_tracking",
    "vmas",
    "zram_swap_off",
    "zram_swap_on",
]
