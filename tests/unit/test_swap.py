"""host/swapio/device.py and threads.py: the swap file (real pread/pwrite, optionally O_DIRECT)
and the I/O worker pool reporting completions through a shared deque and a real eventfd, taken
as the host's poll loop takes them."""
from __future__ import annotations

import errno
import fcntl
import linecache
import os
import shutil
import stat
import sys
import tempfile
import time
from collections import deque

import pytest

import host.swapio.queues as queues_mod
import host.swapio.threads as threads_mod
from shared.chaos import Chaos
from host.swapio.device import SwapDevice, SwapIOError
from host.swapio.engine import Completion, IoOp
from host.swapio.threads import IoWorkers
from host.swapio.queues import slot_runs
from protocol.messages import PAGE_SIZE
from shared.files import GuestRam
from tests.environment import o_direct_refused

RECV_TIMEOUT_S = 5.0
GUEST_PAGES = 16


def pattern(gfn: int, tag: int) -> bytes:
    """A page-sized pattern that differs per page and per tag."""
    return (f"gfn={gfn} tag={tag};".encode() * (PAGE_SIZE // 8))[:PAGE_SIZE]


@pytest.fixture
def ram(shm_dir):
    r = GuestRam.create(os.path.join(shm_dir, "ram"), GUEST_PAGES)
    yield r
    r.close()


@pytest.fixture
def swap(tmp_path):
    dev = SwapDevice(str(tmp_path / "swap"))
    yield dev
    dev.close()


@pytest.fixture
def make_workers(swap, ram):
    """Build IoWorkers on the real swap file and RAM; every pool made is stopped at teardown."""
    made: list[IoWorkers] = []

    def make(depth: int = 1, latency_ns: int = 0, chaos: Chaos | None = None) -> IoWorkers:
        w = IoWorkers(swap, ram.page, depth, latency_ns, chaos)
        made.append(w)
        return w

    yield make
    for w in made:
        w._stop.set()
    for w in made:
        for t in w.threads:
            if t.ident is not None:
                t.join(10)
        assert not any(t.is_alive() for t in w.threads)
        assert w.stop() == []   # closes the eventfd now that no worker can write it


class Consumer:
    """Takes completions as the host's poll loop does (wait for the eventfd, drain the whole
    batch) and hands them out one at a time."""

    def __init__(self, workers: IoWorkers):
        self.workers = workers
        self.batch: deque[Completion] = deque()

    def next(self, timeout_s: float = RECV_TIMEOUT_S) -> Completion:
        """One completion, or fail the test (never hang)."""
        deadline = time.monotonic() + timeout_s
        while not self.batch:
            left = deadline - time.monotonic()
            assert left > 0 and self.workers.wait(left), f"no I/O completion within {timeout_s} s"
            self.batch.extend(self.workers.drain())
        return self.batch.popleft()

    def quiet_for(self, seconds: float) -> bool:
        """True if no completion arrives within `seconds`."""
        return not self.batch and not self.workers.wait(seconds) and not self.workers.drain()


def write_page(ram: GuestRam, gfn: int, data: bytes) -> None:
    with ram.page(gfn) as p:
        p[:] = data


def read_page(ram: GuestRam, gfn: int) -> bytes:
    with ram.page(gfn) as p:
        return bytes(p)


# -- SwapDevice --------------------------------------------------------------------------------------

def test_swap_round_trip_is_byte_identical(swap, ram):
    """Pages written to their slots read back byte-identical, each from its own slot."""
    for gfn in (0, 3, 9):
        write_page(ram, gfn, pattern(gfn, 1))
        with ram.page(gfn) as p:
            swap.write_from(gfn, p)
    for gfn in (0, 3, 9):
        write_page(ram, gfn, bytes(PAGE_SIZE))
    for gfn in (9, 0, 3):
        with ram.page(gfn) as p:
            swap.read_into(gfn, p)
        assert read_page(ram, gfn) == pattern(gfn, 1)
    assert os.path.getsize(swap.path) == 10 * PAGE_SIZE


def test_swap_unwritten_slot_below_eof_reads_zero_and_past_eof_is_eio(swap, ram):
    """A hole below the end of the file reads as zeros; a read past the end is a short read: EIO."""
    write_page(ram, 4, pattern(4, 1))
    with ram.page(4) as p:
        swap.write_from(4, p)
    write_page(ram, 1, pattern(1, 1))
    with ram.page(1) as p:
        swap.read_into(1, p)
    assert read_page(ram, 1) == bytes(PAGE_SIZE)
    with ram.page(7) as p, pytest.raises(OSError) as info:
        swap.read_into(7, p)
    assert info.value.errno == errno.EIO
    assert "short swap read of slot 7" in str(info.value)


def test_swap_discard_all_empties_the_file(swap, ram):
    """discard_all() frees every slot: the file has no blocks left and old slots read past EOF."""
    write_page(ram, 2, pattern(2, 1))
    with ram.page(2) as p:
        swap.write_from(2, p)
    os.fsync(swap.fd)
    assert swap.allocated_bytes() >= PAGE_SIZE
    swap.discard_all()
    assert swap.allocated_bytes() == 0
    with ram.page(2) as p, pytest.raises(OSError):
        swap.read_into(2, p)


def test_swap_close_unlinks_the_file(tmp_path):
    """close() removes the swap file by default and keeps it with unlink=False."""
    a = SwapDevice(str(tmp_path / "a"))
    a.close()
    assert not (tmp_path / "a").exists()
    b = SwapDevice(str(tmp_path / "b"))
    b.close(unlink=False)
    assert (tmp_path / "b").exists()


def test_swap_opened_without_truncate_keeps_its_slots(tmp_path, ram):
    """truncate=False opens a file written before as it is: its slots read back; a missing file is
    not created but raises SwapIOError."""
    first = SwapDevice(str(tmp_path / "swap"))
    write_page(ram, 2, pattern(2, 10))
    with ram.page(2) as p:
        first.write_from(2, p)
    first.close(unlink=False)
    again = SwapDevice(str(tmp_path / "swap"), truncate=False)
    try:
        assert os.path.getsize(again.path) == 3 * PAGE_SIZE
        write_page(ram, 2, bytes(PAGE_SIZE))
        with ram.page(2) as p:
            again.read_into(2, p)
        assert read_page(ram, 2) == pattern(2, 10)
    finally:
        again.close()
    with pytest.raises(SwapIOError) as info:
        SwapDevice(str(tmp_path / "swap"), truncate=False)
    assert info.value.__cause__.errno == errno.ENOENT
    assert not (tmp_path / "swap").exists()


def test_swap_open_failure_is_swapioerror_with_oserror_cause(tmp_path):
    """An unopenable swap path raises SwapIOError naming the path, with the OSError as its cause."""
    path = str(tmp_path / "no-such-dir" / "swap")
    with pytest.raises(SwapIOError) as info:
        SwapDevice(path)
    assert path in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOENT
    assert "--direct-io" not in str(info.value)   # the O_DIRECT hint is only for EINVAL


DIRECT_IO_CANDIDATES = ("/var/tmp", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "/dev/shm", tempfile.gettempdir())


def _direct_io_dir() -> str:
    """A private directory on a file system that takes O_DIRECT; skip the test, naming the places
    probed, if there is none."""
    for parent in DIRECT_IO_CANDIDATES:
        if os.path.isdir(parent) and o_direct_refused(parent) is None:
            return tempfile.mkdtemp(prefix="apf-unit-direct-", dir=parent)
    pytest.skip(f"needs a file system that takes O_DIRECT (open(2) refused it in {', '.join(DIRECT_IO_CANDIDATES)})")


def test_direct_io_round_trip(ram):
    """With direct_io=True on a file system that takes O_DIRECT, the file really is opened with
    O_DIRECT and pages round-trip byte-identical (page-aligned buffers from the RAM mapping)."""
    d = _direct_io_dir()
    try:
        dev = SwapDevice(os.path.join(d, "swap-direct"), direct_io=True)
        try:
            assert dev.direct_io
            assert fcntl.fcntl(dev.fd, fcntl.F_GETFL) & os.O_DIRECT
            for gfn in (0, 5):
                write_page(ram, gfn, pattern(gfn, 2))
                with ram.page(gfn) as p:
                    dev.write_from(gfn, p)
                write_page(ram, gfn, bytes(PAGE_SIZE))
            for gfn in (5, 0):
                with ram.page(gfn) as p:
                    dev.read_into(gfn, p)
                assert read_page(ram, gfn) == pattern(gfn, 2)
        finally:
            dev.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_direct_io_refused_is_an_actionable_error(tmp_path):
    """A swap path whose open with O_DIRECT the kernel refuses (EINVAL): direct_io=True raises
    SwapIOError that tells the user about --direct-io, with the OSError as its cause. The path is
    a character device (a node of /dev/null made here, as root; else procfs' /proc/self/comm):
    its file has no direct-I/O method, so open(2) refuses O_DIRECT on every kernel."""
    path = str(tmp_path / "null")
    if os.getuid() == 0:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    else:
        path = "/proc/self/comm"
    with pytest.raises(SwapIOError) as info:
        SwapDevice(path, direct_io=True, truncate=False)
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.EINVAL
    assert str(info.value) == (f"cannot open swap file {path}: Invalid argument "
                               "(the file system may not support O_DIRECT; drop --direct-io)")
