"""Swap I/O on a pool of worker threads: the engine for the page cache, modelled latency and
injected device faults, which native AIO cannot run (host/swapio/choice.py).

Workers do real `preadv`/`pwritev` through the SwapDevice, straight between the file and the RAM
mapping, after the modelled device latency (and any injected device fault); the workers never
touch page state.

Completions go to one shared deque, like KVM's done queue. The consumer (the host's poll loop)
says when it is about to block with `IoWorkers.arm()`; a worker writes the pool's eventfd only
for the first completion after that, so while the consumer is awake and working, completions
queue up without a syscall and are taken as a batch by `IoWorkers.drain()`. No lock either
(deque appends and pops are atomic): on this path every handoff between threads is a GIL
handoff, and each one costs context switches.
"""
from __future__ import annotations

import errno
import os
import queue
import select
import signal
import threading
import time
from collections import deque
from typing import Callable

from apf.inject import Injector
from host.swapio.device import SwapDevice
from host.swapio.engine import Completion, IoOp

WORKER_POLL_S = 0.1          # how often an idle worker checks for shutdown
JOIN_BOUND_S = 5.0           # a worker stuck longer than this in one I/O is reported, not awaited
DEVICE_FAULT_TARGETS = ("swap-read", "swap-write", "swap-latency", "kill-host")   # need a worker thread


class IoWorkers:
    """`depth` threads doing swap I/O; swap-ins (a vCPU or task waits) go before write-backs.

    Queued jobs wait in two FIFO lanes, reads and writes. Each submit also puts one token in a
    SimpleQueue, the only thing an idle worker blocks on; a worker holding a token takes the
    oldest read if any, else the oldest write (none: the job was cancelled, drop the token).
    """
    name = "threads"

    def __init__(self, swap: SwapDevice, page_of: Callable[[int], memoryview], depth: int,
                 latency_ns: int, inject: Injector | None = None):
        self.swap = swap
        self.inject = inject or Injector()
        self.page_of = page_of
        self.latency_s = latency_ns / 1e9
        self._reads: deque[int] = deque()
        self._writes: deque[int] = deque()
        self._tokens: queue.SimpleQueue = queue.SimpleQueue()
        self._done: deque[Completion] = deque()
        self._wake_pending = False   # the eventfd was written since the consumer's last arm()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, name=f"io-{i}", daemon=True)
                        for i in range(depth)]

    def fileno(self) -> int:
        """The eventfd: call arm(), poll it unless arm() said completions are queued, then drain()."""
        return self._wake_fd

    def arm(self) -> bool:
        """The consumer is about to block on fileno(): from now on a completion writes the eventfd.
        True if completions are queued already (then do not block: drain them)."""
        # Clear the flag BEFORE looking at the queue: a completion appended after the look finds
        # the flag clear and writes the eventfd, so none is stranded.
        self._wake_pending = False
        return bool(self._done)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def submit(self, op: IoOp, gfn: int) -> None:
        (self._reads if op == IoOp.READ else self._writes).append(gfn)
        self._tokens.put(None)   # after the append: a worker with a token always finds its job

    def queued(self) -> int:
        """Jobs no worker has taken yet."""
        return len(self._reads) + len(self._writes)

    def cancel_pending(self) -> list[tuple[IoOp, int]]:
        """Take back every job no worker has started; return them, reads first."""
        cancelled = []
        for op, lane in ((IoOp.READ, self._reads), (IoOp.WRITE, self._writes)):
            while lane:
                try:
                    cancelled.append((op, lane.popleft()))
                except IndexError:   # a worker took the last one meanwhile
                    break
        return cancelled   # their tokens stay queued; a worker drops each one

    def drain(self) -> list[Completion]:
        """Every completion reported so far, oldest first (possibly none). Consumer side only."""
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass
        done = self._done   # only this side pops: what len() counts stays there
        return [done.popleft() for _ in range(len(done))]

    def wait(self, timeout_s: float) -> bool:
        """Block until a completion may be waiting (True) or for `timeout_s` (False)."""
        return self.arm() or bool(select.select([self._wake_fd], [], [], timeout_s)[0])

    def stop(self) -> list[str]:
        """Stop the workers; return the names of any that did not finish within the bound."""
        self._stop.set()
        for _ in self.threads:
            self._tokens.put(None)   # wake idle workers now rather than at their next poll
        deadline = time.monotonic() + JOIN_BOUND_S
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self.threads if t.is_alive()]
        if not stuck and self._wake_fd >= 0:
            # A stuck worker still writes the eventfd when its I/O ends: closing it then could
            # hit a reused fd number, so it is left open in that case.
            os.close(self._wake_fd)
            self._wake_fd = -1
        return stuck

    def _run(self) -> None:
        # Everything per job is bound to a local first: with `depth` threads taking turns at the
        # GIL, every attribute lookup on this path is time the other workers wait.
        take_token, reads, writes, done = self._tokens.get, self._reads, self._writes, self._done
        transfer = {IoOp.READ: self.swap.read_into, IoOp.WRITE: self.swap.write_from}
        page_of, monotonic_ns, stopped = self.page_of, time.monotonic_ns, self._stop.is_set
        modelled = bool(self.inject.rules) or self.latency_s > 0
        read, write = IoOp.READ, IoOp.WRITE
        while not stopped():
            try:
                take_token(timeout=WORKER_POLL_S)
            except queue.Empty:
                continue
            try:
                op, gfn = read, reads.popleft()
            except IndexError:
                try:
                    op, gfn = write, writes.popleft()
                except IndexError:
                    continue   # its job was cancelled (or this is stop()'s wake-up)
            start = monotonic_ns()
            err = self._model_device(op, gfn) if modelled else 0
            if not err:
                try:
                    transfer[op](gfn, page_of(gfn))
                except OSError as exc:
                    err = exc.errno or errno.EIO
            done.append(Completion(op, gfn, err, start, monotonic_ns()))
            if not self._wake_pending:   # else the consumer is awake or woken: it takes this one too
                self._wake_pending = True
                os.eventfd_write(self._wake_fd, 1)

    def _model_device(self, op: IoOp, gfn: int) -> int:
        """The modelled latency and the injected faults of one job; an errno to fail it with, or 0."""
        inject = self.inject
        reading = op == IoOp.READ
        if inject.rules:
            if inject.fires("kill-host", "mid-io" if reading else "mid-eviction"):
                os.kill(os.getpid(), signal.SIGKILL)   # injected: the host dies with this I/O in flight
            delay_s = self.latency_s + inject.extra_latency_ns() / 1e9
            if delay_s:
                time.sleep(delay_s)
            return inject.io_error("swap-read" if reading else "swap-write", gfn)
        time.sleep(self.latency_s)
        return 0
