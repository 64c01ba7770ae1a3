"""Injected swap I/O faults: read errors poison a page, write errors put the host over budget,
latency spikes only slow things down. No data is ever silently corrupted."""

import pytest

from protocol import ErrorCode
from protocol.hypercalls import FuncId
from protocol.messages import Error, Hvc, HvcRet, Stats, Welcome
from tests.helpers import RawGuest, run_report, started_io, wait_until

BASE = ["--guest-mem", "4MiB", "--host-mem", "1MiB", "--accesses", "800", "--swap-latency", "200us"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_swap_in_eio_kills_only_the_faulting_task(tmp_path, shm_leftovers, mode):
    """One failing swap-in: the task that needed the page ends with a memory-failure message (like
    SIGBUS), the other tasks (each in its own pages: sequential) run to the end, the page is
    poisoned and counted, nothing is corrupt."""
    proc, r = run_report(tmp_path, "--guest-mem", "4MiB", "--host-mem", "1MiB", "--swap-latency", "200us",
                         "--accesses", "200", "--workload", "sequential", "--tasks", "4", "--mode", mode,
                         "--prefill", "--inject", "swap-read:eio:n=5",
                         "--page-cluster", "0")     # the 5th read is a fault's own, not a read-ahead page
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
    assert "result: FAILED - 1 task(s) killed" in proc.stderr    # a failed result line goes to stderr


def test_eviction_enospc_keeps_pages_resident_over_budget(tmp_path, shm_leftovers):
    """Write-backs failing with ENOSPC leave their pages resident and intact (one page over budget
    each); the host reports that it went over its budget, and the run still verifies every page."""
    proc, r = run_report(tmp_path, *BASE, "--tasks", "2", "--inject", "swap-write:enospc:p=0.3")
    assert proc.returncode == 0, proc.stderr
    assert r["swap"]["write_errors"] > 0
    # A failed write-back of a page a fault took back meanwhile (rescued) is a write error that
    # goes no page over budget: that page is charged already.
    assert 0 <= r["swap"]["write_errors"] - r["host"]["memory"]["over_budget_events"] <= r["host_faults"]["rescued"]
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


def test_swap_io_outliving_its_session_keeps_the_next_guest_out_until_it_ends(host):
    """Write-backs still running when the teardown bound runs out would write an ended guest's
    bytes into the next guest's swap and RAM: the host answers HELLO with BUSY, naming them, until
    they end; then it wipes RAM and swap again and admits the next guest."""
    h = host("--guest-mem", "1MiB", "--host-mem", "256KiB", "--teardown-bound", "200ms",
             "--inject", "swap-latency:spike:p=1:delay=3s")
    g = RawGuest(h.info, name="leaving")
    try:
        g.hello()
        for gfn in range(96):                      # first-touch writes; past the watermark write-backs start
            g.send_trap(0, gfn)
        # Started, not only submitted: a queued one is cancelled at the end of the session. (Not
        # evicting_pages either: those may still wait for the TLBI ack, with nothing submitted.)
        g.pump_until(lambda: started_io(g.stats()["swap"]) > 0, "write-backs under way")
        ret = g.request(g.ctl, Hvc(0, 0, int(FuncId.PSCI_SYSTEM_OFF), ()))
        assert isinstance(ret, HvcRet)
    finally:
        g.close()
    nxt = RawGuest(h.info, name="next")
    try:
        refused = nxt.hello()
        assert isinstance(refused, Error) and refused.code == ErrorCode.BUSY
        assert "swap I/O of the previous guest still running" in refused.reason
        wait_until(lambda: nxt.stats()["session"]["stale_io_running"] == 0, "the previous guest's swap I/O ended")
        assert isinstance(nxt.hello(), Welcome)
        memory = nxt.request(nxt.ctl, Stats(0)).stats
        assert memory["memory"]["ram_file_bytes"] == 0 and memory["swap"]["file_bytes"] == 0
    finally:
        nxt.close()
