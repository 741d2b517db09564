"""Exact page-level instruments from the kernel. Knows nothing of workers.

One small module per kernel source (psutil's model); platform facts
(syscall and ioctl numbers, page size) live only in ``_platform``.
Names are resolved lazily so importing one instrument does not import all.
"""

from __future__ import annotations

import importlib
from typing import Any

# Two modules share their name with their main function. Importing a submodule
# sets the package attribute of that name to the module, so these functions are
# bound eagerly, after their modules, and `from locality.kernel import pagemap`
# is always the function. (Use `from locality.kernel.pagemap import X` for the
# module's other names.)
from locality.kernel.mincore import mincore as mincore
from locality.kernel.pagemap import PageMap as PageMap, pagemap as pagemap

_EXPORTS = {
    "PAGE_SIZE": "_platform",
    "residency": "pagemap",
    "WriteTracker": "writetrack",
    "register_write_tracking": "writetrack",
    "unregister_write_tracking": "writetrack",
    "Vma": "procfs",
    "vmas": "procfs",
    "smaps": "procfs",
    "rollup": "procfs",
    "clear_refs": "procfs",
    "faults": "procfs",
    "pageout": "reclaim",
    "cold": "reclaim",
    "process_pageout": "reclaim",
    "process_cold": "reclaim",
    "capabilities": "capabilities",
    "zram_swap_on": "swap",
    "zram_swap_off": "swap",
    "swap_active": "swap",
}

__all__ = sorted([*_EXPORTS, "mincore", "pagemap", "PageMap"])


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'locality.kernel' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"locality.kernel.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
