"""The swap device and the pool of background I/O workers.

Slot `gfn` of the swap file holds page `gfn` (a sparse file: no slot table to keep). Workers do
real `preadv`/`pwritev` straight between the file and the RAM mapping (page-aligned, so
O_DIRECT works) after the modelled device latency, and report each completion to the poll loop
over an inproc PUSH socket: the workers never touch page state.
"""
from __future__ import annotations

import errno
import itertools
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Callable

import msgpack
import zmq

from apf.inject import Injector
from protocol.messages import PAGE_SIZE

COMPLETIONS_ENDPOINT = "inproc://io-completions"
WORKER_POLL_S = 0.1          # how often an idle worker checks for shutdown
JOIN_BOUND_S = 5.0           # a worker stuck longer than this in one I/O is reported, not awaited


class IoOp(IntEnum):
    READ = 0    # swap-in: file -> RAM
    WRITE = 1   # write-back: RAM -> file


class SwapIOError(Exception):
    """A swap read or write failed; the OSError is the cause."""


@dataclass(frozen=True)
class Completion:
    op: IoOp
    gfn: int
    err: int          # 0 or an errno
    start_ns: int     # when the worker took the job
    end_ns: int


class SwapDevice:
    """The swap file: one page-sized slot per guest page."""

    def __init__(self, path: str, direct_io: bool = False):
        self.path = path
        self.direct_io = direct_io
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC
        if direct_io:
            flags |= os.O_DIRECT
        try:
            self.fd = os.open(path, flags, 0o600)
        except OSError as exc:
            hint = " (the file system may not support O_DIRECT; drop --direct-io)" if exc.errno == errno.EINVAL else ""
            raise SwapIOError(f"cannot open swap file {path}: {exc.strerror}{hint}") from exc

    def read_into(self, gfn: int, dest: memoryview) -> None:
        got = os.preadv(self.fd, [dest], gfn * PAGE_SIZE)
        if got != PAGE_SIZE:
            raise OSError(errno.EIO, f"short swap read of page {gfn}: {got} bytes")

    def write_from(self, gfn: int, src: memoryview) -> None:
        put = os.pwritev(self.fd, [src], gfn * PAGE_SIZE)
        if put != PAGE_SIZE:
            raise OSError(errno.EIO, f"short swap write of page {gfn}: {put} bytes")

    def allocated_bytes(self) -> int:
        return os.fstat(self.fd).st_blocks * 512

    def discard_all(self) -> None:
        os.ftruncate(self.fd, 0)

    def close(self, unlink: bool = True) -> None:
        os.close(self.fd)
        if unlink:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class IoWorkers:
    """`depth` threads serving a priority queue: swap-ins (a vCPU or task waits) before write-backs."""

    def __init__(self, ctx: zmq.Context, swap: SwapDevice, page_of: Callable[[int], memoryview],
                 depth: int, latency_ns: int, inject: Injector | None = None):
        self.swap = swap
        self.inject = inject or Injector()
        self.page_of = page_of
        self.latency_s = latency_ns / 1e9
        self.jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._stop = threading.Event()
        self.ctx = ctx
        self.threads = [threading.Thread(target=self._run, name=f"io-{i}", daemon=True)
                        for i in range(depth)]
        self.busy = 0

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def submit(self, op: IoOp, gfn: int) -> None:
        self.jobs.put((int(op) == IoOp.WRITE, next(self._order), op, gfn))

    def cancel_pending(self) -> list[tuple[IoOp, int]]:
        """Take back every job no worker has started; return them."""
        cancelled = []
        while True:
            try:
                _, _, op, gfn = self.jobs.get_nowait()
            except queue.Empty:
                return cancelled
            cancelled.append((op, gfn))

    def stop(self) -> list[str]:
        """Stop the workers; return the names of any that did not finish within the bound."""
        self._stop.set()
        deadline = time.monotonic() + JOIN_BOUND_S
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self.threads if t.is_alive()]

    def _run(self) -> None:
        out = self.ctx.socket(zmq.PUSH)
        out.setsockopt(zmq.LINGER, 1000)
        out.connect(COMPLETIONS_ENDPOINT)
        try:
            while not self._stop.is_set():
                try:
                    _, _, op, gfn = self.jobs.get(timeout=WORKER_POLL_S)
                except queue.Empty:
                    continue
                out.send(msgpack.packb(self._do(op, gfn)))
        finally:
            out.close()

    def _do(self, op: IoOp, gfn: int) -> list[int]:
        start = time.monotonic_ns()
        reading = op == IoOp.READ
        if self.inject.fires("kill-host", "mid-io" if reading else "mid-eviction"):
            os.kill(os.getpid(), signal.SIGKILL)   # injected: the host dies with this I/O in flight
        delay_s = self.latency_s + self.inject.extra_latency_ns() / 1e9
        if delay_s:
            time.sleep(delay_s)
        err = self.inject.io_error("swap-read" if reading else "swap-write", gfn)
        try:
            if err:
                pass
            elif reading:
                self.swap.read_into(gfn, self.page_of(gfn))
            else:
                self.swap.write_from(gfn, self.page_of(gfn))
        except OSError as exc:
            err = exc.errno or errno.EIO
        return [int(op), gfn, err, start, time.monotonic_ns()]


def decode_completion(frame: bytes) -> Completion:
    op, gfn, err, start, end = msgpack.unpackb(frame)
    return Completion(IoOp(op), gfn, err, start, end)
