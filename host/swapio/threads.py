"""Swap I/O on a pool of worker threads: the engine for the page cache, modelled latency and
injected device faults, which native AIO cannot run (host/swapio/choice.py).

Workers do real `preadv`/`pwritev` through the SwapDevice, straight between the file and the RAM
mapping, after the modelled device latency (and any injected device fault); the workers never
touch page state.

The modelled latency runs, as a device's does, from the request's submission or from the moment
its worker (one of `depth` channels) became free, whichever is later: the hand-off to a sleeping
worker thread is inside it, not added to it. The workers sleep with a timer slack of 1 ns
(prctl(2) PR_SET_TIMERSLACK; Linux's default, 50 µs, made a 720 µs sleep overshoot by ~70 µs
here, ~20 µs with it), so that the latency applied is the latency given. Both matter under time
dilation, where a fixed overshoot in emulator time is not dilated and shrinks on the
real-equivalent clock. Jobs and completions go through the shared queues (host/swapio/queues.py): a
worker posts each completion to the done deque, and only the first one after the consumer's
`arm()` writes the eventfd.
"""
from __future__ import annotations

import errno
import os
import queue
import signal
import threading
import time
from typing import Callable

from shared.chaos import Chaos
from host.swapio.device import SwapDevice
from host.swapio.engine import Completion, IoOp
from host.swapio.queues import QueuedEngine, precise_sleeps, seconds_left, slot_runs

WORKER_POLL_S = 0.1          # how often an idle worker checks for shutdown
DEVICE_FAULT_TARGETS = ("swap-read", "swap-write", "swap-latency", "kill-host")   # need a worker thread


class IoWorkers(QueuedEngine):
    """`depth` threads doing swap I/O; swap-ins (a vCPU or task waits) go before write-backs.

    Each submit also puts one token in a SimpleQueue, the only thing an idle worker blocks on; a
    worker holding a token takes the next job from the lanes (none: the job was cancelled, drop
    the token). A worker stuck in one I/O past the join bound is named by stop(), not awaited.
    """
    name = "threads"

    def __init__(self, swap: SwapDevice, page_of: Callable[[int], memoryview], depth: int,
                 latency_ns: int, chaos: Chaos | None = None, slot_of: Callable[[int], int] | None = None):
        super().__init__(swap, page_of, slot_of, latency_ns)
        self.chaos = chaos or Chaos()
        self._tokens: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, name=f"io-{i}", daemon=True)
                        for i in range(depth)]

    def start(self) -> None:
        """Start the worker threads."""
        for t in self.threads:
            t.start()

    def _job_queued(self) -> None:
        # After the append: a worker with a token always finds its job. The token is the time
        # the job was queued, where its modelled latency starts if a worker is free.
        self._tokens.put(time.monotonic_ns())

    def _wind_down(self, deadline: float) -> list[str]:
        """Stop the workers; the names of any still running at `deadline`."""
        self._stop.set()
        for _ in self.threads:
            self._tokens.put(0)      # wake idle workers now rather than at their next poll
        for t in self.threads:
            t.join(seconds_left(deadline))
        return [t.name for t in self.threads if t.is_alive()]

    def _run(self) -> None:
        # Everything per job is bound to a local first: with `depth` threads taking turns at the
        # GIL, every attribute lookup on this path is time the other workers wait.
        take_token, take_job, post = self._tokens.get, self._take_job, self._post
        transfer = {IoOp.READ: self.swap.read_into, IoOp.WRITE: self.swap.write_from}
        page_of, slot_of, monotonic_ns, stopped = self.page_of, self.slot_of, time.monotonic_ns, self._stop.is_set
        modelled = bool(self.chaos.rules) or self.latency_ns > 0
        if modelled:
            precise_sleeps()
        free_since = monotonic_ns()          # this channel's previous job ended then
        while not stopped():
            try:
                queued_ns = take_token(timeout=WORKER_POLL_S)
            except queue.Empty:
                continue
            job = take_job()
            if job is None:
                continue   # its job was cancelled (or this is stop()'s wake-up)
            op, gfn = job
            start = max(queued_ns, free_since) if modelled else monotonic_ns()
            if type(gfn) is tuple:
                self._run_request(gfn, modelled, start)
                free_since = monotonic_ns()
                continue
            err = self._model_device(op, gfn, start) if modelled else 0
            device = monotonic_ns()
            if not err:
                try:
                    transfer[op](slot_of(gfn), page_of(gfn))
                except OSError as exc:
                    err = exc.errno or errno.EIO
            free_since = monotonic_ns()
            post(Completion(op, gfn, err, start, free_since, device - start))

    def _run_request(self, gfns: tuple[int, ...], modelled: bool, start: int) -> None:
        """A swap-in with readahead: one modelled device latency for the request, then each run
        of consecutive slots in one preadv; a Completion per page, each with the request's
        modelled time."""
        errs = dict.fromkeys(gfns, 0)
        if modelled:
            errs[gfns[0]] = self._model_device(IoOp.READ, gfns[0], start)
            for gfn in gfns[1:]:
                errs[gfn] = self.chaos.io_error("swap-read", gfn) if self.chaos.rules else 0
        device = time.monotonic_ns()
        for run in slot_runs([g for g in gfns if not errs[g]], self.slot_of):
            try:
                self.swap.read_run(self.slot_of(run[0]), [self.page_of(g) for g in run])
            except OSError as exc:
                for g in run:
                    errs[g] = exc.errno or errno.EIO
        end = time.monotonic_ns()
        for gfn in gfns:
            self._post(Completion(IoOp.READ, gfn, errs[gfn], start, end, device - start))

    def _model_device(self, op: IoOp, gfn: int, start_ns: int) -> int:
        """The modelled latency (counted from `start_ns`, a time.monotonic_ns() value) and the
        injected faults of one job; an errno to fail it with, or 0."""
        chaos = self.chaos
        reading = op == IoOp.READ
        delay_ns = self.latency_ns - (self.read_head_start_ns if reading else 0)
        if chaos.rules:
            if chaos.fires("kill-host", "mid-io" if reading else "mid-eviction"):
                os.kill(os.getpid(), signal.SIGKILL)   # injected: the host dies with this I/O in flight
            delay_ns += chaos.extra_latency_ns()
        left_ns = delay_ns - (time.monotonic_ns() - start_ns)
        if left_ns > 0:
            time.sleep(left_ns / 1e9)
        return chaos.io_error("swap-read" if reading else "swap-write", gfn) if chaos.rules else 0
