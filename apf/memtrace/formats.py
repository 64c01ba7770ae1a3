"""Text trace formats, detected from the content, and transparent decompression.

Two text formats are read (the native binary one is `shared/memtrace.py`):

* **lackey**: the output of `valgrind --tool=lackey --trace-mem=yes` (valgrind's
  lackey/lk_main.c; valgrind user manual, "Lackey: an example tool"): one line per event,

      I  0401ab70,3        an instruction fetch at ADDR of SIZE bytes: counts one instruction
       L 1fff000768,8      a load of SIZE bytes at ADDR
       S 1fff000760,8      a store
       M 0403a008,4        a modify: a load then a store of the same bytes

  with `==PID==` lines (valgrind's own messages) ignored. Instruction fetches are compute, not
  data accesses: they count the instructions between two data accesses.

* **pageref**: a page-reference trace as teaching and research paging simulators read it, one
  reference per line, `ADDR R|W [INSNS]`: a hex byte address (with or without `0x`), `R` or `W`
  (either case), and optionally the instructions executed since the previous line; `#` starts
  a comment, blank lines are allowed.

An access of SIZE bytes that crosses a page boundary touches every page it covers. Compressed
input (gzip, xz, zstd) is recognised by its magic bytes, whatever the file name.

Parsers work on blocks of whole lines with regular expressions (the inner loop runs once per data
access, not per line) and report a malformed line as `FILE:LINE: expected ..., got '...'`.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import re
import sys
from array import array
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable

import zstandard

from shared.memtrace import MAX_INSNS, PAGE_SHIFT, MemtraceError, is_memtrace, read_up_to

LACKEY, PAGEREF, NATIVE = "lackey", "pageref", "native"
READ_BLOCK = 4 << 20            # decompressed bytes parsed at a time
_MAGICS = ((b"\x1f\x8b", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"))

_LACKEY_ACCESS = re.compile(rb"^ ([LSM]) ([0-9a-fA-F]+),([0-9]+)[ \t\r]*$", re.M)
_LACKEY_BAD = re.compile(rb"^(?!I  [0-9a-fA-F]+,[0-9]+[ \t\r]*$| [LSM] [0-9a-fA-F]+,[0-9]+[ \t\r]*$|==[0-9]+==|"
                         rb"[ \t\r]*$).*$", re.M)
_LACKEY_LINE = re.compile(rb"^(?:I  | [LSM] )[0-9a-fA-F]+,[0-9]+[ \t\r]*$", re.M)
_PAGEREF_LINE = re.compile(rb"^[ \t]*(?:0[xX])?([0-9a-fA-F]+)[ \t]+([RrWw])(?:[ \t]+([0-9]+))?[ \t]*(?:#.*)?\r?$",
                           re.M)
_PAGEREF_BAD = re.compile(rb"^(?![ \t]*(?:0[xX])?[0-9a-fA-F]+[ \t]+[RrWw](?:[ \t]+[0-9]+)?[ \t]*(?:#.*)?\r?$|"
                          rb"[ \t\r]*(?:#.*)?$).*$", re.M)


class HashingReader(io.RawIOBase):
    """Reads a binary stream and hashes every byte that goes through (the source's SHA-256)."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.sha256.update(data)
        self.bytes_read += n
        return n


@dataclass
class Source:
    """An opened trace: `stream` yields the decompressed bytes; `hasher` sees the raw ones."""
    name: str
    stream: BinaryIO
    hasher: HashingReader
    compression: str | None
    head: bytes               # the first decompressed bytes (for format detection)

    def close(self) -> None:
        self.stream.close()
        self.hasher.raw.close()


def open_source(path: str) -> Source:
    """Open `path` (`-` is standard input) and undo gzip, xz or zstd compression, recognised by
    magic bytes. Raises OSError (cannot open) or MemtraceError (empty; corrupt compression)."""
    raw = sys.stdin.buffer if path == "-" else open(path, "rb")
    name = "<stdin>" if path == "-" else path
    hasher = HashingReader(raw)
    buffered = io.BufferedReader(hasher, 1 << 20)
    magic = buffered.peek(8)[:8]
    compression = next((kind for m, kind in _MAGICS if magic.startswith(m)), None)
    stream: BinaryIO
    if compression == "gzip":
        stream = gzip.GzipFile(fileobj=buffered, mode="rb")
    elif compression == "xz":
        stream = lzma.LZMAFile(buffered, "rb")
    elif compression == "zstd":
        stream = io.BufferedReader(_ZstdStream(buffered), 1 << 20)
    else:
        stream = buffered
    source = Source(name, stream, hasher, compression, b"")
    source.head = peek_head(source)
    return source


def peek_head(source: Source, n: int = 64 << 10) -> bytes:
    """The first `n` bytes of `source` for detection (kept in the stream). MemtraceError if none."""
    head = _peek(source, n)
    if not head:
        raise MemtraceError(f"{source.name}:1: empty file: expected a lackey, page-reference or native trace")
    return head


def _peek(source: Source, n: int) -> bytes:
    """Up to `n` first bytes of the stream (fewer only at its end), kept in front of it: a pipe
    delivers what it has, so read until enough has come."""
    stream = source.stream
    try:
        head = read_up_to(stream, n)
    except (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError) as exc:
        raise MemtraceError(f"{source.name}:1: truncated or corrupt {source.compression} data ({exc})") from None
    source.stream = _Prepended(head, stream)
    return head


class _ZstdStream(io.RawIOBase):
    """zstd frames one after the other, decompressed; an input that ends inside a frame raises
    EOFError (zstandard's stream reader would just stop there)."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.dctx = zstandard.ZstdDecompressor()
        self.dobj = self.dctx.decompressobj()
        self.in_frame = False
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.pending:
            data = self.raw.read(1 << 18)
            if not data:
                if self.in_frame:
                    raise EOFError("compressed file ended before the end of a zstd frame")
                return 0
            while data:
                self.in_frame = True
                self.pending += self.dobj.decompress(data)
                if not self.dobj.eof:
                    break
                data = self.dobj.unused_data
                self.dobj = self.dctx.decompressobj()
                self.in_frame = False
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n


class _Prepended(io.RawIOBase):
    def __init__(self, head: bytes, rest: BinaryIO):
        self.head, self.rest = head, rest

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.head:
            out, self.head = self.head[:n] if n >= 0 else self.head, self.head[n:] if n >= 0 else b""
            return out
        return self.rest.read(n)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self.rest.close()
        super().close()


def detect_format(source: Source) -> str:
    """`lackey`, `pageref` or `native`, from the first meaningful line (or magic bytes).
    Raises MemtraceError naming the file and line when it is none of them."""
    head = source.head
    if is_memtrace(head):
        return NATIVE
    if b"\0" in head[:4096]:
        raise MemtraceError(f"{source.name}:1: a binary file that is no known trace format (expected a lackey "
                            "trace, a page-reference trace or an apf memtrace)")
    for number, line in enumerate(head.split(b"\n")[:-1] or [head], 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(b"#") or line.startswith(b"=="):
            continue
        if _LACKEY_LINE.fullmatch(line):
            return LACKEY
        if _PAGEREF_LINE.fullmatch(line):
            return PAGEREF
        raise MemtraceError(f"{source.name}:{number}: expected a lackey line ('I  ADDR,SIZE', ' L ADDR,SIZE') or "
                            f"a page reference ('ADDR R|W [INSNS]'), got {_show(line)}")
    raise MemtraceError(f"{source.name}:1: no trace line in the first {len(head)} bytes")


def _show(line: bytes, limit: int = 40) -> str:
    text = line.rstrip(b"\r\n").decode("utf-8", "replace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


class RecordBuilder:
    """Merges page-level accesses into records (consecutive accesses to one page are one record,
    a write if any of them wrote) and keeps the counts of the header."""

    def __init__(self) -> None:
        self.pw = array("Q")               # page << 1 | write, of the records built so far
        self.insns = array("I")
        self.page = -1                     # the open record's page (-1: none yet)
        self.write = 0
        self.open_insns = 0                # the open record's instructions
        self.pending = 0                   # instructions counted since the last record began
        self.accesses = self.reads = self.writes = 0
        self.instructions = 0
        self.records = 0
        self.has_instructions = False
        self.pages: set[int] = set()

    def take(self) -> tuple[array, array]:
        """The records closed so far (the open one stays), and forget them."""
        pw, insns = self.pw, self.insns
        self.pw, self.insns = array("Q"), array("I")
        return pw, insns

    def finish(self) -> tuple[array, array]:
        """Close the open record; then as `take()`."""
        if self.page >= 0:
            self.pw.append(self.page << 1 | self.write)
            self.insns.append(self.open_insns)
            self.page = -1
        return self.take()


def parse_lackey_block(block: bytes, b: RecordBuilder, name: str, first_line: int) -> None:
    """Parse whole lackey lines `block` (starting at line `first_line` of `name`) into `b`."""
    bad = _LACKEY_BAD.search(block)
    if bad is not None:
        line = first_line + block.count(b"\n", 0, bad.start())
        raise MemtraceError(f"{name}:{line}: expected a lackey line ('I  ADDR,SIZE', ' L|S|M ADDR,SIZE' with ADDR "
                            f"in hex, or a '==PID==' message), got {_show(bad.group(0))}")
    parts = _LACKEY_ACCESS.split(block)
    page, write, pending, open_insns = b.page, b.write, b.pending, b.open_insns
    pw_append, insns_append, pages_add = b.pw.append, b.insns.append, b.pages.add
    reads = writes = accesses = 0
    count_i = 0
    for i in range(0, len(parts) - 1, 4):
        n = parts[i].count(b"I  ")
        pending += n
        count_i += n
        kind = parts[i + 1]
        addr = int(parts[i + 2], 16)
        size = int(parts[i + 3])
        first = addr >> PAGE_SHIFT
        last = (addr + size - 1) >> PAGE_SHIFT if size > 1 else first
        if kind == b"L":
            w = 0
            reads += 1
            accesses += 1
        elif kind == b"S":
            w = 1
            writes += 1
            accesses += 1
        else:
            w = 1
            reads += 1
            writes += 1
            accesses += 2
        for p in range(first, last + 1):
            if p == page:
                write |= w
                continue
            if page >= 0:
                pw_append(page << 1 | write)
                insns_append(open_insns)
            open_insns = pending if pending <= MAX_INSNS else MAX_INSNS
            pending = 0
            page, write = p, w
            pages_add(p)
    tail = parts[-1].count(b"I  ")
    b.page, b.write, b.pending, b.open_insns = page, write, pending + tail, open_insns
    b.instructions += count_i + tail
    b.has_instructions = b.has_instructions or bool(b.instructions)
    b.accesses += accesses
    b.reads += reads
    b.writes += writes


def parse_pageref_block(block: bytes, b: RecordBuilder, name: str, first_line: int) -> None:
    """Parse whole page-reference lines `block` (from line `first_line` of `name`) into `b`."""
    bad = _PAGEREF_BAD.search(block)
    if bad is not None:
        line = first_line + block.count(b"\n", 0, bad.start())
        raise MemtraceError(f"{name}:{line}: expected a page reference 'ADDR R|W [INSNS]' with ADDR in hex, "
                            f"got {_show(bad.group(0))}")
    page, write, pending, open_insns = b.page, b.write, b.pending, b.open_insns
    pw_append, insns_append, pages_add = b.pw.append, b.insns.append, b.pages.add
    reads = writes = 0
    counted = 0
    for addr, rw, n in _PAGEREF_LINE.findall(block):
        p = int(addr, 16) >> PAGE_SHIFT
        w = 1 if rw in b"Ww" else 0
        if w:
            writes += 1
        else:
            reads += 1
        if n:
            n = int(n)
            pending += n
            counted += n
            b.has_instructions = True
        if p == page:
            write |= w
            continue
        if page >= 0:
            pw_append(page << 1 | write)
            insns_append(open_insns)
        open_insns = pending if pending <= MAX_INSNS else MAX_INSNS
        pending = 0
        page, write = p, w
        pages_add(p)
    b.page, b.write, b.pending, b.open_insns = page, write, pending, open_insns
    b.instructions += counted
    b.accesses += reads + writes
    b.reads += reads
    b.writes += writes


PARSERS: dict[str, Callable[[bytes, RecordBuilder, str, int], None]] = {
    LACKEY: parse_lackey_block, PAGEREF: parse_pageref_block}


def read_blocks(source: Source, block_size: int = READ_BLOCK):
    """Whole-line blocks of the decompressed stream, with the line number each starts at.
    A truncated or corrupt compressed stream is a MemtraceError naming the file and line."""
    carry = b""
    line = 1
    while True:
        try:
            data = source.stream.read(block_size)
        except (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError) as exc:
            raise MemtraceError(f"{source.name}:{line}: truncated or corrupt {source.compression} data "
                                f"({exc})") from None
        if not data:
            break
        data = carry + data
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            carry = data
            continue
        block, carry = data[:cut], data[cut:]
        yield line, block
        line += block.count(b"\n")
    if carry:
        yield line, carry + b"\n"
