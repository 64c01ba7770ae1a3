"""Per-page arrays that cost memory only where they are written.

A terabyte guest has 2^28 pages: a `bytearray` per page would cost 256 MiB per byte of state,
zero-filled (and so touched) at start. These arrays live instead in anonymous private mappings
(mmap(2) MAP_PRIVATE | MAP_ANONYMOUS): the kernel backs a page of the array only when it is first
written, reads of untouched parts see its shared zero page, and `clear` gives everything back
(madvise(2) MADV_DONTNEED). Creating one is O(1) whatever its length.

Indexing an `mmap` gives and takes an int, like a `bytearray`, and `find` scans in C, so the hot
paths use the mapping itself; `positions` and `count` walk the set entries of a byte map with
`find`, in time proportional to the map's length scanned in C plus one Python step per entry.
"""
from __future__ import annotations

import mmap
from array import array
from typing import Iterator


def byte_map(length: int) -> mmap.mmap:
    """`length` zero bytes, indexable and writable like a bytearray (mm[i] is an int 0..255)."""
    return mmap.mmap(-1, max(1, length), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def word_map(length: int, typecode: str = "I") -> tuple[mmap.mmap, memoryview]:
    """`length` zero words of struct `typecode` ("I": 32-bit unsigned): the mapping (to clear or
    close) and a memoryview of it cast to the words (view[i] is an int)."""
    mm = mmap.mmap(-1, max(1, length * array(typecode).itemsize), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return mm, memoryview(mm).cast(typecode)[:length]


def clear(mm: mmap.mmap) -> None:
    """Every byte zero again, and the memory behind the map given back."""
    mm.madvise(mmap.MADV_DONTNEED)


def positions(mm: mmap.mmap, value: int = 1, length: int | None = None) -> Iterator[int]:
    """The indices below `length` (default: the whole map) whose byte is `value`, ascending."""
    needle, end = bytes([value]), len(mm) if length is None else length
    i = mm.find(needle, 0, end)
    while i >= 0:
        yield i
        i = mm.find(needle, i + 1, end)


def count(mm: mmap.mmap, value: int = 1, length: int | None = None) -> int:
    """How many bytes below `length` are `value`."""
    return sum(1 for _ in positions(mm, value, length))
