"""What a swap I/O engine is to the host's poll loop: jobs (IoOp, gfn) go in, Completions come out.

Every engine, the worker threads (threads.py), Linux native AIO (aio.py) and Redis (remote_io.py),
is driven the same way, by the `IoEngine` protocol below; host/swapio/choice.py picks one for a
configuration.
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
    # Of end_ns - start_ns, the modelled device time (--swap-latency, injected latency): the rest
    # is real device (or network) time. Every completion path fills it, 0 where none was modelled.
    modelled_ns: int


class IoEngine(Protocol):
    """Swap I/O as the host's poll loop drives it: page `gfn` of guest RAM to or from slot `gfn` of
    the swap file, each job ending in one Completion.

    The loop waits for completions on an eventfd (eventfd(2)) next to its socket, in this order:

        queued = engine.arm()        # about to block: from now on a completion wakes fileno()
        poll fileno() for 0 if queued else the timeout
        engine.drain()               # every completion so far, possibly none

    Every method is called from that one thread; an engine's own threads, if any, stay inside it.
    """
    name: str   # "threads", "aio" or "redis", as host.json and the report name the engine
    # The latency knobs, set by the host between jobs (time dilation scales them, host/daemon.py);
    # a job reads them when it starts. An engine that cannot model latency (aio) keeps them 0:
    # host/swapio/choice.py never gives it a configuration with a latency.
    latency_ns: int           # modelled device latency of one request (--swap-latency, dilated)
    read_head_start_ns: int   # a swap-in's modelled latency ends this much early (0 without dilation)

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
