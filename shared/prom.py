"""What both daemons' Prometheus endpoints share: the `--metrics [ADDR:]PORT` address, the HTTP
server (prometheus_client's, on a registry of the daemon's own), counters kept monotonic across
the host's per-guest resets, and histogram buckets.

The daemons' counters live in their own threads (the host's poll loop, the guest's vCPUs); a
scrape runs on the HTTP server's thread and only reads a snapshot (host) or plain integers
(guest), never the sockets.
"""
from __future__ import annotations

import ipaddress
from typing import Iterable

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import HistogramMetricFamily

DEFAULT_ADDR = "127.0.0.1"       # loopback unless an address is given
# Fault latency: a trap is a ZeroMQ round trip (~100-250 µs) up to a swap-in under load.
FAULT_BUCKETS = (50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 20e-3, 50e-3, 0.1, 0.5, 1.0)
SWAP_IN_BUCKETS = (10e-6, 50e-6, 100e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 50e-3, 0.1, 1.0)


def parse_listen(text: str) -> tuple[str, int]:
    """`PORT`, `ADDR:PORT` or `[IPv6]:PORT` -> (address, port); ValueError naming the forms."""
    addr, sep, port = str(text).rpartition(":")
    addr = addr.strip("[]") if sep else DEFAULT_ADDR
    try:
        ipaddress.ip_address(addr if addr != "localhost" else DEFAULT_ADDR)
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ValueError(f"'{text}' is not a metrics address: give PORT (on {DEFAULT_ADDR}) or ADDR:PORT "
                         "with an IP address (e.g. 9464, 127.0.0.1:9464, 0.0.0.0:9464)")
    return addr, number


class Endpoint:
    """An HTTP server for `registry`'s metrics at http://ADDR:PORT/metrics (port 0: one the kernel
    picks; `port` says which)."""

    def __init__(self, listen: str, registry: CollectorRegistry):
        addr, port = parse_listen(listen)
        self.server, self.thread = start_http_server(port, addr, registry=registry)
        self.addr, self.port = addr, self.server.server_port

    @property
    def url(self) -> str:
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()       # bounded: the serving thread checks every 0.5 s
        self.server.server_close()
        self.thread.join(timeout=2.0)


class Monotonic:
    """Counters that only grow, made from counts a daemon resets (the host resets its counters when
    a guest leaves): each value seen adds what it grew by since the last, or itself after a reset."""

    def __init__(self):
        self._last: dict[tuple, float] = {}
        self._total: dict[tuple, float] = {}

    def update(self, key: tuple, value: float) -> float:
        last = self._last.get(key, 0)
        self._total[key] = self._total.get(key, 0) + (value - last if value >= last else value)
        self._last[key] = value
        return self._total[key]

    def reset(self) -> None:
        """The source's counters restart from zero (after their last values were updated)."""
        self._last = dict.fromkeys(self._last, 0)

    def totals(self) -> dict[tuple, float]:
        return dict(self._total)


class SampleHistogram:
    """A histogram fed from lists of nanosecond samples that only grow: each update takes the new
    tail of each list (by a cursor per list), so a scrape costs only the samples since the last."""

    def __init__(self, buckets: Iterable[float]):
        self.bounds = tuple(buckets)
        self._cursor: dict[object, int] = {}
        self.counts: dict[tuple[str, ...], list[int]] = {}   # labels -> per bucket (cumulative at export)
        self.sums: dict[tuple[str, ...], float] = {}

    def update(self, labels: tuple[str, ...], key: object, samples_ns) -> None:
        start = self._cursor.get(key, 0)
        end = len(samples_ns)
        counts = self.counts.setdefault(labels, [0] * (len(self.bounds) + 1))
        total = 0
        for ns in samples_ns[start:end]:
            seconds = ns / 1e9
            total += seconds
            for i, bound in enumerate(self.bounds):
                if seconds <= bound:
                    counts[i] += 1
                    break
            else:
                counts[-1] += 1
        self.sums[labels] = self.sums.get(labels, 0.0) + total
        self._cursor[key] = end

    def family(self, name: str, doc: str, label_names: list[str]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=label_names)
        for labels, counts in sorted(self.counts.items()):
            cumulative, running = [], 0
            for bound, count in zip((*map(str, self.bounds), "+Inf"), counts):
                running += count
                cumulative.append((bound, running))
            family.add_metric(list(labels), cumulative, self.sums.get(labels, 0.0))
        return family
