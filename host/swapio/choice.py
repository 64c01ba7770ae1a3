"""Which swap I/O engine runs a configuration: native AIO where it can, else the worker threads;
for a remote swap, its own pipelined engine.

The only module that knows the engines; everything else drives the one it is given through the
IoEngine protocol (host/swapio/engine.py).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from shared.chaos import Chaos
from host.swapio.aio import AioEngine, AioUnavailable
from host.swapio.device import SwapDevice
from protocol.errors import ConfigError
from host.swapio.engine import IoEngine
from host.swapio.threads import DEVICE_FAULT_TARGETS, IoWorkers

log = logging.getLogger("apf.host")

IO_ENGINES = ("auto", "threads", "aio")   # a remote swap runs "redis" (host/swapio/remote_io.py)


def why_threads(direct_io: bool, latency_ns: int, chaos: Chaos) -> str | None:
    """Why this configuration needs the worker threads rather than native AIO; None if it does not."""
    if not direct_io:
        return "native AIO needs --direct-io (on the page cache, io_submit reads synchronously)"
    if latency_ns:
        return "the modelled --swap-latency sleeps on a worker thread"
    if chaos.targets(DEVICE_FAULT_TARGETS):
        return "injected swap faults are taken on a worker thread"
    return None


def open_io_engine(engine: str, swap: Any, page_of: Callable[[int], memoryview], depth: int,
                   latency_ns: int, chaos: Chaos, slot_of: Callable[[int], int] | None = None) -> IoEngine:
    """The swap I/O engine, not yet started: `aio` (kernel AIO, no threads), `threads`, or `auto`:
    aio where it can run this configuration, else threads. `page_of(gfn)` is that page of guest
    RAM; `depth` how many I/O run at once; `latency_ns` the modelled device latency per I/O.
    `slot_of(gfn)` is the swap slot of a page with I/O queued (default: the gfn).
    Raises ConfigError if `aio` was asked for a configuration it cannot run, and AioUnavailable
    if this machine cannot run it. A remote swap (host/swapio/remote.py) has its own engine,
    `redis` (host/swapio/remote_io.py), whatever `engine` says (the configuration allows only auto)."""
    if not isinstance(swap, SwapDevice):
        from host.swapio.remote_io import RedisEngine   # the client only when it is needed
        return RedisEngine(swap, page_of, depth, latency_ns, chaos, slot_of)
    reason = why_threads(swap.direct_io, latency_ns, chaos)
    if engine == "aio" and reason:
        raise ConfigError(f"--io-engine aio: {reason}")
    if engine == "threads" or reason:
        return IoWorkers(swap, page_of, depth, latency_ns, chaos, slot_of)
    try:
        return AioEngine(swap, page_of, depth, slot_of)
    except AioUnavailable as exc:
        if engine == "aio":
            raise AioUnavailable(f"--io-engine aio: {exc}") from exc
        log.info("swap I/O on worker threads: %s", exc)
        return IoWorkers(swap, page_of, depth, latency_ns, chaos, slot_of)
