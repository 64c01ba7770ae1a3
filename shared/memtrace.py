"""The native memory-trace format ("memtrace"): page-level records of a real program, compressed.

A memtrace is what `apf trace import` and `apf trace record` write and what `--workload
trace:FILE` replays. One record is one run of consecutive accesses to the same page:

    page     the page number (byte address >> 12 for 4 KiB pages)
    write    1 if any access of the run wrote the page (a lackey modify is a load then a store)
    insns    instructions the program executed since the previous record (0 when the source
             had no instruction counts), at most 2**32 - 1

File layout (little-endian; docs/memtrace.md has the same table):

    offset size  field
    0      8     magic b"APFMTRC\\0"
    8      2     version (1)
    10     2     header size in bytes (HEADER.size + meta length)
    12     4     page size in bytes (4096)
    16     8     records
    24     8     accesses (byte-level accesses before merging; a modify counts as two)
    32     8     reads (accesses that read)
    40     8     writes (accesses that wrote)
    48     8     distinct pages
    56     8     instructions (all the source counted, including those after the last record)
    64     8     ns per instruction measured on a native run, float64 (0.0: not measured)
    72     32    SHA-256 of the source as it was read (the compressed bytes of a compressed file)
    104    4     flags: bit 0 = the source had instruction counts
    108    4     meta length, then that many bytes of UTF-8 JSON (source format and name, command
                 line, program version, date: free-form provenance)

then one zstd stream of blocks, each `count` (uint32) then `count` uint64 of `page << 1 | write`
then `count` uint32 of `insns`. A loaded trace is two flat arrays (12 bytes per record).

Errors: `MemtraceError` (protocol/errors.py, a ConfigError) with a one-line message naming
the file.
"""
from __future__ import annotations

import json
import os
import struct
import sys
from array import array
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator

import zstandard

from protocol.errors import MemtraceError

MAGIC = b"APFMTRC\0"
VERSION = 1
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
HEADER = struct.Struct("<8sHHIQQQQQQd32sII")
FLAG_INSTRUCTIONS = 1
MAX_INSNS = 0xFFFFFFFF
BLOCK_RECORDS = 1 << 16          # records per block: a block is ~768 KiB before compression
ZSTD_LEVEL = 12
_COUNT = struct.Struct("<I")


@dataclass(frozen=True)
class MemtraceHeader:
    """Counts of a memtrace (the header); `footprint_bytes` = distinct pages x page size."""
    records: int
    accesses: int
    reads: int
    writes: int
    distinct_pages: int
    instructions: int
    ns_per_insn: float               # measured on a native run; 0.0 when not measured
    source_sha256: str               # hex
    has_instructions: bool
    page_size: int = PAGE_SIZE
    version: int = VERSION
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def footprint_bytes(self) -> int:
        return self.distinct_pages * self.page_size

    @property
    def source_format(self) -> str:
        return str(self.meta.get("source_format", "unknown"))

    def pack(self) -> bytes:
        meta = json.dumps(self.meta, sort_keys=True, separators=(",", ":")).encode()
        return HEADER.pack(MAGIC, self.version, HEADER.size + len(meta), self.page_size, self.records,
                           self.accesses, self.reads, self.writes, self.distinct_pages, self.instructions,
                           self.ns_per_insn, bytes.fromhex(self.source_sha256),
                           FLAG_INSTRUCTIONS if self.has_instructions else 0, len(meta)) + meta


def is_memtrace(head: bytes) -> bool:
    """True if `head` (the first bytes of a file) starts like a memtrace."""
    return head.startswith(MAGIC)


def read_header(path: str) -> MemtraceHeader:
    """The header of the memtrace at `path`. Raises MemtraceError (not a memtrace, another
    version, a header cut short) or OSError (cannot open)."""
    with open(path, "rb") as f:
        return _read_header(f, path)


def _read_header(f: BinaryIO, path: str) -> MemtraceHeader:
    raw = f.read(HEADER.size)
    if not raw.startswith(MAGIC):
        raise MemtraceError(f"{path}: not an apf memtrace (convert it with `apf trace import {path} -o OUT`)")
    if len(raw) < HEADER.size:
        raise MemtraceError(f"{path}: truncated memtrace header ({len(raw)} of {HEADER.size} bytes)")
    (_, version, header_size, page_size, records, accesses, reads, writes, distinct, insns, ns_per_insn,
     sha, flags, meta_len) = HEADER.unpack(raw)
    if version != VERSION:
        raise MemtraceError(f"{path}: memtrace version {version}; this apf reads version {VERSION}")
    if page_size != PAGE_SIZE or header_size != HEADER.size + meta_len:
        raise MemtraceError(f"{path}: corrupt memtrace header (page size {page_size}, header size {header_size})")
    meta_raw = f.read(meta_len)
    try:
        meta = json.loads(meta_raw) if meta_len else {}
    except ValueError:
        meta = None
    if len(meta_raw) != meta_len or not isinstance(meta, dict):
        raise MemtraceError(f"{path}: corrupt memtrace header (metadata unreadable)")
    return MemtraceHeader(records, accesses, reads, writes, distinct, insns, ns_per_insn, sha.hex(),
                          bool(flags & FLAG_INSTRUCTIONS), page_size, version, meta)


