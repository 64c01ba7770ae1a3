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


# -- IoWorkers -----------------------------------------------------------------------------------------
def test_workers_complete_reads_and_writes_with_latency(make_workers, ram, swap):
    """Submitted writes then reads complete, each reported as (op, gfn, err, start, end) with
    end >= start + latency, and the bytes really moved between the RAM file and the swap file."""
    latency_ns = 20_000_000
    workers = make_workers(depth=2, latency_ns=latency_ns)
    done = Consumer(workers)
    workers.start()
    for gfn in (1, 2):
        write_page(ram, gfn, pattern(gfn, 3))
        workers.submit(IoOp.WRITE, gfn)
    writes = [done.next() for _ in range(2)]
    assert sorted((c.op, c.gfn, c.err) for c in writes) == [(IoOp.WRITE, 1, 0), (IoOp.WRITE, 2, 0)]

    for gfn in (1, 2):
        write_page(ram, gfn, bytes(PAGE_SIZE))
        workers.submit(IoOp.READ, gfn)
    reads = [done.next() for _ in range(2)]
    assert sorted((c.op, c.gfn, c.err) for c in reads) == [(IoOp.READ, 1, 0), (IoOp.READ, 2, 0)]
    for c in writes + reads:
        assert isinstance(c, Completion) and isinstance(c.op, IoOp)
        assert c.end_ns >= c.start_ns + latency_ns, c
    for gfn in (1, 2):
        assert read_page(ram, gfn) == pattern(gfn, 3)
    assert done.quiet_for(0.1)
    assert workers.stop() == []


def test_workers_report_io_errors_as_errno(make_workers):
    """A failing I/O (a read past the end of the swap file) is reported with err=EIO, not raised."""
    workers = make_workers(depth=1)
    workers.start()
    workers.submit(IoOp.READ, 11)
    c = Consumer(workers).next()
    assert (c.op, c.gfn, c.err) == (IoOp.READ, 11, errno.EIO)
    assert workers.stop() == []


def test_injected_read_error_is_reported_and_leaves_the_page_alone(make_workers, ram, swap):
    """An injected swap-read EIO is reported like a real one, without reading into the page; the
    next read of the same slot (the rule fired once) moves the bytes."""
    write_page(ram, 3, pattern(3, 6))
    with ram.page(3) as p:
        swap.write_from(3, p)
    write_page(ram, 3, pattern(3, 7))
    workers = make_workers(depth=1, chaos=Chaos.from_specs(["swap-read:eio:n=1"], "host"))
    done = Consumer(workers)
    workers.start()
    workers.submit(IoOp.READ, 3)
    assert done.next()[:3] == (IoOp.READ, 3, errno.EIO)
    assert read_page(ram, 3) == pattern(3, 7)
    workers.submit(IoOp.READ, 3)
    assert done.next()[:3] == (IoOp.READ, 3, 0)
    assert read_page(ram, 3) == pattern(3, 6)


def test_reads_are_served_before_queued_writes(make_workers, ram, swap):
    """With one worker and a backlog, every queued read starts before any queued write, and each
    class keeps its submission order."""
    for gfn in (6, 7, 8):
        write_page(ram, gfn, pattern(gfn, 4))
        with ram.page(gfn) as p:
            swap.write_from(gfn, p)
    workers = make_workers(depth=1, latency_ns=2_000_000)
    jobs = [(IoOp.WRITE, 1), (IoOp.WRITE, 2), (IoOp.READ, 6), (IoOp.WRITE, 3), (IoOp.READ, 7),
            (IoOp.READ, 8)]
    for op, gfn in jobs:
        workers.submit(op, gfn)
    assert workers.queued() == len(jobs)
    workers.start()
    consumer = Consumer(workers)
    done = [consumer.next() for _ in jobs]
    assert [(c.op, c.gfn) for c in done] == [(IoOp.READ, 6), (IoOp.READ, 7), (IoOp.READ, 8),
                                             (IoOp.WRITE, 1), (IoOp.WRITE, 2), (IoOp.WRITE, 3)]
    assert all(c.err == 0 for c in done)
    starts = [c.start_ns for c in done]
    assert starts == sorted(starts)
    assert workers.queued() == 0
    assert workers.stop() == []


def wait_until_taken(workers: IoWorkers) -> None:
    deadline = time.monotonic() + 5
    while workers.queued() != 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert workers.queued() == 0, "no worker took the queued job"


def test_a_head_start_shortens_the_modelled_latency_of_reads_only(make_workers, ram, swap):
    """With time dilation the host sets `read_head_start_ns` to the completion path it measured:
    a read's modelled latency ends that much early, a write's does not."""
    latency_ns = 40_000_000
    workers = make_workers(depth=1, latency_ns=latency_ns)
    workers.read_head_start_ns = latency_ns // 2
    done = Consumer(workers)
    workers.start()
    write_page(ram, 3, pattern(3, 1))
    workers.submit(IoOp.WRITE, 3)
    write = done.next()
    workers.submit(IoOp.READ, 3)
    read = done.next()
    assert write.modelled_ns >= latency_ns
    assert latency_ns // 2 <= read.modelled_ns < latency_ns
    assert workers.stop() == []


