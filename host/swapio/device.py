"""The swap device: the swap file, an array of page-sized slots.

Which slot holds which page is the slot allocator's business (host/swapio/slots.py); the file is
sparse, and the slots of a cluster that empties are punched out (fallocate(2)). Reads and writes
are real `preadv`/`pwritev` (preadv(2), pwritev(2)) straight between the file and a page of the
RAM mapping; that page is page-aligned, so the file may be opened with O_DIRECT (open(2)). Which
thread or syscall issues them is the I/O engine's business (host/swapio/engine.py).
"""
from __future__ import annotations

import ctypes
import errno
import os

from protocol.messages import PAGE_SIZE
from protocol.errors import SwapIOError

FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)


def _fallocate(fd: int, mode: int, offset: int, length: int) -> int:
    return _libc.fallocate(fd, mode, offset, length)


class SwapDevice:
    """The swap file: page-sized slots."""

    def __init__(self, path: str, direct_io: bool = False, *, truncate: bool = True, exclusive: bool = False):
        """Open the swap file at `path`, read-write, with O_DIRECT if `direct_io`.

        By default the file is created, or emptied if it exists: a new run starts with no slots.
        With `exclusive` it must not exist (O_EXCL): a path the user named is never emptied, and
        close() removes only a file this device created.
        With `truncate=False` an existing file is opened as it is (its slots kept; it must exist),
        for reading a file written beforehand. Raises SwapIOError, with the OSError as its cause."""
        self.path = path
        self.direct_io = direct_io
        flags = os.O_RDWR | (os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC) if truncate else 0)
        if direct_io:
            flags |= os.O_DIRECT
        try:
            self.fd = os.open(path, flags, 0o600)
        except OSError as exc:
            hint = (" (the file system may not support O_DIRECT; drop --direct-io)" if exc.errno == errno.EINVAL
                    else " (the host takes only a path that does not exist yet)" if exc.errno == errno.EEXIST else "")
            raise SwapIOError(f"cannot open swap file {path}: {exc.strerror}{hint}") from exc

    def read_into(self, slot: int, dest: memoryview) -> None:
        """Read `slot` into `dest` (PAGE_SIZE bytes). Raises OSError; EIO for a short read
        (the slot lies past the end of the file)."""
        got = os.preadv(self.fd, [dest], slot * PAGE_SIZE)
        if got != PAGE_SIZE:
            raise OSError(errno.EIO, f"short swap read of slot {slot}: {got} bytes")

    def read_run(self, first_slot: int, dests: list[memoryview]) -> None:
        """Read consecutive slots from `first_slot` into `dests` (PAGE_SIZE bytes each) with one
        preadv. Raises OSError; EIO for a short read."""
        want = PAGE_SIZE * len(dests)
        got = os.preadv(self.fd, dests, first_slot * PAGE_SIZE)
        if got != want:
            raise OSError(errno.EIO, f"short swap read of slots {first_slot}+{len(dests)}: {got} bytes")

    def write_from(self, slot: int, src: memoryview) -> None:
        """Write `src` (PAGE_SIZE bytes) to `slot`. Raises OSError; EIO for a short write."""
        put = os.pwritev(self.fd, [src], slot * PAGE_SIZE)
        if put != PAGE_SIZE:
            raise OSError(errno.EIO, f"short swap write of slot {slot}: {put} bytes")

    def discard(self, first_slot: int, count: int) -> None:
        """Give the storage of `count` slots from `first_slot` back (a hole punched; the file keeps
        its size). Best effort: a file system without hole punching keeps the blocks."""
        if _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, first_slot * PAGE_SIZE,
                      count * PAGE_SIZE) != 0:
            pass   # the blocks stay allocated; the slots are free all the same

    def allocated_bytes(self) -> int:
        """Bytes of storage the file holds (st_blocks, in 512-byte units): holes cost nothing."""
        return os.fstat(self.fd).st_blocks * 512

    def discard_all(self) -> None:
        """Free every slot: the file is truncated to empty."""
        os.ftruncate(self.fd, 0)

    def close(self, unlink: bool = True) -> None:
        """Close the file, and remove it unless `unlink` is False."""
        os.close(self.fd)
        if unlink:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
