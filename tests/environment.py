"""What some tests need of the machine beyond what `make test` installs, checked before they start
and said in one line when it is missing, rather than discovered as a failure deep in a run.

- O_DIRECT on the directory a test's swap file goes to (TMPDIR, or the test's tmp_path): tmpfs
  takes it only from Linux 6.6; overlay and some network file systems refuse it.
- Linux native AIO (io_setup(2)): absent from kernels built without CONFIG_AIO, and limited by
  /proc/sys/fs/aio-max-nr.
- Overcommit: a terabyte guest maps a 1 TiB memfd (never touched), which vm.overcommit_memory 2
  or a small address-space limit refuses.
- Redis 7.0 or later for the cluster tests (CLUSTER ADDSLOTSRANGE is 7.0's).

A need that cannot be met here skips the test with its reason on one line; redis-server itself
missing fails instead (tests/redis_server.py: `make test` installs it).
"""
from __future__ import annotations

import mmap
import os
import re
import subprocess
import tempfile

import pytest

from host.swapio.aio import AioEngine
from host.swapio.device import SwapDevice
from protocol.errors import AioUnavailable
from tests.redis_server import START_BOUND_S, require

REDIS_VERSION = re.compile(r"\bv=(\d+)\.(\d+)")


def o_direct_refused(directory: str) -> OSError | None:
    """Why a new file in `directory` cannot be opened with O_DIRECT (the OSError), or None if it
    can. Nothing is left behind either way."""
    path = os.path.join(directory, f".apf-odirect-probe-{os.getpid()}")
    try:
        os.close(os.open(path, os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o600))
    except OSError as exc:
        return exc
    finally:
        try:
            os.unlink(path)             # O_CREAT may have made the file before O_DIRECT was refused
        except FileNotFoundError:
            pass
    return None


def require_o_direct(directory: str | None = None) -> None:
    """Skip unless a file in `directory` (default: TMPDIR) opens with O_DIRECT."""
    directory = directory or tempfile.gettempdir()
    refused = o_direct_refused(directory)
    if refused is not None:
        pytest.skip(f"needs O_DIRECT in {directory} (TMPDIR): open(2) refused it ({refused.strerror}); "
                    "point TMPDIR at a disk file system")


def require_native_aio() -> None:
    """Skip unless Linux native AIO can set up a context here (on an O_DIRECT file in TMPDIR,
    which require_o_direct checks first)."""
    require_o_direct()
    directory = tempfile.mkdtemp(prefix="apf-aio-probe-")
    try:
        dev = SwapDevice(os.path.join(directory, "swap"), direct_io=True)
        try:
            AioEngine(dev, lambda gfn: memoryview(b""), 1).stop()
        except AioUnavailable as exc:
            pytest.skip(f"needs Linux native AIO: {exc}")
        finally:
            dev.close()
    finally:
        os.rmdir(directory)


def require_overcommit(nbytes: int) -> None:
    """Skip unless a shared memfd of `nbytes` can be mapped, as the host maps guest RAM."""
    fd = os.memfd_create("apf-overcommit-probe")
    try:
        os.ftruncate(fd, nbytes)
        mmap.mmap(fd, nbytes).close()
    except OSError as exc:
        with open("/proc/sys/vm/overcommit_memory", encoding="ascii") as f:
            mode = f.read().strip()
        pytest.skip(f"needs to map {nbytes >> 30} GiB of untouched memory: {exc.strerror} "
                    f"(vm.overcommit_memory is {mode}; 0 or 1 allow it)")
    finally:
        os.close(fd)


def require_redis_version(major: int, minor: int, why: str) -> None:
    """Skip unless the installed redis-server is `major.minor` or later; `why` says what needs it."""
    out = subprocess.run([require(), "--version"], capture_output=True, text=True, timeout=START_BOUND_S,
                         stdin=subprocess.DEVNULL).stdout
    m = REDIS_VERSION.search(out)
    assert m, f"redis-server --version said {out!r}"
    have = (int(m.group(1)), int(m.group(2)))
    if have < (major, minor):
        pytest.skip(f"needs redis-server {major}.{minor} or later ({why}); this one is {have[0]}.{have[1]}")
