"""host/swapio/aio.py: swap I/O through Linux native AIO on a real O_DIRECT swap file, completions
taken through the kernel-written eventfd as the host's poll loop takes them; and how the host
picks between it and the worker threads (host/swapio/choice.py)."""
from __future__ import annotations

import errno
import mmap
import os
import time

import pytest

from host.config import HostConfig
from host.swapio.aio import AioEngine
from host.swapio.choice import open_io_engine
from host.swapio.device import SwapDevice
from host.swapio.engine import IoOp
from host.swapio.threads import IoWorkers
from protocol.errors import ConfigError
from shared.chaos import Chaos
from protocol.messages import PAGE_SIZE
from tests.environment import require_native_aio
from tests.unit.test_swap import Consumer, pattern

PAGES = 64


@pytest.fixture
def ram():
    mem = mmap.mmap(-1, PAGES * PAGE_SIZE)
    view = memoryview(mem)
    yield view
    view.release()
    mem.close()


def page_of(ram: memoryview):
    return lambda gfn: ram[gfn * PAGE_SIZE:(gfn + 1) * PAGE_SIZE]


@pytest.fixture
def direct_swap(tmp_path):
    require_native_aio()
    dev = SwapDevice(str(tmp_path / "swap"), direct_io=True)   # tmp_path is on disk here: O_DIRECT works
    yield dev
    dev.close()


@pytest.fixture
def make_engine(direct_swap, ram):
    made: list[AioEngine] = []

    def make(depth: int = 8, swap: SwapDevice | None = None) -> AioEngine:
        engine = AioEngine(swap or direct_swap, page_of(ram), depth)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        assert engine.stop() == []


def fill(ram: memoryview, tag: int) -> None:
    for gfn in range(PAGES):
        ram[gfn * PAGE_SIZE:(gfn + 1) * PAGE_SIZE] = pattern(gfn, tag)


def run_all(engine: AioEngine, op: IoOp, gfns: list[int]) -> list:
    consumer = Consumer(engine)
    for gfn in gfns:
        engine.submit(op, gfn)
    return [consumer.next() for _ in gfns]


def test_write_back_then_swap_in_is_byte_identical(make_engine, ram):
    engine = make_engine()
    fill(ram, 1)
    done = run_all(engine, IoOp.WRITE, list(range(PAGES)))
    assert sorted(c.gfn for c in done) == list(range(PAGES))
    assert all(c.op == IoOp.WRITE and c.err == 0 and c.start_ns <= c.end_ns for c in done)
    ram[:] = bytes(PAGES * PAGE_SIZE)
    done = run_all(engine, IoOp.READ, list(reversed(range(PAGES))))
    assert all(c.op == IoOp.READ and c.err == 0 for c in done)
    for gfn in range(PAGES):
        assert ram[gfn * PAGE_SIZE:(gfn + 1) * PAGE_SIZE] == pattern(gfn, 1), gfn
    assert engine.in_flight() == 0 and engine.queued() == 0


def test_a_read_with_readahead_reads_every_page_of_the_request(make_engine, ram):
    """A swap-in with read-ahead pages (one request) is handed to the kernel page by page, depth
    permitting, and every page ends in its own completion, byte-identical."""
    engine = make_engine(depth=2)
    fill(ram, 4)
    run_all(engine, IoOp.WRITE, list(range(PAGES)))
    ram[:] = bytes(PAGES * PAGE_SIZE)
    consumer = Consumer(engine)
    engine.submit(IoOp.READ, 3, (2, 4, 5, 7))
    done = [consumer.next() for _ in range(5)]
    assert sorted(c.gfn for c in done) == [2, 3, 4, 5, 7] and all(c.err == 0 for c in done)
    for gfn in (2, 3, 4, 5, 7):
        assert ram[gfn * PAGE_SIZE:(gfn + 1) * PAGE_SIZE] == pattern(gfn, 4), gfn
    assert ram[6 * PAGE_SIZE:7 * PAGE_SIZE] == bytes(PAGE_SIZE)
    assert engine.in_flight() == 0 and engine.queued() == 0