def test_a_read_with_readahead_is_one_request_with_one_latency(make_workers, ram, swap):
    """A swap-in with read-ahead pages is one request: one modelled latency for all of them (every
    completion has the same start and end), each run of consecutive slots read by one preadv,
    and a completion per page with the page's bytes."""
    latency_ns = 50_000_000
    for gfn in range(8):
        write_page(ram, gfn, pattern(gfn, 7))
        swap.write_from(gfn, memoryview(pattern(gfn, 7)))
        write_page(ram, gfn, bytes(PAGE_SIZE))
    workers = make_workers(depth=1, latency_ns=latency_ns)
    done = Consumer(workers)
    workers.start()
    workers.submit(IoOp.READ, 3, (1, 2, 4, 6))
    got = [done.next() for _ in range(5)]
    assert sorted((c.op, c.gfn, c.err) for c in got) == [(IoOp.READ, g, 0) for g in (1, 2, 3, 4, 6)]
    assert len({(c.start_ns, c.end_ns) for c in got}) == 1
    assert got[0].end_ns - got[0].start_ns >= latency_ns
    for gfn in (1, 2, 3, 4, 6):
        assert read_page(ram, gfn) == pattern(gfn, 7)
    assert read_page(ram, 5) == bytes(PAGE_SIZE)
    assert done.quiet_for(0.1)


def test_slot_runs_group_pages_whose_slots_are_consecutive():
    slot = {10: 4, 11: 5, 12: 9, 13: 6, 14: 0}.__getitem__
    assert slot_runs([10, 11, 12, 13, 14], slot) == [[14], [10, 11, 13], [12]]


def test_cancel_pending_returns_each_page_of_a_readahead_request(make_workers, ram):
    workers = make_workers(depth=1, latency_ns=300_000_000)
    workers.submit(IoOp.WRITE, 0)
    workers.start()
    wait_until_taken(workers)       # the only worker is busy: what follows stays queued
    workers.submit(IoOp.READ, 3, (2, 4))
    workers.submit(IoOp.WRITE, 9)
    assert workers.cancel_pending() == [(IoOp.READ, 3), (IoOp.READ, 2), (IoOp.READ, 4), (IoOp.WRITE, 9)]


def test_cancel_pending_returns_only_jobs_not_started(make_workers, ram):
    """cancel_pending() while the only worker is busy returns every queued job (reads first) and
    not the running one; only the running job completes, and the worker then serves new jobs."""
    workers = make_workers(depth=1, latency_ns=300_000_000)
    for gfn in range(5):
        write_page(ram, gfn, pattern(gfn, 5))
    workers.submit(IoOp.WRITE, 0)
    workers.start()
    wait_until_taken(workers)
    workers.submit(IoOp.WRITE, 1)
    workers.submit(IoOp.READ, 2)
    workers.submit(IoOp.WRITE, 3)

    cancelled = workers.cancel_pending()

    assert cancelled == [(IoOp.READ, 2), (IoOp.WRITE, 1), (IoOp.WRITE, 3)]
    done = Consumer(workers)
    c = done.next()
    assert (c.op, c.gfn, c.err) == (IoOp.WRITE, 0, 0)
    assert done.quiet_for(0.5), "a cancelled job ran anyway"
    assert workers.cancel_pending() == []
    workers.submit(IoOp.WRITE, 4)   # the cancelled jobs' leftover wake-ups do not stall new work
    assert done.next()[:2] == (IoOp.WRITE, 4)
    assert workers.stop() == []


def test_one_wakeup_per_batch_and_none_lost_after_a_drain(make_workers, ram, swap):
    """Completions that pile up between two arm()s write the eventfd once (the first of them);
    drain() takes them all and resets it; after the next arm() the next completion signals again."""
    for gfn in range(6):
        write_page(ram, gfn, pattern(gfn, 8))
        with ram.page(gfn) as p:
            swap.write_from(gfn, p)
    workers = make_workers(depth=2)
    fd = workers.fileno()
    workers.start()
    for gfn in range(5):
        workers.submit(IoOp.READ, gfn)
    deadline = time.monotonic() + RECV_TIMEOUT_S
    while len(workers._done) < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert workers.wait(RECV_TIMEOUT_S)
    assert os.eventfd_read(fd) == 1    # five completions, one write (this read also resets it)
    os.eventfd_write(fd, 1)            # put back what the check took, as if unread
    batch = workers.drain()
    assert sorted(c.gfn for c in batch) == list(range(5)) and all(c.err == 0 for c in batch)
    assert not workers.wait(0.05), "drain() left the eventfd readable with nothing queued"
    assert len(workers.drain()) == 0
    workers.submit(IoOp.READ, 5)
    assert workers.wait(RECV_TIMEOUT_S)
    assert [c.gfn for c in workers.drain()] == [5]


