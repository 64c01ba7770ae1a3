"""The queues every swap I/O engine keeps: jobs waiting to start, completions waiting for the
consumer and the eventfd that wakes it, and the bounded wait when the engine stops.

Jobs wait in two FIFO lanes, reads and writes; the next job is the oldest read if any, else the
oldest write. A job is a gfn, or a tuple of gfns for a read with readahead: one request, the
faulting page first. Completions an engine produces itself go to one deque, like KVM's done queue. The
consumer (the host's poll loop) says when it is about to block with `arm()`; a completion writes
the eventfd (eventfd(2)) only if it is the first since then, so while the consumer is awake and
working, completions queue up without a syscall and are taken as a batch by `drain()`. An engine
whose completions are signalled by someone else (the kernel, for native AIO) has `drain()` add
them in `_collect()`.

No lock: deque appends and pops are atomic, so engine threads take jobs and post completions
while the consumer submits and drains. With threads on this path every handoff is a GIL
handoff, and each one costs context switches.
"""
from __future__ import annotations

import os
import select
import time
from abc import abstractmethod
from collections import deque
from typing import Callable, Sequence

from host.swapio.device import SwapDevice
from host.swapio.engine import Completion, IoEngine, IoOp
from shared.sleeps import precise_sleeps  # re-exported: the engines import it from here

JOIN_BOUND_S = 5.0   # stop() waits this long for I/O under way; what outlives it is named, not awaited
READ, WRITE = IoOp.READ, IoOp.WRITE   # bound once: on Python 3.11 each IoOp.X lookup costs ~70 ns


def slot_runs(gfns: Sequence[int], slot_of: Callable[[int], int]) -> list[list[int]]:
    """`gfns` grouped into runs whose swap slots are consecutive, each run in slot order: what
    one preadv can read."""
    runs: list[list[int]] = []
    last = -2
    for gfn in sorted(gfns, key=slot_of):
        slot = slot_of(gfn)
        if slot == last + 1:
            runs[-1].append(gfn)
        else:
            runs.append([gfn])
        last = slot
    return runs


def seconds_left(deadline: float) -> float:
    """Seconds from now until `deadline` (a time.monotonic() value), 0 once it has passed."""
    return max(0.0, deadline - time.monotonic())


