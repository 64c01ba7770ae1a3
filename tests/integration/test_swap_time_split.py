"""A swap-in's time split into modelled latency and real device time, whichever engine ran it:
`swap.read_modelled_ns` holds the modelled latency of every page read (--swap-latency, as time
dilation scales it), and `swap.read_device_ns` only what the device (or the network) took."""
from __future__ import annotations

from tests.helpers import run_report

LATENCY_NS = 2_000_000
SYNC_READAHEAD = ["--mode", "sync", "--workload", "sequential", "--guest-mem", "8MiB", "--host-mem", "2MiB",
                  "--prefill", "--accesses", "1500", "--no-verify"]
REDIS_RUN = ["--guest-mem", "8MiB", "--host-mem", "2MiB", "--mode", "async", "--prefill", "--tasks", "4",
             "--accesses", "200", "--no-verify"]


def _split(r: dict, latency_ns: int) -> tuple[float, float]:
    """(modelled, device) ns per page read over the whole run, after checking that reads ran."""
    swap = r["swap"]
    assert r["ok"] and swap["reads"] > 100 and swap["read_errors"] == 0, swap
    return swap["read_modelled_ns"] / swap["reads"], swap["read_device_ns"] / swap["reads"]


def test_readahead_reads_book_their_latency_as_modelled_not_device_time(tmp_path, shm_leftovers):
    """The issue's synchronous sequential run, where nearly every swap-in is a request with read-
    ahead pages (the worker's request path): each page read carries the request's modelled 2 ms,
    so read_modelled_ns is about latency x reads, and the device time per read is well under it."""
    proc, r = run_report(tmp_path, *SYNC_READAHEAD, "--swap-latency", "2ms")
    assert proc.returncode == 0, proc.stderr
    assert r["swap"]["readahead"]["pages"] > r["swap"]["reads"] // 2, r["swap"]["readahead"]
    modelled, device = _split(r, LATENCY_NS)
    assert LATENCY_NS <= modelled < 2 * LATENCY_NS
    assert device < LATENCY_NS / 2


def test_redis_swap_ins_take_the_modelled_latency_and_book_it_as_modelled(tmp_path, shm_leftovers, redis_server):
    """With `--swap redis://…` and --swap-latency 2 ms (forty times a local round trip), a swap-in
    takes at least 2 ms, read_modelled_ns is about latency x reads, and the device time per
    read (what the round trip took beyond the latency) is well under it."""
    server = redis_server()
    proc, r = run_report(tmp_path, "--swap", server.url, *REDIS_RUN, "--swap-latency", "2ms")
    assert proc.returncode == 0, proc.stderr
    assert r["swap"]["swap_in_us"]["p50"] >= LATENCY_NS / 1000
    modelled, device = _split(r, LATENCY_NS)
    assert LATENCY_NS <= modelled < 2 * LATENCY_NS
    assert device < LATENCY_NS / 2


def test_dilation_reaches_the_redis_engine(tmp_path, shm_leftovers, redis_server):
    """--swap-latency 50us --dilation 20 on Redis: the host applies 1 ms, and the engine sleeps it
    (less the head start for the completion path, at most half): swap-ins take at least 500 µs,
    ten times the 50 µs, and the modelled time per read is at least that."""
    server = redis_server()
    proc, r = run_report(tmp_path, "--swap", server.url, *REDIS_RUN, "--swap-latency", "50us", "--dilation", "20")
    assert proc.returncode == 0, proc.stderr
    host = r["dilation"]["host"]
    assert host["swap_latency_ns"] == 1_000_000 and 0 < host["read_head_start_ns"] <= 500_000
    assert r["swap"]["swap_in_us"]["p50"] >= 500
    modelled, _device = _split(r, host["swap_latency_ns"])
    assert modelled >= 500_000
