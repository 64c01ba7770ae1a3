"""Small statistics helpers shared by the daemons' reports."""
from __future__ import annotations

import statistics
from typing import Iterable

from hdrh.histogram import HdrHistogram


def percentiles_us(samples_ns: Iterable[int]) -> dict[str, float]:
    """p50 / p99 / max / mean (µs) and count of nanosecond samples."""
    ordered = sorted(samples_ns)
    if not ordered:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0, "count": 0}
    n = len(ordered)
    return {"p50": ordered[n // 2] / 1000, "p99": ordered[min(n - 1, int(n * 0.99))] / 1000,
            "max": ordered[-1] / 1000, "mean": statistics.fmean(ordered) / 1000, "count": n}


LATENCY_MAX_NS = 3_600_000_000_000   # an hour: longer latencies count as this
LATENCY_DIGITS = 2                    # significant decimal digits: values within 1 %


class LatencyHistogram:
    """Latencies (ns) in a bounded histogram: HdrHistogram (the `hdrhistogram` package), 1 ns to
    LATENCY_MAX_NS at LATENCY_DIGITS significant decimal digits. Its size is fixed when it is
    made (4,608 counters of 8 bytes, 36 KiB) however many samples it takes, and recording one is
    O(1); its percentiles, max and mean are within 1 % (10^-LATENCY_DIGITS) of the exact value,
    and `count` is exact. A sample above LATENCY_MAX_NS counts as LATENCY_MAX_NS, one below 0 as 0.
    Not thread-safe: one thread records and reads."""

    def __init__(self) -> None:
        self._hist = HdrHistogram(1, LATENCY_MAX_NS, LATENCY_DIGITS)

    def record(self, ns: int) -> None:
        """Count one latency of `ns` nanoseconds."""
        self._hist.record_value(min(max(ns, 0), LATENCY_MAX_NS))

    def __len__(self) -> int:
        return self._hist.get_total_count()

    def __eq__(self, other: object) -> bool:
        """Same counts in every bucket (so, both empty)."""
        if not isinstance(other, LatencyHistogram):
            return NotImplemented
        return bytes(self._hist.counts) == bytes(other._hist.counts)

    def percentiles_us(self) -> dict[str, float]:
        """p50 / p99 / max / mean (µs, within 1 %) and count of the samples, as percentiles_us()."""
        h = self._hist
        n = h.get_total_count()
        if not n:
            return percentiles_us(())
        return {"p50": h.get_value_at_percentile(50) / 1000, "p99": h.get_value_at_percentile(99) / 1000,
                "max": h.get_max_value() / 1000, "mean": h.get_mean_value() / 1000, "count": n}


def process_resources(pid: int | None = None) -> dict[str, float]:
    import psutil
    proc = psutil.Process(pid)
    cpu = proc.cpu_times()
    figures = {"pid": proc.pid, "rss_bytes": proc.memory_info().rss,
               "cpu_user_s": cpu.user, "cpu_system_s": cpu.system}
    peak = peak_rss_bytes(proc.pid)
    if peak is not None:
        figures["peak_rss_bytes"] = peak
    return figures


def peak_rss_bytes(pid: int) -> int | None:
    """The kernel's high-water mark of the process's resident set (VmHWM), or None if unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
