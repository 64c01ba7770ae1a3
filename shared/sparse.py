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


# No swap space reserved up front (mmap(2) MAP_NORESERVE; Python 3.11's mmap module lacks the
# name): under the kernel's heuristic overcommit a 32 TiB guest's 128 GiB slot map would be
# refused otherwise, though it will only ever hold the pages touched.
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE


def byte_map(length: int) -> mmap.mmap:
    """`length` zero bytes, indexable and writable like a bytearray (mm[i] is an int 0..255).
    Raises OSError (ENOMEM) if the address space cannot hold it."""
    return mmap.mmap(-1, max(1, length), flags=_FLAGS)


def word_map(length: int, typecode: str = "I") -> tuple[mmap.mmap, memoryview]:
    """`length` zero words of struct `typecode` ("I": 32-bit unsigned): the mapping (to clear or
    close) and a memoryview of it cast to the words (view[i] is an int)."""
    mm = mmap.mmap(-1, max(1, length * array(typecode).itemsize), flags=_FLAGS)
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


class PageSet:
    """A set of page numbers below `length` as a byte map, plus one byte per CHUNK pages saying
    whether any of them is in: listing or counting the members scans the chunk map and then only
    the chunks in use, so it stays fast when the map is terabytes of pages long (a 64 TiB guest
    has 2^34 pages: 16 GiB of map, 4 MiB of chunks).

    `pages[i] = 1` adds page i (as on a bytearray; 0 does not remove it from the chunk map);
    `pages[i]` reads it."""
    CHUNK = 4096

    def __init__(self, length: int):
        self.length = length
        self._map = byte_map(length)
        self._chunks = byte_map(-(-length // self.CHUNK))

    def __setitem__(self, page: int, value: int) -> None:
        self._map[page] = value
        if value:
            self._chunks[page // self.CHUNK] = 1

    def __getitem__(self, page: int) -> int:
        return self._map[page]

    def __iter__(self) -> Iterator[int]:
        """The members, ascending."""
        for chunk in positions(self._chunks, 1, len(self._chunks)):
            start = chunk * self.CHUNK
            end = min(start + self.CHUNK, self.length)
            i = self._map.find(b"\x01", start, end)
            while i >= 0:
                yield i
                i = self._map.find(b"\x01", i + 1, end)

    def __len__(self) -> int:
        return sum(1 for _ in self)
