"""`apf trace` as a user runs it: streaming import from a pipe in bounded memory, `info --json`
fields, recording a real program with valgrind, and one-line errors (exit 2) for bad input."""
from __future__ import annotations

import json
import re
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.helpers import APF, ROOT, apf, refusal

STREAM_MB = int(os.environ.get("APF_STREAM_MB", "300"))


def _one_line_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    line = refusal(proc)
    assert re.search(pattern, line), line


# A generator of lackey text: a block of 80 000 lines (~1 MiB) over 4096 pages, written again and again
# (the block is precomputed: the pipe is fed at memory speed).
GENERATOR = r"""
import sys
mb = int(sys.argv[1])
lines = []
for i in range(40_000):
    lines.append(b"I  0040%04x,3\n" % (i & 0xffff))
    lines.append(b" %s %08x,8\n" % (b"LSM"[i % 3:i % 3 + 1], ((i * 2654435761) % 4096) << 12 | (i & 0xff8)))
block = b"".join(lines)
out = sys.stdout.buffer
written = 0
while written < mb << 20:
    out.write(block)
    written += len(block)
"""


def test_import_streams_hundreds_of_megabytes_from_a_pipe_in_bounded_memory(tmp_path):
    """A multi-hundred-MB lackey stream on stdin imports with a peak RSS far below its size."""
    out = os.path.join(str(tmp_path), "big.apfmt")
    gen = subprocess.Popen([sys.executable, "-c", GENERATOR, str(STREAM_MB)], stdout=subprocess.PIPE)
    imp = subprocess.Popen(APF + ["trace", "import", "-", "-o", out, "--quiet"], stdin=gen.stdout,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    gen.stdout.close()
    _, status, usage = os.wait4(imp.pid, 0)     # ru_maxrss: this child's high-water mark (KiB)
    imp.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = imp.stdout.read().decode(), imp.stderr.read().decode()
    gen.wait(timeout=60)
    assert imp.returncode == 0, stderr
    info = json.loads(apf("trace", "info", out, "--json").stdout)
    assert info["distinct_pages"] == 4096
    assert info["accesses"] > STREAM_MB * 40_000        # ~14 bytes a line, half of them accesses
    peak_mib = usage.ru_maxrss / 1024
    # An importer that held the stream would need more than its size; a streaming one needs its
    # interpreter and buffers: ~112 MiB alone here, up to 128 MiB in a full suite on a loaded machine.
    assert peak_mib < STREAM_MB / 2, f"peak RSS {peak_mib:.0f} MiB for a {STREAM_MB} MiB stream"


def _lackey_file(tmp_path) -> str:
    path = os.path.join(str(tmp_path), "t.lackey")
    with open(path, "w") as f:
        f.write("==1== Lackey\n")
        for i in range(3000):
            f.write(f"I  0040{i:04x},3\n L {(i % 50) << 12 | 8:08x},8\n")
            if i % 4 == 0:
                f.write(f" S {(i % 7) << 12:08x},4\n")
    return path


def test_info_json_has_the_interface_fields(tmp_path):
    """`apf trace info --json` gives records, accesses, reads, writes, distinct_pages,
    footprint_bytes, instructions and format, for a text trace and for its memtrace alike."""
    src = _lackey_file(tmp_path)
    out = os.path.join(str(tmp_path), "t.apfmt")
    assert apf("trace", "import", src, "-o", out, "--quiet").returncode == 0
    text, native = (json.loads(apf("trace", "info", p, "--json").stdout) for p in (src, out))
    fields = ("records", "accesses", "reads", "writes", "distinct_pages", "footprint_bytes", "instructions")
    assert {k: text[k] for k in fields} == {k: native[k] for k in fields}
    assert (text["format"], native["format"]) == ("lackey", "native")
    assert native["accesses"] == 3000 + 750 and native["reads"] == 3000 and native["writes"] == 750
    assert native["distinct_pages"] == 50 and native["footprint_bytes"] == 50 * 4096
    assert native["instructions"] == 3000
    assert native["working_set"]["1000"]["max_pages"] == 50
    human = apf("trace", "info", out)
    assert human.returncode == 0 and "footprint" in human.stdout and "--guest-mem" in human.stdout


@pytest.mark.parametrize("content, pattern", [
    (b"", r"^apf trace: error: \S+/bad:1: empty file"),
    (b"\x00\x01\x02binary", r"^apf trace: error: \S+/bad:1: a binary file that is no known trace format"),
    (b"I  0401,3\nI  0402,3\n", r"^apf trace: error: \S+/bad:2: no data access"),
    (b" L 1000,8\n L 10g0,8\n", r"^apf trace: error: \S+/bad:2: expected a lackey line"),
    (b"0x1000 R\nnope W\n", r"^apf trace: error: \S+/bad:2: expected a page reference"),
    (b"\x1f\x8b\x08\x00\x00\x00\x00\x00", r"^apf trace: error: \S+/bad:1: truncated or corrupt gzip data"),
])
def test_bad_input_is_one_line_with_file_and_line_and_exit_2(tmp_path, content, pattern):
    """Import and info both reject bad input in one line naming the file and line, exit 2."""
    bad = os.path.join(str(tmp_path), "bad")
    with open(bad, "wb") as f:
        f.write(content)
    for args in (["import", bad, "-o", os.path.join(str(tmp_path), "o.apfmt")], ["info", bad]):
        _one_line_error(apf("trace", *args), pattern)


def test_record_runs_a_program_under_valgrind(tmp_path):
    """`apf trace record` traces a real program (valgrind must be installed: `make test` installs
    it) and stores its provenance and the native ns per instruction."""
    assert shutil.which("valgrind"), "valgrind is missing: `make test` installs it (apt-get install valgrind)"
    out = os.path.join(str(tmp_path), "true.apfmt")
    proc = apf("trace", "record", "--quiet", "-o", out, "--", "true", timeout=120)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(apf("trace", "info", out, "--json").stdout)
    assert info["source_format"] == "lackey" and info["records"] > 1000 and info["instructions"] > 10_000
    assert info["ns_per_insn"] and info["ns_per_insn"] > 0
    assert info["provenance"]["command"] == ["true"]


def test_record_without_valgrind_says_how_to_install_it(tmp_path):
    """With no valgrind on PATH, record fails in one line that says how to install it."""
    bare = os.path.join(str(tmp_path), "bin")
    os.mkdir(bare)
    os.symlink(shutil.which("true"), os.path.join(bare, "true"))
    proc = subprocess.run(APF + ["trace", "record", "-o", os.path.join(str(tmp_path), "x"), "--", "true"],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PATH": bare}, timeout=60)
    _one_line_error(proc, r"^apf trace: error: valgrind is not installed: install it with `apt-get install valgrind`")


def test_record_of_a_failing_command_is_an_error(tmp_path):
    """A command that exits non-zero is not recorded: one line with its status."""
    proc = apf("trace", "record", "--quiet", "-o", os.path.join(str(tmp_path), "f"), "--", "false")
    _one_line_error(proc, r"^apf trace: error: false exited with status 1")


@pytest.mark.parametrize("args, says", [
    (["info", "/nonexistent/trace.apfmt"], "/nonexistent/trace.apfmt: No such file or directory"),
    (["info", "/"], "/: Is a directory"),
    (["import", "/nonexistent/lackey.out", "-o", "/tmp/never.apfmt"], "/nonexistent/lackey.out: No such file"),
])
def test_a_path_that_cannot_be_read_or_written_is_one_line(args, says, tmp_path):
    """A missing input, a directory, or an output in a missing directory: one error line naming
    the path, exit 2, no traceback."""
    assert says in refusal(apf("trace", *args, timeout=60))


def test_an_output_in_a_missing_directory_is_one_line(tmp_path):
    """An import whose output directory does not exist: one error line, exit 2, no traceback."""
    source = tmp_path / "refs.txt"
    source.write_text("0x1000 R\n")
    proc = apf("trace", "import", str(source), "-o", str(tmp_path / "missing" / "out.apfmt"), timeout=60)
    assert proc.returncode == 2 and "No such file or directory" in proc.stderr and "Traceback" not in proc.stderr


def test_record_warns_of_its_cost_with_an_estimate_before_it_starts(tmp_path):
    """Before valgrind starts, record says it runs the program about 1000x slower and how long that
    should take from the native run; the progress line (to a pipe here) carries the estimate."""
    out = os.path.join(str(tmp_path), "true.apfmt")
    proc = apf("trace", "record", "-o", out, "--", "true", timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert re.fullmatch(r"apf trace record: recording runs true about 1000x slower than natively \(valgrind "
                        r"lackey\): it ran in \d+\.\d{3}s natively, so expect about [\d.]+ (s|min|h); Ctrl-C stops it",
                        lines[0]), proc.stderr
    assert all("of about" in line for line in lines[1:]), proc.stderr


def test_record_interrupted_leaves_no_vgdb_fifo(tmp_path):
    """Ctrl-C during a recording kills valgrind; valgrind runs with --vgdb=no, so it never made the
    vgdb FIFOs that a killed valgrind would leave in /tmp."""
    import glob
    import psutil
    out = os.path.join(str(tmp_path), "long.apfmt")
    proc = subprocess.Popen(APF + ["trace", "record", "--quiet", "-o", out, "--", sys.executable, "-c",
                                   "sum(range(3 * 10**6))"],
                            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def valgrind_pid():
            for child in psutil.Process(proc.pid).children(recursive=True):
                try:
                    if "valgrind" in " ".join(child.cmdline()) or child.name().startswith(("memcheck", "lackey")):
                        return child.pid
                except psutil.NoSuchProcess:
                    pass
            return None
        from tests.helpers import wait_until
        pid = wait_until(valgrind_pid, "valgrind started", 60, every_s=0.1)
        wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).cpu_times().user > 0.5,
                   "valgrind under way", 60, every_s=0.1)      # past its start-up, where the FIFOs are made
        proc.send_signal(2)     # SIGINT: Ctrl-C
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert glob.glob(f"/tmp/vgdb-pipe-*-{pid}-*") == []
    assert not os.path.exists(out)        # the partial memtrace is removed
