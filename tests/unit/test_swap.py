"""host/swap.py: the swap file (real pread/pwrite, optionally O_DIRECT) and the I/O worker pool
reporting completions over a real inproc ZeroMQ socket."""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
import threading
import time

import pytest
import zmq

import host.swap as swap_mod
from host.swap import (COMPLETIONS_ENDPOINT, JOIN_BOUND_S, Completion, IoOp, IoWorkers, SwapDevice,
                       SwapIOError, decode_completion)
from protocol.messages import PAGE_SIZE
from shared.files import GuestRam

RECV_TIMEOUT_MS = 5000
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
def zctx():
    """A context whose PULL socket is bound to the completions endpoint; torn down with a bound."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.bind(COMPLETIONS_ENDPOINT)
    yield ctx, pull
    pull.close(linger=0)
    term = threading.Thread(target=ctx.term, daemon=True)
    term.start()
    term.join(5)
    assert not term.is_alive(), "zmq context did not terminate: a worker socket was left open"


@pytest.fixture
def make_workers(zctx, swap, ram):
    """Build IoWorkers on the real context; every pool made is stopped at teardown."""
    ctx, _ = zctx
    made: list[IoWorkers] = []

    def make(depth: int = 1, latency_ns: int = 0) -> IoWorkers:
        w = IoWorkers(ctx, swap, ram.page, depth, latency_ns)
        made.append(w)
        return w

    yield make
    for w in made:
        w._stop.set()
    for w in made:
        for t in w.threads:
            if t.is_alive() or t.ident is not None:
                t.join(10)
        assert not any(t.is_alive() for t in w.threads)


def recv_completion(pull: zmq.Socket, timeout_ms: int = RECV_TIMEOUT_MS) -> Completion:
    """Receive one completion or fail the test (never hang)."""
    assert pull.poll(timeout_ms), f"no I/O completion within {timeout_ms} ms"
    return decode_completion(pull.recv())


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
    assert "short swap read of page 7" in str(info.value)


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


def test_swap_open_failure_is_swapioerror_with_oserror_cause(tmp_path):
    """An unopenable swap path raises SwapIOError naming the path, with the OSError as its cause."""
    path = str(tmp_path / "no-such-dir" / "swap")
    with pytest.raises(SwapIOError) as info:
        SwapDevice(path)
    assert path in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOENT
    assert "--direct-io" not in str(info.value)   # the O_DIRECT hint is only for EINVAL


def test_direct_io_round_trip_or_actionable_error(tmp_path, ram):
    """With direct_io=True the round trip works through O_DIRECT (page-aligned buffers from the RAM
    mapping); if the file system refuses O_DIRECT (EINVAL), the error tells the user about --direct-io."""
    try:
        dev = SwapDevice(str(tmp_path / "swap-direct"), direct_io=True)
    except SwapIOError as exc:
        assert isinstance(exc.__cause__, OSError) and exc.__cause__.errno == errno.EINVAL
        assert "--direct-io" in str(exc)
        return
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


# -- IoWorkers -----------------------------------------------------------------------------------------

def test_workers_complete_reads_and_writes_with_latency(zctx, make_workers, ram, swap):
    """Submitted writes then reads complete, each reported as (op, gfn, err, start, end) with
    end >= start + latency, and the bytes really moved between the RAM file and the swap file."""
    _, pull = zctx
    latency_ns = 20_000_000
    workers = make_workers(depth=2, latency_ns=latency_ns)
    workers.start()
    for gfn in (1, 2):
        write_page(ram, gfn, pattern(gfn, 3))
        workers.submit(IoOp.WRITE, gfn)
    writes = [recv_completion(pull) for _ in range(2)]
    assert sorted((c.op, c.gfn, c.err) for c in writes) == [(IoOp.WRITE, 1, 0), (IoOp.WRITE, 2, 0)]

    for gfn in (1, 2):
        write_page(ram, gfn, bytes(PAGE_SIZE))
        workers.submit(IoOp.READ, gfn)
    reads = [recv_completion(pull) for _ in range(2)]
    assert sorted((c.op, c.gfn, c.err) for c in reads) == [(IoOp.READ, 1, 0), (IoOp.READ, 2, 0)]
    for c in writes + reads:
        assert isinstance(c, Completion)
        assert c.end_ns >= c.start_ns + latency_ns, c
    for gfn in (1, 2):
        assert read_page(ram, gfn) == pattern(gfn, 3)
    assert workers.stop() == []


def test_workers_report_io_errors_as_errno(zctx, make_workers):
    """A failing I/O (a read past the end of the swap file) is reported with err=EIO, not raised."""
    _, pull = zctx
    workers = make_workers(depth=1)
    workers.start()
    workers.submit(IoOp.READ, 11)
    c = recv_completion(pull)
    assert (c.op, c.gfn, c.err) == (IoOp.READ, 11, errno.EIO)
    assert workers.stop() == []


def test_reads_are_served_before_queued_writes(zctx, make_workers, ram, swap):
    """With one worker and a backlog, every queued read starts before any queued write, and each
    class keeps its submission order."""
    _, pull = zctx
    for gfn in (6, 7, 8):
        write_page(ram, gfn, pattern(gfn, 4))
        with ram.page(gfn) as p:
            swap.write_from(gfn, p)
    workers = make_workers(depth=1, latency_ns=2_000_000)
    jobs = [(IoOp.WRITE, 1), (IoOp.WRITE, 2), (IoOp.READ, 6), (IoOp.WRITE, 3), (IoOp.READ, 7),
            (IoOp.READ, 8)]
    for op, gfn in jobs:
        workers.submit(op, gfn)
    workers.start()
    done = [recv_completion(pull) for _ in jobs]
    assert [(c.op, c.gfn) for c in done] == [(IoOp.READ, 6), (IoOp.READ, 7), (IoOp.READ, 8),
                                             (IoOp.WRITE, 1), (IoOp.WRITE, 2), (IoOp.WRITE, 3)]
    assert all(c.err == 0 for c in done)
    starts = [c.start_ns for c in done]
    assert starts == sorted(starts)
    assert workers.stop() == []


def test_cancel_pending_returns_only_jobs_not_started(zctx, make_workers, ram):
    """cancel_pending() while the only worker is busy returns every queued job (reads first) and
    not the running one; only the running job completes."""
    _, pull = zctx
    workers = make_workers(depth=1, latency_ns=300_000_000)
    for gfn in range(5):
        write_page(ram, gfn, pattern(gfn, 5))
    workers.submit(IoOp.WRITE, 0)
    workers.start()
    deadline = time.monotonic() + 5
    while workers.jobs.qsize() != 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert workers.jobs.qsize() == 0, "the worker never took the first job"
    workers.submit(IoOp.WRITE, 1)
    workers.submit(IoOp.READ, 2)
    workers.submit(IoOp.WRITE, 3)

    cancelled = workers.cancel_pending()

    assert cancelled == [(IoOp.READ, 2), (IoOp.WRITE, 1), (IoOp.WRITE, 3)]
    c = recv_completion(pull)
    assert (c.op, c.gfn, c.err) == (IoOp.WRITE, 0, 0)
    assert not pull.poll(500), "a cancelled job ran anyway"
    assert workers.cancel_pending() == []
    assert workers.stop() == []


def test_stop_joins_idle_workers_quickly():
    """stop() on idle workers returns no stragglers, well within the join bound."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(COMPLETIONS_ENDPOINT)
    d = tempfile.mkdtemp(prefix="apf-unit-swap-", dir="/dev/shm")
    ram = GuestRam.create(os.path.join(d, "ram"), 4)
    dev = SwapDevice(os.path.join(d, "swap"))
    try:
        workers = IoWorkers(ctx, dev, ram.page, 4, 0)
        workers.start()
        t0 = time.monotonic()
        assert workers.stop() == []
        elapsed = time.monotonic() - t0
        assert elapsed < min(JOIN_BOUND_S, 1.0), elapsed
        assert not any(t.is_alive() for t in workers.threads)
    finally:
        pull.close(linger=0)
        ctx.term()
        dev.close()
        ram.close()
        shutil.rmtree(d, ignore_errors=True)


def test_stop_returns_the_names_of_workers_stuck_past_the_bound(zctx, make_workers, monkeypatch):
    """A worker stuck in one I/O longer than the join bound is reported by name and not awaited:
    stop() returns after about the bound, not after the I/O."""
    monkeypatch.setattr(swap_mod, "JOIN_BOUND_S", 0.2)
    _, pull = zctx
    workers = make_workers(depth=2, latency_ns=1_500_000_000)
    workers.start()
    workers.submit(IoOp.READ, 0)
    deadline = time.monotonic() + 5
    while workers.jobs.qsize() != 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)
    t0 = time.monotonic()
    stuck = workers.stop()
    elapsed = time.monotonic() - t0
    assert elapsed < 1.0, elapsed
    assert len(stuck) == 1 and stuck[0] in ("io-0", "io-1")
    # The stuck worker still reports its completion, then exits (checked by the fixture).
    c = recv_completion(pull)
    assert (c.op, c.gfn) == (IoOp.READ, 0)
