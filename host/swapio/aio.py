"""Swap I/O through Linux native AIO (io_submit(2)), for an O_DIRECT swap file on a real device.

An IoEngine (host/swapio/engine.py) on the shared queues (host/swapio/queues.py), with no
threads: the host's poll loop hands each read or write to the kernel with its own `io_submit`, up
to `depth` at once; the kernel writes the completion eventfd (IOCB_FLAG_RESFD, eventfd(2)) as
each one ends, and `drain()` reaps them all with one `io_getevents` (io_getevents(2)). This is how
QEMU's `aio=native` drives a disk. With worker threads, every completion is a GIL handoff between
a worker and the loop; here the loop never waits on another Python thread. As the kernel writes
the eventfd per completion, a wake-up may find nothing: its completion was reaped by the drain()
before, just after being written. A job io_submit refuses is posted to the shared done queue, as
a worker would post its completion, and reported by the next drain().

The kernel reads and writes guest RAM directly (the RAM mapping is page-aligned, as O_DIRECT
needs); each in-flight job keeps its page's buffer exported, so the mapping cannot be closed under
the kernel's feet. Only plain device I/O runs here: modelled latency and injected faults need a
thread to sleep or fail in, so `open_io_engine` gives those configurations the worker pool.

The three syscalls are called through ctypes (which releases the GIL around them). Wire layouts,
from <linux/aio_abi.h>, little-endian 64-bit:

    struct iocb (64 bytes)              struct io_event (32 bytes)
      u64 aio_data      our slot index    u64 data   the iocb's aio_data
      u32 aio_key, aio_rw_flags           u64 obj    the iocb's address
      u16 aio_lio_opcode  0 read 1 write  s64 res    bytes moved, or -errno
      s16 aio_reqprio                     s64 res2
      u32 aio_fildes
      u64 aio_buf, aio_nbytes
      s64 aio_offset
      u64 aio_reserved2
      u32 aio_flags     IOCB_FLAG_RESFD
      u32 aio_resfd     the eventfd
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys
import time
from typing import Callable

from host.swapio.device import SwapDevice
from host.swapio.engine import Completion, IoOp
from host.swapio.queues import QueuedEngine, seconds_left
from protocol.messages import PAGE_SIZE
from protocol.errors import AioUnavailable

IOCB_FLAG_RESFD = 1
SYSCALLS = {           # io_setup, io_destroy, io_getevents, io_submit
    "x86_64": (206, 207, 208, 209),
    "aarch64": (0, 1, 4, 2),
}


class Iocb(ctypes.Structure):
    _fields_ = [("aio_data", ctypes.c_uint64), ("aio_key", ctypes.c_uint32), ("aio_rw_flags", ctypes.c_uint32),
                ("aio_lio_opcode", ctypes.c_uint16), ("aio_reqprio", ctypes.c_int16),
                ("aio_fildes", ctypes.c_uint32), ("aio_buf", ctypes.c_uint64), ("aio_nbytes", ctypes.c_uint64),
                ("aio_offset", ctypes.c_int64), ("aio_reserved2", ctypes.c_uint64),
                ("aio_flags", ctypes.c_uint32), ("aio_resfd", ctypes.c_uint32)]


class IoEvent(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64), ("res", ctypes.c_int64),
                ("res2", ctypes.c_int64)]


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


assert ctypes.sizeof(Iocb) == 64 and ctypes.sizeof(IoEvent) == 32


def _syscalls() -> tuple[Callable[..., int], tuple[int, int, int, int]]:
    if sys.byteorder != "little" or platform.machine() not in SYSCALLS:
        raise AioUnavailable(f"native AIO is wired here for little-endian {' and '.join(SYSCALLS)} only, "
                             f"not {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    call = libc.syscall
    call.restype = ctypes.c_long
    return call, SYSCALLS[platform.machine()]


class AioEngine(QueuedEngine):
    """Up to `depth` swap I/O in the kernel at once; reads (a vCPU or task waits) go before writes."""
    name = "aio"

    def __init__(self, swap: SwapDevice, page_of: Callable[[int], memoryview], depth: int,
                 slot_of: Callable[[int], int] | None = None):
        self.depth = depth
        self._syscall, (self._nr_setup, self._nr_destroy, self._nr_getevents, self._nr_submit) = _syscalls()
        self._ctx = ctypes.c_ulong(0)
        if self._syscall(self._nr_setup, ctypes.c_long(depth), ctypes.byref(self._ctx)) < 0:
            err = ctypes.get_errno()
            raise AioUnavailable(f"io_setup({depth}) failed: {os.strerror(err)}"
                                 + (" (raise /proc/sys/fs/aio-max-nr)" if err == errno.EAGAIN else ""))
        super().__init__(swap, page_of, slot_of)   # only now: the eventfd is not left open if io_setup fails
        self._iocbs = (Iocb * depth)()
        for slot, iocb in enumerate(self._iocbs):
            iocb.aio_data = slot
            iocb.aio_fildes = swap.fd
            iocb.aio_nbytes = PAGE_SIZE
            iocb.aio_flags = IOCB_FLAG_RESFD
            iocb.aio_resfd = self._wake_fd
        # io_submit's argument per slot: an array of one pointer, to that slot's iocb
        self._submit_arg = [(ctypes.c_void_p * 1)(ctypes.addressof(iocb)) for iocb in self._iocbs]
        self._events = (IoEvent * depth)()
        self._no_wait = Timespec(0, 0)
        # Per slot, while in flight: (op, gfn, start_ns, the exported page buffer)
        self._slots: list[tuple[IoOp, int, int, object] | None] = [None] * depth
        self._free = list(range(depth))

    def start(self) -> None:
        """Nothing to start: the kernel is the worker."""

    def in_flight(self) -> int:
        """Jobs the kernel has and has not yet reported done."""
        return self.depth - len(self._free)

    # -- internals -------------------------------------------------------------------------------
    def _job_queued(self) -> None:
        if self._free:
            self._issue()

    def _collect(self, done: list[Completion]) -> None:
        """Reap what the kernel has finished, with one io_getevents that never blocks, then hand
        it the next jobs."""
        if self.in_flight():
            got = self._syscall(self._nr_getevents, self._ctx, ctypes.c_long(0), ctypes.c_long(self.depth),
                                self._events, ctypes.byref(self._no_wait))
            if got < 0:
                err = ctypes.get_errno()
                if err != errno.EINTR:
                    raise OSError(err, f"io_getevents: {os.strerror(err)}")
                os.eventfd_write(self._wake_fd, 1)   # a signal came first: the next poll wakes, and reaps
                got = 0
            self._reap(got, done)
        self._issue()

    def _wind_down(self, deadline: float) -> list[str]:
        """Drop the queued jobs and wait, until `deadline` at the latest, for those in the kernel."""
        self.cancel_pending()
        while self.in_flight() and seconds_left(deadline) > 0:
            if self.wait(seconds_left(deadline)):
                self.drain()
        # Still in flight: io_destroy would block until they end, so it is left, with the
        # eventfd, to the process's exit.
        return [f"aio: {self.in_flight()} I/O in flight"] if self.in_flight() else []

    def _release(self) -> None:
        self._syscall(self._nr_destroy, self._ctx)

    def _issue(self) -> None:
        """Hand queued jobs to the kernel, reads first, as many as there are free slots.

        One io_submit per job: a batch of more than two is plugged in the block layer until the
        last iocb is set up (fs/aio.c, AIO_PLUG_THRESHOLD), so the device would sit idle for the
        whole batch; measured here, batching 8 reached 80 % of raw threads, one by one 91 %."""
        free, take_job = self._free, self._take_job
        iocbs, slots, page_of = self._iocbs, self._slots, self.page_of
        syscall, nr_submit, ctx, one = self._syscall, self._nr_submit, self._ctx, ctypes.c_long(1)
        while free and (job := take_job()) is not None:
            op, gfn = job
            if type(gfn) is tuple:
                # One iocb per page, submitted back to back: the block layer merges neighbours.
                self._reads.extendleft(reversed(gfn[1:]))
                gfn = gfn[0]
            slot = free.pop()
            buf = ctypes.c_char.from_buffer(page_of(gfn))   # exported until the kernel is done
            iocb = iocbs[slot]   # the fields that never change were set in __init__
            iocb.aio_lio_opcode = op
            iocb.aio_buf = ctypes.addressof(buf)
            iocb.aio_offset = self.slot_of(gfn) * PAGE_SIZE
            slots[slot] = (op, gfn, time.monotonic_ns(), buf)
            if syscall(nr_submit, ctx, one, self._submit_arg[slot]) != 1:
                self._refused(slot, ctypes.get_errno())

    def _refused(self, slot: int, err: int) -> None:
        """The kernel did not take this slot's job: requeue it (EAGAIN with I/O in flight: room
        comes when they end) or fail it, posted like any completion for the next drain()."""
        op, gfn, start, _buf = self._slots[slot]
        self._slots[slot] = None
        self._free.append(slot)
        if err == errno.EAGAIN and self.in_flight():
            self._requeue_first(op, gfn)
            return
        self._post(Completion(op, gfn, err or errno.EIO, start, time.monotonic_ns(), 0))

    def _reap(self, got: int, done: list[Completion]) -> None:
        now = time.monotonic_ns()
        events, slots, free = self._events, self._slots, self._free
        for i in range(got):
            ev = events[i]
            slot = ev.data
            op, gfn, start, _buf = slots[slot]
            slots[slot] = None   # drops the page export
            free.append(slot)
            res = ev.res
            err = -res if res < 0 else (0 if res == PAGE_SIZE else errno.EIO)   # short: past the file's end
            done.append(Completion(op, gfn, err, start, now, 0))   # no modelled time here