class QueuedEngine(IoEngine):
    """The queue half of an IoEngine; a subclass says how jobs run.

    It implements `start`, `_job_queued` (a job was queued: get it going), `_wind_down` (stopping),
    and if it has them `_collect` (completions signalled by someone else, the kernel for AIO) and
    `_release` (what to free once stopped). Jobs are taken with `_take_job`, given back with
    `_requeue_first`, and end with `_post` or in `_collect`.
    """

    def __init__(self, swap: SwapDevice, page_of: Callable[[int], memoryview],
                 slot_of: Callable[[int], int] | None = None, latency_ns: int = 0):
        self.swap = swap
        self.latency_ns = latency_ns     # the IoEngine latency knobs (host/swapio/engine.py)
        self.read_head_start_ns = 0
        self.page_of = page_of   # gfn -> that page of guest RAM, PAGE_SIZE bytes, page-aligned
        # gfn -> its swap slot, read when the job starts (the memory manager keeps a page's slot
        # while I/O on it is in flight); by default the slot is the gfn.
        self.slot_of = slot_of or (lambda gfn: gfn)
        self._reads: deque[int] = deque()
        self._writes: deque[int] = deque()
        self._done: deque[Completion] = deque()
        self._wake_pending = False   # the eventfd was written since the consumer's last arm()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    # -- the consumer's side (IoEngine) ------------------------------------------------------------
    def fileno(self) -> int:
        """The completion eventfd; -1 once stop() has closed it."""
        return self._wake_fd

    def submit(self, op: IoOp, gfn: int, ahead: Sequence[int] = ()) -> None:
        """Queue a job in its lane (with `ahead`: one request for all its pages), then let the
        engine start it."""
        self._lane(op).append((gfn, *ahead) if ahead else gfn)
        self._job_queued()

    def queued(self) -> int:
        """Requests in the lanes: not yet taken by the engine."""
        return len(self._reads) + len(self._writes)

    def arm(self) -> bool:
        """From now on the next posted completion writes the eventfd; True if some are queued."""
        # Clear the flag BEFORE looking at the queue: a completion appended after the look finds
        # the flag clear and writes the eventfd, so none is stranded.
        self._wake_pending = False
        return bool(self._done)

    def drain(self) -> list[Completion]:
        """The posted completions, oldest first, then those `_collect` adds. Consumer side only."""
        try:
            os.eventfd_read(self._wake_fd)   # before taking: a completion after this writes it again
        except BlockingIOError:
            pass
        posted = self._done   # only this side pops: what len() counts stays there
        done = [posted.popleft() for _ in range(len(posted))]
        self._collect(done)
        return done

    def wait(self, timeout_s: float) -> bool:
        """arm(), then select(2) on the eventfd for up to `timeout_s` seconds."""
        return self.arm() or bool(select.select([self._wake_fd], [], [], timeout_s)[0])

    def cancel_pending(self) -> list[tuple[IoOp, int]]:
        """Empty the lanes; return their jobs, reads first, each in submission order."""
        cancelled = []
        for op, lane in ((READ, self._reads), (WRITE, self._writes)):
            while lane:
                try:
                    job = lane.popleft()
                except IndexError:   # an engine thread took the last one meanwhile
                    break
                cancelled.extend((op, gfn) for gfn in (job if type(job) is tuple else (job,)))
        return cancelled

    def stop(self) -> list[str]:
        """Wind the engine down, waiting up to JOIN_BOUND_S; free it all unless something is stuck."""
        stuck = self._wind_down(time.monotonic() + JOIN_BOUND_S)
        if not stuck and self._wake_fd >= 0:
            # Only now: I/O still under way writes the eventfd when it ends, and closed earlier
            # its number could be reused by another file by then.
            self._release()
            os.close(self._wake_fd)
            self._wake_fd = -1
        return stuck

    # -- the engine's side -------------------------------------------------------------------------
    def _take_job(self) -> tuple[IoOp, int | tuple[int, ...]] | None:
        """The oldest queued read, else the oldest write; None if both lanes are empty. Several
        takers may race: the one whose pop finds the lane empty gets the next lane, or None.
        A read with readahead comes as a tuple of gfns."""
        try:
            return READ, self._reads.popleft()
        except IndexError:
            pass
        try:
            return WRITE, self._writes.popleft()
        except IndexError:
            return None

    def _requeue_first(self, op: IoOp, gfn: int) -> None:
        """Put a taken job back at the head of its lane, to be the next one taken."""
        self._lane(op).appendleft(gfn)

    def _lane(self, op: IoOp) -> deque[int]:
        return self._reads if op == READ else self._writes

    def _post(self, completion: Completion) -> None:
        """Hand a completion to the consumer: from any thread, without a lock."""
        self._done.append(completion)
        if not self._wake_pending:   # else the consumer is awake or woken: it takes this one too
            self._wake_pending = True
            os.eventfd_write(self._wake_fd, 1)

    def _post_many(self, completions: list[Completion]) -> None:
        """Hand several completions to the consumer at once: one wake-up at most."""
        self._done.extend(completions)
        if not self._wake_pending:
            self._wake_pending = True
            os.eventfd_write(self._wake_fd, 1)

    @abstractmethod
    def start(self) -> None:
        """Begin running jobs."""

    @abstractmethod
    def _job_queued(self) -> None:
        """A job was just put in a lane: start it now if the engine can."""

    @abstractmethod
    def _wind_down(self, deadline: float) -> list[str]:
        """Stop taking jobs and wait, until `deadline` (time.monotonic()) at the latest, for the
        I/O under way; name what is still running then."""

    def _collect(self, done: list[Completion]) -> None:
        """Append to `done` the completions signalled outside `_post`; none here."""

    def _release(self) -> None:
        """Free what the engine holds besides the eventfd, once nothing is in flight; nothing here."""
