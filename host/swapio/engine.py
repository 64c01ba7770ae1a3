"""What a swap I/O engine is to the host's poll loop: jobs (IoOp, gfn) go in, Completions come out.

Both engines, the worker threads (threads.py) and Linux native AIO (aio.py), are driven the same
way, by the `IoEngine` protocol below; host/swapio/choice.py picks one for a configuration.
"""
from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple, Protocol, Sequence


class IoOp(IntEnum):
    READ = 0    # swap-in: file -> RAM
    WRITE = 1   # write-back: RAM -> file


class Completion(NamedTuple):   # a tuple: built once per I/O, on the hot path
    op: IoOp
    gfn: int
    err: int          # 0 or an errno
    start_ns: int     # when the engine started the job (a worker took it, or the kernel got it)
    end_ns: int
    modelled_ns: int = 0   # of which modelled device time (--swap-latency, injected latency)


class IoEngine(Protocol):
    """Swap I/O as the host's poll loop drives it: page `gfn` of guest RAM to or from slot `gfn` of
    the swap file, each job ending in one Completion.

    The loop waits for completions on an eventfd (eventfd(2)) next to its socket, in this order:

        queued = engine.arm()        # about to block: from now on a completion wakes fileno()
        poll fileno() for 0 if queued else the timeout
        engine.drain()               # every completion so far, possibly none

    Every method is called from that one thread; an engine's own threads, if any, stay inside it.
    """
    name: str   # "threads" or "aio", as host.json and the report name the engine

    def fileno(self) -> int:
        """The eventfd to poll for completions; -1 once stop() has closed it."""

    def start(self) -> None:
        """Begin running jobs; jobs submitted before may wait for this."""

    def submit(self, op: IoOp, gfn: int, ahead: Sequence[int] = ()) -> None:
        """Queue a job. Queued reads (a vCPU or task waits for them) start before queued writes.
        `ahead` are pages read ahead with a READ of `gfn`: one request to the device (one
        modelled latency; neighbouring slots in one preadv), ending in a Completion per page."""

    def queued(self) -> int:
        """Jobs submitted and not yet started."""

    def arm(self) -> bool:
        """The consumer is about to block on fileno(): from now on a completion writes the eventfd.
        True if completions are waiting already (then do not block: drain them)."""

    def drain(self) -> list[Completion]:
        """Every completion reported so far, possibly none; resets the eventfd."""

    def wait(self, timeout_s: float) -> bool:
        """arm(), then block up to `timeout_s` seconds: True if a completion may be waiting."""

    def cancel_pending(self) -> list[tuple[IoOp, int]]:
        """Take back every job not yet started; return them as (op, gfn), one per page, reads first."""

    def stop(self) -> list[str]:
        """Stop, waiting a bounded time for the I/O under way; return a name for each I/O or
        thread that outlived the bound (none: everything is released)."""
