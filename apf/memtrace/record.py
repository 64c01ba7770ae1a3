"""`apf trace record`: run a command under valgrind's lackey and import its trace as it streams.

The command runs twice: once natively, timed (its CPU time, user + system, over the instructions
lackey counted gives the nanoseconds per instruction the replay uses), then under
`valgrind --tool=lackey --trace-mem=yes --log-fd=N`, whose trace goes through a pipe straight into
the importer (nothing of the multi-GB text is kept). The command's own output is discarded.
The provenance (command line, Debian package and version of the program when dpkg knows it,
valgrind version, date) goes into the memtrace's metadata.
"""
from __future__ import annotations

import datetime
import io
import os
import platform
import resource
import shutil
import signal
import subprocess
import time
from dataclasses import replace
from typing import Any, Callable

from apf.memtrace.formats import HashingReader, Source, peek_head
from apf.memtrace.importer import Progress, import_trace
from protocol.errors import RecordError
from shared.memtrace import MemtraceError, MemtraceHeader, set_ns_per_insn

VALGRIND_INSTALL = "install it with `apt-get install valgrind` (Debian, Ubuntu) or `dnf install valgrind`"
LACKEY_SLOWDOWN = 1000     # lackey's --trace-mem runs a program about this many times slower (sort of
                           # 2.8 MB: 0.6 s natively, 9.7 min recorded); the estimate told before recording


def record(argv: list[str], out_path: str, progress: Progress | None = None,
           notice: Callable[[str], None] | None = None) -> MemtraceHeader:
    """Record `argv` into the memtrace `out_path`; returns its header. After the native run and
    before valgrind starts, `notice` (when given) is told the cost: about LACKEY_SLOWDOWN times the
    native wall time, with that estimate; `progress` gets the estimate as its `note` (seconds so far
    of about how many). Valgrind runs with --vgdb=no, so an interrupted recording leaves no vgdb
    FIFO in /tmp. Raises RecordError (no valgrind; the command is not found or exits non-zero) or
    MemtraceError (lackey's output unreadable)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise RecordError(f"valgrind is not installed: {VALGRIND_INSTALL}")
    if not argv:
        raise RecordError("no command to record: give it after `--`")
    program = shutil.which(argv[0])
    if program is None:
        raise RecordError(f"{argv[0]}: command not found")
    signal.signal(signal.SIGTERM, _raise_interrupt)     # so that the child is killed below
    native_ns, native_wall_s = _native_cpu_ns(argv)
    estimate_s = native_wall_s * LACKEY_SLOWDOWN
    if notice is not None:
        notice(f"recording runs {argv[0]} about {LACKEY_SLOWDOWN}x slower than natively (valgrind lackey): "
               f"it ran in {native_wall_s:.3f}s natively, so expect about {_duration(estimate_s)}; Ctrl-C stops it")
    if progress is not None:
        shown, progress = progress, lambda b, l, r, s: shown(b, l, r, s, f"{_duration(s)} of about "
                                                                    f"{_duration(estimate_s)}")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen([valgrind, "--tool=lackey", "--trace-mem=yes", "--vgdb=no", f"--log-fd={write_fd}",
                             *argv],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            pass_fds=(write_fd,), preexec_fn=_die_with_parent)
    os.close(write_fd)
    raw = os.fdopen(read_fd, "rb", buffering=0)
    hasher = HashingReader(raw)
    stream = io.BufferedReader(hasher, 1 << 20)
    source = Source(f"lackey output of {argv[0]}", stream, hasher, None, b"")
    source.head = peek_head(source)
    meta = {"command": argv, "program": program, "package": _package_of(program),
            "valgrind": _version([valgrind, "--version"]), "recorded": datetime.datetime.now(
                datetime.timezone.utc).isoformat(timespec="seconds"), "machine": platform.machine(),
            "native_cpu_ns": native_ns}
    try:
        header = import_trace("-", out_path, progress=progress, meta=meta, source=source)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    _, err = proc.communicate()
    if proc.returncode != 0:
        os.unlink(out_path)
        last = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise RecordError(f"{' '.join(argv)} exited with status {proc.returncode} under valgrind: {last[0]}")
    rate = native_ns / header.instructions if header.instructions else 0.0
    set_ns_per_insn(out_path, rate)
    return replace(header, ns_per_insn=rate)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt()


def _die_with_parent() -> None:
    """In the valgrind child, before exec: SIGKILL when the recorder dies (a traced program whose
    trace reader is gone would otherwise run on)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)    # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _duration(seconds: float) -> str:
    """A duration for a person: "12 s", "9.7 min", "2.1 h"."""
    if seconds < 120:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _native_cpu_ns(argv: list[str]) -> tuple[int, float]:
    """CPU time (user + system, ns) and wall time (s) of one native run of `argv`. Raises
    RecordError if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        last = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise RecordError(f"{' '.join(argv)} exited with status {done.returncode}: {last[0]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return int((cpu if cpu > 0 else wall) * 1e9), wall


def _package_of(program: str) -> dict[str, Any] | None:
    """The Debian package that owns `program` and its version, if dpkg knows it."""
    if shutil.which("dpkg-query") is None:
        return None
    real = os.path.realpath(program)
    for candidate in dict.fromkeys((program, real, real.replace("/usr/bin/", "/bin/"))):
        found = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True)
        if found.returncode == 0 and ":" in found.stdout:
            name = found.stdout.split(":", 1)[0].strip()
            version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", name], capture_output=True, text=True)
            return {"name": name, "version": version.stdout.strip()}
    return None


def _version(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


__all__ = ["record", "RecordError", "MemtraceError", "VALGRIND_INSTALL"]
