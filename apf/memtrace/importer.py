"""Streaming conversion of any trace (lackey, page-reference, native) to the native memtrace.

The input is read in blocks of whole lines (`formats.read_blocks`), parsed into page-level
records and written block by block (`shared.memtrace.MemtraceWriter`), so memory stays bounded
by the block size plus one set entry per distinct page, whatever the input's length: gigabytes of
lackey output can come through a pipe (`-`). The source's SHA-256 is taken over its raw bytes on
the way.
"""
from __future__ import annotations

import os
import sys
import time
from array import array
from dataclasses import replace
from typing import Any, Callable

from apf.memtrace.formats import NATIVE, PARSERS, RecordBuilder, Source, detect_format, open_source, read_blocks
from shared.memtrace import (MemtraceError, MemtraceHeader, MemtraceWriter, iter_blocks, read_header)

FLUSH_RECORDS = 1 << 18          # records kept before they are handed to the writer
PROGRESS_EVERY_S = 1.0

Progress = Callable[[int, int, int, float], None]   # (bytes read, lines, records, seconds)


PIPED_PROGRESS_EVERY_S = 30.0   # a progress line to a file or pipe (a log) at most this often


def stderr_progress(label: str, tty: bool | None = None) -> Progress:
    """A progress line on stderr: rewritten in place on a terminal (as often as it is called: once
    a second, PROGRESS_EVERY_S); to a file or pipe, a line of its own at most every
    PIPED_PROGRESS_EVERY_S, so that a log is not one line a second. `tty` defaults to whether stderr
    is a terminal. The callable takes an optional fifth argument, a note added to the line (the
    recorder's estimate)."""
    tty = sys.stderr.isatty() if tty is None else tty
    last = [float("-inf")]

    def show(nbytes: int, lines: int, records: int, seconds: float, note: str = "") -> None:
        now = time.monotonic()
        if not tty and now - last[0] < PIPED_PROGRESS_EVERY_S:
            return
        last[0] = now
        rate = lines / seconds if seconds > 0 else 0.0
        text = (f"{label}: {nbytes / 1e6:,.1f} MB read, {lines / 1e6:,.2f} M lines, {records:,} records "
                f"({rate / 1e6:.2f} M lines/s)" + (f"; {note}" if note else ""))
        print(("\r" + text) if tty else text, end="" if tty else "\n", file=sys.stderr, flush=True)
    return show


def import_trace(source_path: str, out_path: str, *, progress: Progress | None = None,
                 meta: dict[str, Any] | None = None, ns_per_insn: float = 0.0,
                 source: Source | None = None) -> MemtraceHeader:
    """Convert `source_path` (a file or `-`; or the already opened `source`) to a memtrace at
    `out_path`; returns its header. Raises MemtraceError (malformed input, naming file and line;
    no data access at all) or OSError."""
    source = source or open_source(source_path)
    try:
        fmt = detect_format(source)
        if fmt == NATIVE:
            return _copy_native(source, source_path, out_path)
        return _import_text(source, fmt, out_path, progress, meta or {}, ns_per_insn)
    finally:
        source.close()


def _import_text(source: Source, fmt: str, out_path: str, progress: Progress | None, meta: dict[str, Any],
                 ns_per_insn: float) -> MemtraceHeader:
    parse = PARSERS[fmt]
    builder = RecordBuilder()
    writer = MemtraceWriter(out_path)
    start = last_shown = time.monotonic()
    lines = 0
    try:
        for first_line, block in read_blocks(source):
            parse(block, builder, source.name, first_line)
            lines = first_line - 1 + block.count(b"\n")
            if len(builder.pw) >= FLUSH_RECORDS:
                writer.add(*builder.take())
            now = time.monotonic()
            if progress and now - last_shown >= PROGRESS_EVERY_S:
                last_shown = now
                progress(source.hasher.bytes_read, lines, writer.records + len(builder.pw), now - start)
        writer.add(*builder.finish())
        if writer.records == 0:
            what = "data access (an L, S or M line)" if fmt == "lackey" else "page reference"
            raise MemtraceError(f"{source.name}:{max(1, lines)}: no {what} in {lines} line(s)")
        header = MemtraceHeader(
            records=writer.records, accesses=builder.accesses, reads=builder.reads, writes=builder.writes,
            distinct_pages=len(builder.pages), instructions=builder.instructions, ns_per_insn=ns_per_insn,
            source_sha256=source.hasher.sha256.hexdigest(), has_instructions=builder.has_instructions,
            meta={"source_format": fmt, "source": source.name if source.name == "<stdin>"
                  else os.path.basename(source.name), "compression": source.compression, **meta})
        writer.close(header)
    except BaseException:
        writer.abort()
        raise
    if progress:
        progress(source.hasher.bytes_read, lines, header.records, time.monotonic() - start)
    return header


def _copy_native(source: Source, source_path: str, out_path: str) -> MemtraceHeader:
    """A native input is checked block by block and written again (a plain copy of verified data)."""
    if source_path == "-":
        raise MemtraceError("<stdin>: a native memtrace must be given as a file, not on standard input")
    header = read_header(source_path)
    writer = MemtraceWriter(out_path)
    try:
        for pw, insns in iter_blocks(source_path):
            writer.add(pw, insns)
        return writer.close(replace(header))
    except BaseException:
        writer.abort()
        raise


WINDOWS = (1_000, 10_000, 100_000)   # records per working-set window


def trace_info(path: str) -> dict[str, Any]:
    """The figures of `apf trace info` for a trace of any format (a text one is imported to a
    temporary memtrace first): counts, footprint, and the working set as distinct pages per
    tumbling window of 1k, 10k and 100k records (mean and max). Raises MemtraceError."""
    source = open_source(path)
    fmt = detect_format(source)
    if fmt != NATIVE:
        tmp = f"{os.path.abspath(path) if path != '-' else os.getcwd() + '/stdin'}.{os.getpid()}.info.apfmt"
        try:
            import_trace(path, tmp, source=source)
            return _native_info(tmp, path, fmt)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    source.close()
    return _native_info(path, path, NATIVE)


def _native_info(native: str, shown: str, fmt: str) -> dict[str, Any]:
    header = read_header(native)
    windows = {w: [] for w in WINDOWS}
    current: dict[int, set[int]] = {w: set() for w in WINDOWS}
    filled = dict.fromkeys(WINDOWS, 0)
    for pw, _ in iter_blocks(native):
        pages = array("Q", (x >> 1 for x in pw))
        for w in WINDOWS:
            i = 0
            while i < len(pages):
                take = min(w - filled[w], len(pages) - i)
                current[w].update(pages[i:i + take])
                filled[w] += take
                i += take
                if filled[w] == w:
                    windows[w].append(len(current[w]))
                    current[w] = set()
                    filled[w] = 0
    working_set = {}
    for w in WINDOWS:
        counts = windows[w] or ([len(current[w])] if current[w] else [0])
        working_set[str(w)] = {"windows": len(counts), "mean_pages": sum(counts) / len(counts),
                               "max_pages": max(counts)}
    meta = header.meta
    return {
        "path": shown, "format": fmt, "source_format": header.source_format, "records": header.records,
        "accesses": header.accesses, "reads": header.reads, "writes": header.writes,
        "distinct_pages": header.distinct_pages, "footprint_bytes": header.footprint_bytes,
        "instructions": header.instructions, "has_instructions": header.has_instructions,
        "ns_per_insn": header.ns_per_insn or None, "page_size": header.page_size,
        "source_sha256": header.source_sha256, "working_set": working_set,
        "provenance": {k: v for k, v in meta.items() if k != "source_format"},
    }
