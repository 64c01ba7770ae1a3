"""Injected swap I/O faults: read errors poison a page, write errors put the host over budget,
latency spikes only slow things down. No data is ever silently corrupted."""
import pytest

from tests.helpers import run_report

BASE = ["--guest-mem", "4MiB", "--host-mem", "1MiB", "--accesses", "800", "--swap-latency", "200us"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_swap_in_eio_kills_only_the_faulting_task(tmp_path, shm_leftovers, mode):
    """One failing swap-in: the task that needed the page ends with a memory-failure message (like
    SIGBUS), the other tasks (each in its own pages: sequential) run to the end, the page is
    poisoned and counted, nothing is corrupt."""
    proc, r = run_report(tmp_path, "--guest-mem", "4MiB", "--host-mem", "1MiB", "--swap-latency", "200us",
                         "--accesses", "200", "--workload", "sequential", "--tasks", "4", "--mode", mode,
                         "--prefill", "--inject", "swap-read:eio:n=5")
    assert proc.returncode == 1
    assert r["tasks"]["failed"] == 1
    error = r["tasks"]["errors"][0]
    assert "killed: memory failure: page" in error and "could not be read from swap" in error
    assert "like SIGBUS on a poisoned page" in error
    assert error in proc.stderr
    workload_accesses = r["tasks"]["accesses"]
    assert 3 * 200 <= workload_accesses < 4 * 200   # the three other tasks finished their 200 each
    assert r["pages_poisoned"] == 1 and r["host_faults"]["poisoned"] == 1
    assert r["swap"]["read_errors"] == 1
    assert r["pages_corrupt"] == 0
    assert "1 task(s) killed" in proc.stdout


def test_eviction_enospc_keeps_pages_resident_over_budget(tmp_path, shm_leftovers):
    """Write-backs failing with ENOSPC leave their pages resident and intact; the host reports
    that it went over its budget, and the run still verifies every page."""
    proc, r = run_report(tmp_path, *BASE, "--tasks", "2", "--inject", "swap-write:enospc:p=0.3")
    assert proc.returncode == 0, proc.stderr
    assert r["swap"]["write_errors"] > 0
    assert r["host"]["memory"]["over_budget_events"] == r["swap"]["write_errors"]
    assert "over its memory budget" in proc.stderr
    assert r["ok"] and r["pages_corrupt"] == 0 and r["pages_verified"] == r["pages_written"]


def test_swap_eio_on_write_is_survived_too(tmp_path, shm_leftovers):
    """EIO on every 10th write-back: same outcome as ENOSPC, no corruption."""
    proc, r = run_report(tmp_path, *BASE, "--tasks", "2", "--inject", "swap-write:eio:every=10")
    assert proc.returncode == 0, proc.stderr
    assert r["swap"]["write_errors"] > 0 and r["pages_corrupt"] == 0 and r["ok"]


def test_latency_spikes_and_heavy_tail_only_slow_down(tmp_path, shm_leftovers):
    """20 ms spikes on 5 % of swap I/O and a Pareto tail: the slowest swap-in shows the spike,
    the run completes with every page verified."""
    proc, r = run_report(tmp_path, *BASE, "--tasks", "4", "--mode", "async",
                         "--inject", "swap-latency:spike:p=0.05:delay=20ms",
                         "--inject", "swap-latency:pareto:alpha=1.5:scale=100us")
    assert proc.returncode == 0, proc.stderr
    assert r["swap"]["swap_in_us"]["max"] >= 20_000
    assert r["ok"] and r["pages_corrupt"] == 0