def test_read_past_the_end_of_the_swap_file_is_eio_and_leaves_the_page(make_engine, ram):
    engine = make_engine()
    fill(ram, 2)
    [c] = run_all(engine, IoOp.READ, [7])   # the file is empty: a short (zero-byte) read
    assert (c.op, c.gfn, c.err) == (IoOp.READ, 7, errno.EIO)
    assert ram[7 * PAGE_SIZE:8 * PAGE_SIZE] == pattern(7, 2)


def test_a_job_the_kernel_refuses_completes_with_its_errno(tmp_path, make_engine, ram):
    """A write on a read-only descriptor is refused by io_submit itself (EBADF): it is reported as a
    completion through the same eventfd, never lost and never a hang."""
    path = str(tmp_path / "ro-swap")
    SwapDevice(path, direct_io=True).close(unlink=False)
    ro = SwapDevice.__new__(SwapDevice)
    ro.path, ro.direct_io, ro.fd = path, True, os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        engine = make_engine(swap=ro)
        [c] = run_all(engine, IoOp.WRITE, [3])
        assert (c.op, c.gfn, c.err) == (IoOp.WRITE, 3, errno.EBADF)
        assert engine.in_flight() == 0
    finally:
        ro.close(unlink=False)


def test_reads_go_to_the_kernel_before_queued_writes(make_engine):
    engine = make_engine(depth=1)
    engine.submit(IoOp.WRITE, 0)   # the device is idle: goes at once
    engine.submit(IoOp.WRITE, 1)
    engine.submit(IoOp.READ, 2)
    engine.submit(IoOp.READ, 3)
    assert engine.in_flight() == 1 and engine.queued() == 3
    consumer = Consumer(engine)
    assert [(c.op, c.gfn) for c in (consumer.next() for _ in range(4))] == [
        (IoOp.WRITE, 0), (IoOp.READ, 2), (IoOp.READ, 3), (IoOp.WRITE, 1)]


def test_cancel_pending_takes_back_only_what_the_kernel_has_not_got(make_engine):
    engine = make_engine(depth=1)
    engine.submit(IoOp.READ, 0)
    engine.submit(IoOp.WRITE, 1)
    engine.submit(IoOp.READ, 2)
    assert engine.cancel_pending() == [(IoOp.READ, 2), (IoOp.WRITE, 1)]
    consumer = Consumer(engine)
    assert consumer.next().gfn == 0
    assert consumer.quiet_for(0.1)


def test_a_page_in_flight_keeps_the_ram_mapping_from_closing(direct_swap):
    """The kernel writes into guest RAM: while it may, the mapping cannot be unmapped under it."""
    mem = mmap.mmap(-1, PAGES * PAGE_SIZE)
    view = memoryview(mem)
    engine = AioEngine(direct_swap, page_of(view), 4)
    try:
        engine.submit(IoOp.WRITE, 5)
        view.release()
        with pytest.raises(BufferError):
            mem.close()
        Consumer(engine).next()
    finally:
        assert engine.stop() == []
    mem.close()   # the job is reaped: the page is no longer exported


def test_stop_waits_for_in_flight_io_and_closes_the_eventfd(direct_swap, ram):
    engine = AioEngine(direct_swap, page_of(ram), 8)
    for gfn in range(PAGES):
        engine.submit(IoOp.WRITE, gfn)
    assert engine.stop() == []
    assert engine.fileno() == -1 and engine.in_flight() == 0
    # the 8 jobs the kernel had ran; the rest, still queued, were dropped
    assert os.fstat(direct_swap.fd).st_size == 8 * PAGE_SIZE


