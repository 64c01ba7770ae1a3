"""Creating (host) and attaching (guest) the memory-mapped files: RAM, stage 2, control.

Guest RAM is a file on tmpfs, so pages freed with MADV_REMOVE really return to the system.
The stage-2 file holds two byte arrays indexed by guest frame number (gfn): `perm` (written by
the host only: a `shared.layout.Perm`, 0 = not mapped; `valid` is the same array under its old
name) and `accessed` (set by the guest's MMU on every access, cleared by the host's reclaim scan:
the hardware access flag).

Atomicity (protocol/SPEC.md §6.1). Both processes touch these words concurrently, and the
handshakes on them assume what the hardware gives: an aligned 32-bit load or store is
single-copy atomic (Arm ARM B2.2.1; Intel SDM vol. 3 §9.1.1). CPython's `struct.pack_into` is
not one store (it zeroes the bytes, then stores them one by one, so a concurrent reader can see
0), so every mutable control-block word goes through `atomicshm` (one `lock`-free instruction
per load, store, exchange or compare-and-swap). Stage-2 entries are single bytes, whose loads
and stores are atomic as plain `memoryview` item accesses.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

import atomicshm

from protocol.messages import PAGE_SIZE
from shared.layout import (BLOCK, BLOCK_MAGIC, BLOCK_SIZE, FIELD_OFFSET, HEADER, HEADER_MAGIC,
                           LAYOUT_VERSION, RESERVED_OFFSET, RESERVED_SIZE, STAGE2_VERSION, block_offset,
                           control_file_size, pack_block, pack_header)
from protocol.errors import LayoutError
from shared.units import format_size

STAGE2_HEADER = struct.Struct("<4sHHQ48s")  # magic, version, pad, guest_pages, reserved
STAGE2_MAGIC = b"APFS"
_WORD_FIELDS = tuple(FIELD_OFFSET)   # the mutable u32 words of a block


MEMFD_PREFIX = "/proc/self/fd/"   # a memfd the caller made (shared.lifeline.memfd) and keeps open


def _create_file(path: str, size: int) -> int:
    """A new file of `size` bytes: created at `path`, or, for a memfd's /proc/self/fd path, that
    anonymous file opened again (the kernel frees it with its last holder, so nothing is left)."""
    if path.startswith(MEMFD_PREFIX):
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    else:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
    except (OSError, OverflowError) as exc:
        os.close(fd)
        if not path.startswith(MEMFD_PREFIX):
            os.unlink(path)
        why = exc.strerror if isinstance(exc, OSError) else "too large for a file"
        raise LayoutError(f"cannot size a shared file to {format_size(size)}: {why}; more than this "
                          "machine can hold") from exc
    return fd


def _zero(mm: mmap.mmap, start: int, length: int) -> None:
    """Zero `length` bytes of a shared file mapping from `start`: the whole pages among them are
    punched out of the file (madvise MADV_REMOVE; they read as zeros and cost nothing), the
    partial pages at either end written. Linear in the pages the file holds, not in `length`."""
    end = start + length
    first, last = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE, end // mmap.PAGESIZE * mmap.PAGESIZE
    if last <= first:
        mm[start:end] = bytes(length)
        return
    mm[start:first] = bytes(first - start)
    mm[last:end] = bytes(end - last)
    mm.madvise(mmap.MADV_REMOVE, first, last - first)


def _map(path: str, expected_size: int | None) -> mmap.mmap:
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        raise LayoutError(f"cannot open shared file {path}: {exc.strerror}") from exc
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise LayoutError(f"shared file {path} is empty")
        if expected_size is not None and size != expected_size:
            raise LayoutError(f"shared file {path} is {size} bytes, expected {expected_size}")
        return _mmap(fd, size, path)
    finally:
        os.close(fd)


def _mmap(fd: int, size: int, path: str) -> mmap.mmap:
    """Map `size` bytes of `fd` shared. Raises LayoutError when the system cannot map that much
    (ENOMEM: beyond the address space, vm.max_map_count or the overcommit limits)."""
    try:
        return mmap.mmap(fd, size)
    except OSError as exc:
        what = "a memfd" if path.startswith(MEMFD_PREFIX) else path
        raise LayoutError(f"cannot map {format_size(size)} ({what}): {exc.strerror}; more than this machine "
                          "can map (its address space, vm.overcommit_memory or vm.max_map_count)") from exc


def _create_mapped(path: str, size: int, header: bytes = b"") -> mmap.mmap:
    """A new shared file of `size` bytes starting with `header`, mapped; nothing is left of it
    if it cannot be mapped (LayoutError)."""
    fd = _create_file(path, size)
    try:
        if header:
            os.pwrite(fd, header, 0)
        return _mmap(fd, size, path)
    except LayoutError:
        if not path.startswith(MEMFD_PREFIX):
            os.unlink(path)
        raise
    finally:
        os.close(fd)


@dataclass
class SharedPaths:
    ram: str
    stage2: str
    control: str


class ControlFile:
    """The per-vCPU APF control blocks, mapped by both sides.

    Every access to a mutable field (`reason`, `np_token`, `ready_token`, `enabled`) is one
    atomic 32-bit instruction on the shared mapping (see the module docstring):
    `read`/`write` are single-copy atomic loads and stores, `take` an exchange and `publish` a
    compare-and-swap from 0. Field names are those of `shared.layout.FIELD_OFFSET`; an unknown
    name raises KeyError and a vCPU outside `0..nr_vcpus-1` raises ValueError.
    """

    def __init__(self, mm: mmap.mmap, nr_vcpus: int):
        self.mm = mm
        self.nr_vcpus = nr_vcpus
        self._words = atomicshm.AtomicView(mm)
        # Byte offset of every (vcpu, field) word, so a hot-path access is one dict lookup.
        self._offset = {(vcpu, name): block_offset(vcpu) + FIELD_OFFSET[name]
                        for vcpu in range(nr_vcpus) for name in _WORD_FIELDS}

    @classmethod
    def create(cls, path: str, nr_vcpus: int, guest_pages: int) -> "ControlFile":
        fd = _create_file(path, control_file_size(nr_vcpus))
        try:
            os.pwrite(fd, pack_header(nr_vcpus, guest_pages), 0)
            for vcpu in range(nr_vcpus):
                os.pwrite(fd, pack_block(vcpu), block_offset(vcpu))
            mm = mmap.mmap(fd, control_file_size(nr_vcpus))
        finally:
            os.close(fd)
        return cls(mm, nr_vcpus)

    @classmethod
    def attach(cls, path: str, nr_vcpus: int, guest_pages: int) -> "ControlFile":
        mm = _map(path, None)
        try:
            return cls._validated(mm, path, nr_vcpus, guest_pages)
        except LayoutError:
            mm.close()
            raise

    @classmethod
    def _validated(cls, mm: mmap.mmap, path: str, nr_vcpus: int, guest_pages: int) -> "ControlFile":
        if mm.size() < BLOCK_SIZE:
            raise LayoutError(f"control file {path} is too small ({mm.size()} bytes)")
        magic, version, block_size, page_size, n, pages, reserved = HEADER.unpack_from(mm, 0)
        if magic != HEADER_MAGIC:
            raise LayoutError(f"control file {path} has magic {magic!r}, expected {HEADER_MAGIC!r}")
        if version != LAYOUT_VERSION:
            raise LayoutError(f"control file {path} has layout version {version}, expected {LAYOUT_VERSION}")
        if any(reserved):
            raise LayoutError(f"control file {path} has non-zero reserved header bytes")
        if block_size != BLOCK_SIZE or page_size != PAGE_SIZE:
            raise LayoutError(f"control file {path} uses {block_size}-byte blocks / {page_size}-byte pages")
        if n != nr_vcpus or pages != guest_pages:
            raise LayoutError(f"control file {path} is for {n} vCPUs / {pages} pages, "
                              f"expected {nr_vcpus} / {guest_pages}")
        if mm.size() != control_file_size(nr_vcpus):
            raise LayoutError(f"control file {path} is {mm.size()} bytes, expected {control_file_size(nr_vcpus)}")
        ctl = cls(mm, nr_vcpus)
        try:
            for vcpu in range(nr_vcpus):
                ctl.check_block(vcpu)
        except LayoutError:
            ctl._words.close()
            raise
        return ctl

    def check_block(self, vcpu: int) -> None:
        magic, version, owner, *_ = BLOCK.unpack_from(self.mm, block_offset(vcpu))
        if magic != BLOCK_MAGIC or version != LAYOUT_VERSION or owner != vcpu:
            raise LayoutError(f"control block of vCPU {vcpu} is damaged (magic {magic!r}, "
                              f"version {version}, vcpu {owner})")
        if any(self.mm[block_offset(vcpu) + RESERVED_OFFSET:block_offset(vcpu) + BLOCK_SIZE]):
            raise LayoutError(f"control block of vCPU {vcpu} has non-zero reserved bytes")

    def _word(self, vcpu: int, name: str) -> int:
        try:
            return self._offset[vcpu, name]
        except KeyError:
            if name not in FIELD_OFFSET:
                raise
            raise ValueError(f"vCPU {vcpu} has no control block (0..{self.nr_vcpus - 1})") from None

    def read(self, vcpu: int, name: str) -> int:
        """One atomic 32-bit load of a block field."""
        return self._words.load_u32(self._word(vcpu, name))

    def write(self, vcpu: int, name: str, value: int) -> None:
        """One atomic 32-bit store of a block field (`value` in 0..2^32-1)."""
        self._words.store_u32(self._word(vcpu, name), value)

    def take(self, vcpu: int, name: str) -> int:
        """Read a field and clear it to 0 in one atomic exchange; return what it held. The guest
        takes the page-ready token this way: there is no moment at which the slot reads 0 while
        it still holds the old token, so a token the host publishes meanwhile is never erased."""
        return self._words.exchange_u32(self._word(vcpu, name), 0)

    def publish(self, vcpu: int, name: str, value: int) -> bool:
        """Store `value` only if the field reads 0, in one atomic compare-and-swap; True if it
        was stored. The host fills the page-ready slot this way (KVM: only when the slot is free)."""
        return self._words.cas_u32(self._word(vcpu, name), 0, value) == 0

    def reset(self) -> None:
        """Every block back to its initial value (when no guest is attached): the constant
        header bytes by copy, the mutable words by atomic stores."""
        for vcpu in range(self.nr_vcpus):
            start = block_offset(vcpu)
            self.mm[start:start + FIELD_OFFSET["reason"]] = pack_block(vcpu)[:FIELD_OFFSET["reason"]]
            for name in _WORD_FIELDS:
                self.write(vcpu, name, 0)
            self.mm[start + RESERVED_OFFSET:start + BLOCK_SIZE] = bytes(RESERVED_SIZE)

    def close(self) -> None:
        self._words.close()    # the view holds a buffer export: release it before the mapping
        self.mm.close()


class Stage2:
    """The stage-2 table: `perm[gfn]` (a Perm; also named `valid`) and `accessed[gfn]`, one byte
    each, after a 64-byte header (version STAGE2_VERSION)."""
    HEADER_SIZE = 64

    def __init__(self, mm: mmap.mmap, guest_pages: int):
        self.mm = mm
        self.guest_pages = guest_pages
        view = memoryview(mm)
        self.perm = view[self.HEADER_SIZE:self.HEADER_SIZE + guest_pages]
        self.valid = self.perm          # non-zero: mapped (read-only or read-write)
        self.accessed = view[self.HEADER_SIZE + guest_pages:self.HEADER_SIZE + 2 * guest_pages]

    @staticmethod
    def file_size(guest_pages: int) -> int:
        return Stage2.HEADER_SIZE + 2 * guest_pages

    @classmethod
    def create(cls, path: str, guest_pages: int) -> "Stage2":
        header = STAGE2_HEADER.pack(STAGE2_MAGIC, STAGE2_VERSION, 0, guest_pages, bytes(48))
        return cls(_create_mapped(path, cls.file_size(guest_pages), header), guest_pages)

    @classmethod
    def attach(cls, path: str, guest_pages: int) -> "Stage2":
        mm = _map(path, cls.file_size(guest_pages))
        magic, version, _, pages, _ = STAGE2_HEADER.unpack_from(mm, 0)
        if magic != STAGE2_MAGIC or version != STAGE2_VERSION or pages != guest_pages:
            mm.close()
            raise LayoutError(f"stage-2 file {path} is not a version-{STAGE2_VERSION} table of "
                              f"{guest_pages} pages (magic {magic!r}, version {version}, pages {pages})")
        return cls(mm, guest_pages)

    def reset(self) -> None:
        """Every entry NONE and every access flag clear (the pages given back to the system)."""
        _zero(self.mm, self.HEADER_SIZE, 2 * self.guest_pages)

    def close(self) -> None:
        self.perm.release()
        self.accessed.release()
        self.mm.close()


class GuestRam:
    """Guest RAM: a sparse tmpfs file of `guest_pages` pages, mapped shared."""

    def __init__(self, mm: mmap.mmap, guest_pages: int):
        self.mm = mm
        self.guest_pages = guest_pages
        self.view = memoryview(mm)

    @classmethod
    def create(cls, path: str, guest_pages: int) -> "GuestRam":
        return cls(_create_mapped(path, guest_pages * PAGE_SIZE), guest_pages)

    @classmethod
    def attach(cls, path: str, guest_pages: int) -> "GuestRam":
        return cls(_map(path, guest_pages * PAGE_SIZE), guest_pages)

    def page(self, gfn: int) -> memoryview:
        return self.view[gfn * PAGE_SIZE:(gfn + 1) * PAGE_SIZE]

    def free_pages(self, first_gfn: int, count: int) -> None:
        """Give the pages' memory back to the system (tmpfs hole punch); they read as zero after."""
        self.mm.madvise(mmap.MADV_REMOVE, first_gfn * PAGE_SIZE, count * PAGE_SIZE)

    def close(self) -> None:
        self.view.release()
        self.mm.close()


def allocated_bytes(path: str) -> int:
    """Memory really held by a (sparse) file: its allocated blocks."""
    return os.stat(path).st_blocks * 512
