"""The trace parsers: lackey and page-reference text become page-level records, with exact
counts; every malformed input is a one-line MemtraceError naming the file and line."""
from __future__ import annotations

import gzip
import lzma
import os

import pytest
import zstandard

from apf.memtrace.formats import LACKEY, NATIVE, PAGEREF, detect_format, open_source
from apf.memtrace.importer import import_trace
from shared.memtrace import MemtraceError, load, read_header


def _write(tmp_path, name: str, data: bytes) -> str:
    path = os.path.join(str(tmp_path), name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _records(tmp_path, text: str) -> tuple[list[tuple[int, int, int]], object]:
    """Import `text` and return its records as (page, write, insns) and the header."""
    src = _write(tmp_path, "in.txt", text.encode())
    out = os.path.join(str(tmp_path), "out.apfmt")
    import_trace(src, out)
    trace = load(out)
    return [(x >> 1, x & 1, n) for x, n in zip(trace.pw, trace.insns)], trace.header


LACKEY_CASES = [
    # (name, text, records, (accesses, reads, writes, distinct, instructions))
    ("one load", "I  00400000,3\n L 00001000,8\n", [(1, 0, 1)], (1, 1, 0, 1, 1)),
    ("store after load on one page merges into a write",
     "I  00400000,3\n L 00001000,8\nI  00400003,2\n S 00001ff8,8\n", [(1, 1, 1)], (2, 1, 1, 1, 2)),
    ("modify is a load then a store", " M 00002004,4\n", [(2, 1, 0)], (2, 1, 1, 1, 0)),
    ("an access across a page boundary touches both pages", " L 00001ffc,8\n", [(1, 0, 0), (2, 0, 0)],
     (1, 1, 0, 2, 0)),
    ("instructions count toward the next record",
     "I  1,1\nI  2,1\n L 3000,4\nI  4,1\nI  5,1\nI  6,1\n S 5000,4\nI  7,1\n",
     [(3, 0, 2), (5, 1, 3)], (2, 1, 1, 2, 6)),
    ("valgrind messages are ignored", "==123== Lackey\n==123== Command: ls\n L 1000,4\n==123== done\n",
     [(1, 0, 0)], (1, 1, 0, 1, 0)),
    ("returning to a page is a new record", " L 1000,4\n L 2000,4\n L 1008,4\n",
     [(1, 0, 0), (2, 0, 0), (1, 0, 0)], (3, 3, 0, 2, 0)),
]


@pytest.mark.parametrize("name, text, records, counts", LACKEY_CASES, ids=[c[0] for c in LACKEY_CASES])
def test_lackey_lines_become_page_records(tmp_path, name, text, records, counts):
    """Lackey loads, stores and modifies merge per page in order, with instruction counts between."""
    got, header = _records(tmp_path, text)
    assert got == records
    assert (header.accesses, header.reads, header.writes, header.distinct_pages, header.instructions) == counts
    assert header.source_format == LACKEY


PAGEREF_CASES = [
    ("hex with and without 0x", "0x1000 R\n2000 w\n", [(1, 0, 0), (2, 1, 0)], (2, 1, 1, 2, 0, False)),
    ("comments and blank lines", "# header\n\n1000 R # first\n   \n1fff W\n", [(1, 1, 0)], (2, 1, 1, 1, 0, False)),
    ("third column counts instructions", "1000 R 10\n3000 W 7\n3008 R 1\n", [(1, 0, 10), (3, 1, 7)],
     (3, 2, 1, 2, 18, True)),
]


@pytest.mark.parametrize("name, text, records, counts", PAGEREF_CASES, ids=[c[0] for c in PAGEREF_CASES])
def test_page_reference_lines_become_page_records(tmp_path, name, text, records, counts):
    """`ADDR R|W [INSNS]` lines are byte addresses: consecutive references to one page merge."""
    got, header = _records(tmp_path, text)
    assert got == records
    assert (header.accesses, header.reads, header.writes, header.distinct_pages, header.instructions,
            header.has_instructions) == counts
    assert header.source_format == PAGEREF


BAD_INPUT = [
    ("empty file", b"", r"^{p}:1: empty file: expected a lackey, page-reference or native trace$"),
    ("binary", bytes(range(256)) * 8, r"^{p}:1: a binary file that is no known trace format"),
    ("no known text", b"hello world\n", r"^{p}:1: expected a lackey line .* got 'hello world'$"),
    ("lackey address not hex", b"I  0401,3\n L 0040zz,8\n", r"^{p}:2: expected a lackey line .* got ' L 0040zz,8'$"),
    ("lackey size missing", b" L 1000,4\n S 1000\n", r"^{p}:2: expected a lackey line .* got ' S 1000'$"),
    ("lackey with no access", b"==1== x\nI  0401,3\nI  0402,3\n",
     r"^{p}:3: no data access \(an L, S or M line\) in 3 line\(s\)$"),
    ("page reference not hex", b"1000 R\n# c\nxyz R\n", r"^{p}:3: expected a page reference 'ADDR R\|W \[INSNS\]'"),
    ("page reference bad kind", b"1000 R\n1000 X\n", r"^{p}:2: expected a page reference"),
    ("only comments", b"# nothing\n\n", r"^{p}:1: no trace line in the first 11 bytes$"),
]


@pytest.mark.parametrize("name, data, pattern", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_malformed_input_is_a_one_line_error_naming_file_and_line(tmp_path, name, data, pattern):
    """Every malformed input raises MemtraceError whose one-line message names file and line."""
    src = _write(tmp_path, "bad.txt", data)
    with pytest.raises(MemtraceError, match=pattern.format(p=src.replace(".", r"\."))) as info:
        import_trace(src, os.path.join(str(tmp_path), "out.apfmt"))
    assert "\n" not in str(info.value)
    assert not os.path.exists(os.path.join(str(tmp_path), "out.apfmt"))


def _compress(kind: str, data: bytes) -> bytes:
    return {"gzip": gzip.compress, "xz": lzma.compress,
            "zstd": zstandard.ZstdCompressor().compress}[kind](data)


LACKEY_TEXT = b"".join(b"I  0040%04x,3\n L %08x,8\n" % (i, 0x10000 + 64 * i) for i in range(5000))


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd"])
def test_compressed_input_is_recognised_by_content(tmp_path, kind):
    """A compressed trace under any name imports to the same records as the plain one."""
    plain = _write(tmp_path, "plain.txt", LACKEY_TEXT)
    packed = _write(tmp_path, "trace.bin", _compress(kind, LACKEY_TEXT))
    a, b = os.path.join(str(tmp_path), "a.apfmt"), os.path.join(str(tmp_path), "b.apfmt")
    ha, hb = import_trace(plain, a), import_trace(packed, b)
    assert (load(a).pw, load(a).insns) == (load(b).pw, load(b).insns)
    assert ha.records == hb.records == 5000 * 64 // 4096 + 1
    assert hb.meta["compression"] == kind
    assert ha.source_sha256 != hb.source_sha256    # the hash is of the bytes as given


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd"])
def test_truncated_compressed_input_is_an_error(tmp_path, kind):
    """A compressed file cut short (even at a line boundary inside) is an error, not a short trace."""
    packed = _compress(kind, LACKEY_TEXT)
    src = _write(tmp_path, "cut.gz", packed[: len(packed) * 2 // 3])
    with pytest.raises(MemtraceError, match=rf"^{src}:\d+: .*{kind}"):
        import_trace(src, os.path.join(str(tmp_path), "out.apfmt"))


def test_detection_reads_each_format(tmp_path):
    """Detection: lackey, pageref and native, from the content alone."""
    lk = _write(tmp_path, "x", b"==9== hi\nI  0401,3\n")
    pr = _write(tmp_path, "y", b"# c\n0x1000 W\n")
    native = os.path.join(str(tmp_path), "z")
    import_trace(_write(tmp_path, "w", b" L 1000,4\n"), native)
    assert [detect_format(open_source(p)) for p in (lk, pr, native)] == [LACKEY, PAGEREF, NATIVE]


def test_native_header_keeps_the_source_hash_and_counts(tmp_path):
    """The memtrace header records the SHA-256 of the source bytes and the counts."""
    import hashlib
    src = _write(tmp_path, "t.txt", LACKEY_TEXT)
    out = os.path.join(str(tmp_path), "t.apfmt")
    import_trace(src, out)
    header = read_header(out)
    assert header.source_sha256 == hashlib.sha256(LACKEY_TEXT).hexdigest()
    assert (header.accesses, header.instructions, header.distinct_pages) == (5000, 5000, 79)
    assert header.page_size == 4096 and header.version == 1


def test_truncated_memtrace_is_an_error(tmp_path):
    """A memtrace cut short says how many records its header promised."""
    out = os.path.join(str(tmp_path), "t.apfmt")
    import_trace(_write(tmp_path, "t.txt", LACKEY_TEXT), out)
    with open(out, "rb") as f:
        data = f.read()
    cut = _write(tmp_path, "cut.apfmt", data[: len(data) - 40])
    with pytest.raises(MemtraceError, match=rf"^{cut}: (truncated|corrupt) memtrace"):
        load(cut)


def test_progress_to_a_pipe_is_a_line_every_30s_not_every_second(capsys):
    """Off a terminal (a log), the progress callable prints its first line and then none until
    PIPED_PROGRESS_EVERY_S has passed; on a terminal every call rewrites the line in place."""
    from apf.memtrace.importer import PIPED_PROGRESS_EVERY_S, stderr_progress
    assert PIPED_PROGRESS_EVERY_S >= 30
    piped = stderr_progress("x", tty=False)
    for second in range(1, 6):
        piped(second * 1000, second * 100, second * 10, float(second))
    assert capsys.readouterr().err == "x: 0.0 MB read, 0.00 M lines, 10 records (0.00 M lines/s)\n"
    tty = stderr_progress("x", tty=True)
    for second in range(1, 4):
        tty(second, second, second, float(second), "1 s of about 9 s")
    assert capsys.readouterr().err.count("\r") == 3