def iter_blocks(path: str) -> Iterator[tuple[array, array]]:
    """The records of `path` block by block, as (`page << 1 | write` uint64 array, insns uint32
    array), in constant memory. Raises MemtraceError when the body is truncated or corrupt, or
    holds another number of records than the header says."""
    with open(path, "rb") as f:
        header = _read_header(f, path)
        seen = 0
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
            while True:
                raw = _read_exact(reader, _COUNT.size, path, allow_end=True)
                if not raw:
                    break
                (count,) = _COUNT.unpack(raw)
                pw, insns = array("Q"), array("I")
                pw.frombytes(_read_exact(reader, 8 * count, path))
                insns.frombytes(_read_exact(reader, 4 * count, path))
                if sys.byteorder == "big":
                    pw.byteswap()
                    insns.byteswap()
                seen += count
                yield pw, insns
        except zstandard.ZstdError as exc:
            raise MemtraceError(f"{path}: corrupt memtrace body ({exc})") from None
    if seen != header.records:
        raise MemtraceError(f"{path}: truncated memtrace: the header says {header.records} records, "
                            f"the body holds {seen}")


def read_up_to(reader: Any, n: int) -> bytes:
    """Up to `n` bytes of `reader`, fewer only at its end: a pipe or a decompressor hands over what
    it has, so read until enough has come."""
    chunks, got = [], 0
    while got < n:
        chunk = reader.read(n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _read_exact(reader: Any, n: int, path: str, allow_end: bool = False) -> bytes:
    """`n` bytes of `reader`; b"" at a clean end if `allow_end`; else MemtraceError if short."""
    data = read_up_to(reader, n)
    if len(data) != n and not (allow_end and not data):
        raise MemtraceError(f"{path}: truncated memtrace body (a block ends after {len(data)} of {n} bytes)")
    return data


@dataclass
class Memtrace:
    """A loaded memtrace: the header and two flat arrays of `records` entries each."""
    path: str
    header: MemtraceHeader
    pw: array          # uint64: page << 1 | write
    insns: array       # uint32: instructions since the previous record


def load(path: str) -> Memtrace:
    """Load every record of `path` into flat arrays (12 bytes a record). Raises MemtraceError."""
    header = read_header(path)
    pw, insns = array("Q"), array("I")
    for block_pw, block_insns in iter_blocks(path):
        pw.extend(block_pw)
        insns.extend(block_insns)
    return Memtrace(path, header, pw, insns)


class MemtraceWriter:
    """Writes a memtrace block by block: `add()` records, then `close()` with the counts.

    The body is written as it comes (constant memory); the header, whose counts are known only
    at the end, is written last over a placeholder. The file appears under its name only when
    complete (written to `path + ".tmp"`, then renamed); `abort()` removes the partial file."""

    def __init__(self, path: str, level: int = ZSTD_LEVEL):
        self.path = path
        self._tmp = path + ".tmp"
        self._file = open(self._tmp, "wb")
        self._placeholder = 0
        self._cctx = zstandard.ZstdCompressor(level=level)
        self._body: Any = None
        self.records = 0

    def add(self, pw: array, insns: array) -> None:
        """Append records (`page << 1 | write` uint64, insns uint32; equal lengths)."""
        if not pw:
            return
        if self._body is None:
            self._placeholder = HEADER.size + 4096      # room for the metadata
            self._file.write(b"\0" * self._placeholder)
            self._body = self._cctx.stream_writer(self._file, closefd=False)
        for start in range(0, len(pw), BLOCK_RECORDS):
            block_pw, block_insns = pw[start:start + BLOCK_RECORDS], insns[start:start + BLOCK_RECORDS]
            if sys.byteorder == "big":
                block_pw.byteswap()
                block_insns.byteswap()
            self._body.write(_COUNT.pack(len(block_pw)))
            self._body.write(block_pw.tobytes())
            self._body.write(block_insns.tobytes())
        self.records += len(pw)

    def close(self, header: MemtraceHeader) -> MemtraceHeader:
        """Finish the file with `header` (its `records` must match what was added)."""
        if header.records != self.records:
            raise ValueError(f"header says {header.records} records, {self.records} were written")
        packed = header.pack()
        if self._body is None:
            self._file.write(packed)
            body = self._cctx.stream_writer(self._file, closefd=False)
            body.flush(zstandard.FLUSH_FRAME)
        else:
            self._body.flush(zstandard.FLUSH_FRAME)
            if len(packed) > self._placeholder:
                raise MemtraceError(f"{self.path}: provenance metadata too long ({len(packed)} bytes)")
            # The body starts after the placeholder: pad the metadata JSON with spaces to fill it.
            pad = self._placeholder - len(packed)
            meta = json.dumps(header.meta, sort_keys=True, separators=(",", ":")) + " " * pad
            raw = meta.encode()
            packed = HEADER.pack(MAGIC, header.version, HEADER.size + len(raw), header.page_size,
                                 header.records, header.accesses, header.reads, header.writes,
                                 header.distinct_pages, header.instructions, header.ns_per_insn,
                                 bytes.fromhex(header.source_sha256),
                                 FLAG_INSTRUCTIONS if header.has_instructions else 0, len(raw)) + raw
            self._file.seek(0)
            self._file.write(packed)
        self._file.close()
        os.replace(self._tmp, self.path)
        return header

    def abort(self) -> None:
        self._file.close()
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass


NS_PER_INSN_OFFSET = 64


def set_ns_per_insn(path: str, ns_per_insn: float) -> None:
    """Write the measured ns per instruction into the header of the memtrace at `path`, in place."""
    read_header(path)
    with open(path, "r+b") as f:
        f.seek(NS_PER_INSN_OFFSET)
        f.write(struct.pack("<d", ns_per_insn))

