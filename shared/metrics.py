"""Small statistics helpers shared by the daemons' reports."""
from __future__ import annotations

import statistics
from typing import Iterable


def percentiles_us(samples_ns: Iterable[int]) -> dict[str, float]:
    """p50 / p99 / max / mean (µs) and count of nanosecond samples."""
    ordered = sorted(samples_ns)
    if not ordered:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0, "count": 0}
    n = len(ordered)
    return {"p50": ordered[n // 2] / 1000, "p99": ordered[min(n - 1, int(n * 0.99))] / 1000,
            "max": ordered[-1] / 1000, "mean": statistics.fmean(ordered) / 1000, "count": n}


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