@pytest.mark.parametrize("depth", [1, 3, 8])
def test_stress_every_job_is_reported_once_and_no_wake_up_is_lost(make_engine, ram, depth):
    engine = make_engine(depth=depth)
    fill(ram, 3)
    run_all(engine, IoOp.WRITE, list(range(PAGES)))
    seen: list[int] = []
    jobs = 3000
    for i in range(jobs):
        engine.submit(IoOp.READ if i % 5 else IoOp.WRITE, i % PAGES)
        if i % 16 == 15:
            seen += [c.gfn for c in engine.drain() if not c.err]
    while len(seen) < jobs:
        waited = time.monotonic()
        assert engine.wait(2.0), f"no wake-up with {jobs - len(seen)} jobs outstanding"
        assert time.monotonic() - waited < 2.0
        seen += [c.gfn for c in engine.drain() if not c.err]
    assert sorted(seen) == sorted(i % PAGES for i in range(jobs))
    # The kernel writes the eventfd per completion, so one reaped in the same drain() as an earlier
    # one may still leave a wake-up behind: it finds nothing, and after it all is quiet.
    if engine.wait(0.05):
        assert engine.drain() == []
    assert not engine.wait(0.05)


# -- choosing the engine ---------------------------------------------------------------------------

@pytest.mark.parametrize("direct, latency_ns, rules, expect", [
    (True, 0, [], "aio"),
    (True, 0, ["page-ready:duplicate"], "aio"),          # not a device fault
    (False, 0, [], "threads"),                           # page cache: io_submit would block
    (True, 100_000, [], "threads"),                      # modelled latency sleeps on a worker
    (True, 0, ["swap-read:eio:every=3"], "threads"),     # injected device faults run on a worker
    (True, 0, ["kill-host:mid-io:n=5"], "threads"),
])
def test_auto_takes_aio_exactly_where_it_can_run(tmp_path, ram, direct, latency_ns, rules, expect):
    dev = SwapDevice(str(tmp_path / "swap"), direct_io=direct)
    engine = open_io_engine("auto", dev, page_of(ram), 4, latency_ns, Chaos.from_specs(rules, "host"))
    try:
        assert engine.name == expect
        assert isinstance(engine, AioEngine if expect == "aio" else IoWorkers)
        engine.start()
    finally:
        assert engine.stop() == []
        dev.close()


def test_asking_for_aio_where_it_cannot_run_is_a_clear_error(tmp_path, ram):
    dev = SwapDevice(str(tmp_path / "swap"))
    try:
        with pytest.raises(ConfigError, match="--io-engine aio: .*--direct-io"):
            open_io_engine("aio", dev, page_of(ram), 4, 0, Chaos())
        engine = open_io_engine("threads", dev, page_of(ram), 4, 0, Chaos())
        assert engine.name == "threads"
        engine.start()
        assert engine.stop() == []
    finally:
        dev.close()


@pytest.mark.parametrize("extra, message", [
    ({}, "--direct-io"),
    ({"direct_io": True, "swap_latency_ns": 1000}, "--swap-latency"),
    ({"direct_io": True, "inject": ["swap-write:enospc"]}, "injected swap faults"),
])
def test_host_config_rejects_aio_it_cannot_run(tmp_path, shm_dir, extra, message):
    cfg = HostConfig(run_dir=str(tmp_path), guest_mem=1 << 20, host_mem=1 << 19, shm_dir=shm_dir,
                     io_engine="aio", **extra)
    with pytest.raises(ConfigError, match=f"--io-engine aio cannot run this configuration: .*{message}"):
        cfg.validate()


def test_host_config_rejects_an_unknown_engine(tmp_path, shm_dir):
    cfg = HostConfig(run_dir=str(tmp_path), guest_mem=1 << 20, host_mem=1 << 19, shm_dir=shm_dir,
                     io_engine="uring")
    with pytest.raises(ConfigError, match="--io-engine must be one of auto, threads, aio"):
        cfg.validate()