@pytest.mark.parametrize("depth", [1, 3, 8])
def test_stress_every_completion_arrives_promptly(make_workers, ram, swap, depth):
    """Thousands of fast reads (page cache) drained as the poll loop does, racing the workers'
    appends: the consumer is never left waiting while a completion sits in the deque (a lost
    wake-up would show as a wait() timing out), and every job is reported exactly once."""
    for gfn in range(GUEST_PAGES):
        write_page(ram, gfn, pattern(gfn, 9))
        with ram.page(gfn) as p:
            swap.write_from(gfn, p)
    workers = make_workers(depth=depth)
    workers.start()
    rounds, per_round = 6, 1500
    seen: list[int] = []
    for r in range(rounds):
        # Submitted in small bursts so the deque keeps emptying and refilling under the consumer.
        for i in range(per_round):
            workers.submit(IoOp.READ, i % GUEST_PAGES)
            if i % 16 == 15:
                for c in workers.drain():
                    assert c.err == 0, c
                    seen.append(c.gfn)
        while len(seen) < (r + 1) * per_round:
            waited = time.monotonic()
            stranded = not workers.wait(2.0)
            assert not stranded, (f"wait() timed out with {len(workers._done)} completions queued and "
                                  f"{(r + 1) * per_round - len(seen)} outstanding (a lost wake-up?)")
            assert time.monotonic() - waited < 2.0
            for c in workers.drain():
                assert c.err == 0, c
                seen.append(c.gfn)
    assert len(seen) == rounds * per_round
    assert sorted(seen) == sorted(i % GUEST_PAGES for _ in range(rounds) for i in range(per_round))
    assert not workers.wait(0.05) and len(workers.drain()) == 0
    assert workers.stop() == []


def wait_blocked_for_a_job(workers: IoWorkers, bound_s: float = 5.0) -> None:
    """Wait until every worker thread is blocked where an idle worker waits: in `_run`, on the line
    that takes the next job token (read from the threads' live frames)."""
    def blocked(t) -> bool:
        frame = sys._current_frames().get(t.ident)
        return (frame is not None and frame.f_code is IoWorkers._run.__code__
                and "take_token(" in linecache.getline(frame.f_code.co_filename, frame.f_lineno))
    deadline = time.monotonic() + bound_s
    while not all(blocked(t) for t in workers.threads):
        assert time.monotonic() < deadline, f"the workers were not all idle within {bound_s}s"
        time.sleep(0.005)


def test_stop_joins_idle_workers_quickly_and_closes_the_eventfd(monkeypatch):
    """stop() wakes idle workers rather than waiting for their next idle poll, joins them well
    within the join bound, and closes the eventfd."""
    monkeypatch.setattr(threads_mod, "WORKER_POLL_S", 3.0)
    d = tempfile.mkdtemp(prefix="apf-unit-swap-", dir="/dev/shm")
    ram = GuestRam.create(os.path.join(d, "ram"), 4)
    dev = SwapDevice(os.path.join(d, "swap"))
    try:
        workers = IoWorkers(dev, ram.page, 4, 0)
        fd = workers.fileno()
        assert fcntl.fcntl(fd, fcntl.F_GETFD) >= 0
        workers.start()
        wait_blocked_for_a_job(workers)
        t0 = time.monotonic()
        assert workers.stop() == []
        elapsed = time.monotonic() - t0
        assert elapsed < 1.0, elapsed
        assert not any(t.is_alive() for t in workers.threads)
        assert workers.fileno() == -1
    finally:
        dev.close()
        ram.close()
        shutil.rmtree(d, ignore_errors=True)


def test_stop_returns_the_names_of_workers_stuck_past_the_bound(make_workers, monkeypatch):
    """A worker stuck in one I/O longer than the join bound is reported by name and not awaited:
    stop() returns after about the bound, not after the I/O; the eventfd stays open for it."""
    monkeypatch.setattr(queues_mod, "JOIN_BOUND_S", 0.2)
    workers = make_workers(depth=2, latency_ns=1_500_000_000)
    workers.start()
    workers.submit(IoOp.READ, 0)
    wait_until_taken(workers)
    time.sleep(0.05)
    t0 = time.monotonic()
    stuck = workers.stop()
    elapsed = time.monotonic() - t0
    assert elapsed < 1.0, elapsed
    assert len(stuck) == 1 and stuck[0] in ("io-0", "io-1")
    assert workers.fileno() >= 0
    # The stuck worker still reports its completion, then exits (checked by the fixture).
    c = Consumer(workers).next()
    assert (c.op, c.gfn) == (IoOp.READ, 0)
