"""Reading this process's own objects by address, in numpy gathers.

``id()`` is an address in CPython, so the fields of many objects (a dict's
keys table, a list's item array, an int's digit count) can be read in one
fancy index over a ctypes view instead of a ctypes call per object (100x
slower: the objects layout has 28M heap blocks at 1M workers). The offsets
are CPython 3.11's (64-bit), the interpreter this project runs on (an int's
digit count moved into a tag in 3.12, read as such); callers check
``CPYTHON`` and fall back to ``sys.getsizeof`` elsewhere, and ``dict_values``
checks every entry's key before it trusts the layout it reads.
"""

from __future__ import annotations

import ctypes
import sys

import numpy as np

__all__ = ["CPYTHON", "words_at", "list_items", "scalar_sizes", "dict_values"]

CPYTHON = sys.implementation.name == "cpython"
_TYPE, _SIZE = 8, 16  # ob_type, ob_size (an int's signed digit count)
_OB_ITEM = 24  # PyListObject: the item array
_FLOAT_SIZE = sys.getsizeof(0.5)
_INT_BASE = sys.getsizeof(1) - 4  # the header; then 4 bytes per 30-bit digit, at least one (0 too)


def words_at(addrs: np.ndarray) -> np.ndarray:
    """The 8-byte words at these 8-aligned addresses of this process, in one gather
    from a view of the whole user address space (made once: a ctypes array type
    per call would be cached by ctypes for every new length, and grow the heap
    the caller measures), of which only the words asked for are touched."""
    addrs = np.asarray(addrs, dtype=np.int64)
    if addrs.size == 0:
        return np.empty(0, np.int64)
    if addrs.min() < _LOWEST:  # a null pointer read from an object would index from the view's end
        raise ValueError(f"address {int(addrs.min()):#x} is below {_LOWEST:#x}: not an object's")
    return _address_space()[(addrs - _LOWEST) >> 3]


_LOWEST, _HIGHEST = 4096, 1 << 48  # above the null page, up to the 48-bit user address space
_SPACE: list[np.ndarray] = []


def _address_space() -> np.ndarray:
    if not _SPACE:
        view = (ctypes.c_int64 * ((_HIGHEST - _LOWEST) // 8)).from_address(_LOWEST)
        _SPACE.append(np.frombuffer(view, dtype=np.int64))
    return _SPACE[0]


def list_items(lst: list, index: np.ndarray | None = None) -> np.ndarray:
    """Addresses (id()) of ``lst``'s items (at ``index``, all by default), read from its item
    array: a gather instead of a Python call per item. The caller keeps ``lst`` alive."""
    index = np.arange(len(lst), dtype=np.int64) if index is None else np.asarray(index, dtype=np.int64)
    if not CPYTHON or type(lst) is not list:
        return np.fromiter((id(lst[i]) for i in index.tolist()), np.int64, index.size)
    if index.size and (index.min() < 0 or index.max() >= len(lst)):
        raise IndexError(f"list index out of range [0, {len(lst)})")
    return words_at(words_at(np.array([id(lst) + _OB_ITEM]))[0] + 8 * index)


def scalar_sizes(addrs: np.ndarray) -> np.ndarray:
    """sys.getsizeof of the live objects at ``addrs``: floats and ints from their
    headers, anything else by a call (each must be kept alive by the caller)."""
    addrs = np.asarray(addrs, dtype=np.int64)
    if addrs.size == 0:
        return np.empty(0, np.int64)
    types = words_at(addrs + _TYPE)
    is_float, is_int = types == id(float), types == id(int)
    tag = words_at(np.where(is_int, addrs, addrs[0]) + _SIZE)
    # 3.11: ob_size, the signed digit count; 3.12+: lv_tag, the digit count << 3 | sign bits
    digits = np.maximum(1, np.abs(tag) if sys.version_info < (3, 12) else tag >> 3)
    sizes = np.where(is_float, _FLOAT_SIZE, _INT_BASE + 4 * digits).astype(np.int64)
    other = np.flatnonzero(~(is_float | is_int))
    if other.size:
        sizes[other] = [sys.getsizeof(ctypes.cast(int(a), ctypes.py_object).value) for a in addrs[other].tolist()]
    return sizes


def dict_values(dicts: np.ndarray, keys: tuple[str, ...]) -> np.ndarray | None:
    """Addresses of the values of ``keys`` in each dict at ``dicts`` ((len(dicts), len(keys))
    int64), read from their entry tables; None unless every dict is a combined table of
    str keys holding exactly ``keys``, in this order (how a dict display builds them)."""
    dicts = np.asarray(dicts, dtype=np.int64)
    if not CPYTHON or dicts.size == 0:
        return None
    table = words_at(dicts + _MA_KEYS)
    if (words_at(dicts + _MA_VALUES) != 0).any() or (words_at(dicts + _MA_USED) != len(keys)).any():
        return None
    shape = words_at(table + _DK_SHAPE)
    if ((shape >> 16) & 0xFF == 0).any() or (words_at(table + _DK_NENTRIES) != len(keys)).any():
        return None  # dk_kind 0: a general table (24-byte entries with hashes)
    entries = table + _DK_INDICES + (1 << ((shape >> 8) & 0xFF))
    out = np.empty((dicts.size, len(keys)), np.int64)
    for k, key in enumerate(keys):
        if (words_at(entries + 16 * k) != id(key)).any():  # interned: the same str object in every dict
            return None
        out[:, k] = words_at(entries + 16 * k + 8)
    return out


_MA_USED, _MA_KEYS, _MA_VALUES = 16, 32, 40  # PyDictObject
_DK_SHAPE, _DK_NENTRIES, _DK_INDICES = 8, 24, 32  # PyDictKeysObject: log2 size, log2 index bytes, kind; ...
