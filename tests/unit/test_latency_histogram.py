"""The host's record of swap-in latencies is bounded and accurate to its stated 1 %: a long run
does not grow it, and a STATS request or metrics scrape does not sort it."""
from __future__ import annotations

import random
import tracemalloc

import pytest

from host.memory import MemoryCounters
from shared.metrics import LATENCY_MAX_NS, percentiles_us


def test_a_swap_in_record_keeps_its_size_however_many_samples_it_takes():
    """200,000 swap-in latencies recorded in the memory manager's counters allocate next to
    nothing (a list of them would take several MiB), and all are counted."""
    counters = MemoryCounters()
    counters.swap_in_ns.record(1_000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(200_000):
            counters.swap_in_ns.record(50_000 + i)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 16 * 1024, f"recording 200,000 samples allocated {grown} bytes"
    assert len(counters.swap_in_ns) == 200_001


def test_its_percentiles_are_within_one_percent_of_the_exact_ones():
    """On a long-tailed sample (log-uniform, 1 µs to 100 ms) p50, p99, max and mean are each
    within 1 % of the exact figure of the same samples; the count is exact; the map has the
    keys the STATS schema gives `swap_in_us`."""
    rng = random.Random(25)
    samples = [int(10 ** rng.uniform(3, 8)) for _ in range(20_000)]
    hist = MemoryCounters().swap_in_ns
    for ns in samples:
        hist.record(ns)
    exact, got = percentiles_us(samples), hist.percentiles_us()
    assert got.keys() == exact.keys() and got["count"] == exact["count"] == 20_000
    for key in ("p50", "p99", "max", "mean"):
        assert got[key] == pytest.approx(exact[key], rel=0.01), key


def test_an_empty_record_and_a_sample_out_of_range():
    """No sample: zeros, as percentiles_us() gives. A sample past the range counts as its top,
    a negative one as 0: both counted, neither raises."""
    hist = MemoryCounters().swap_in_ns
    assert hist.percentiles_us() == percentiles_us(())
    hist.record(10 * LATENCY_MAX_NS)
    hist.record(-5)
    got = hist.percentiles_us()
    assert got["count"] == 2 and got["max"] == pytest.approx(LATENCY_MAX_NS / 1000, rel=0.01)
