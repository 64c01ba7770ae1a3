"""Reports that add up: every phase counts only its own faults, an interrupted `apf run` still
writes its report (marked partial), both sides' injected faults and every error count are in the
report and the summary, each daemon's peak RSS is the kernel's high-water mark, and a run that
never swapped in says so."""
import json
import os
import signal
import subprocess

import psutil
import pytest

from tests.faults.test_signals import LONG, _wait_for, _wait_for_faults
from tests.helpers import APF, ROOT, run_report, wait_until

SMALL = ["--guest-mem", "4MiB", "--host-mem", "1MiB", "--tasks", "4", "--accesses", "500", "--prefill"]


def _check_phase_sums(r: dict) -> None:
    for name, phase in r["phases"].items():
        f = phase["faults"]
        assert sum(f["sync_reasons"].values()) == f["resolved_sync"] + f["memory_failures"], (name, f)
        assert f["resolved_sync"] + f["async"] + f["memory_failures"] == f["total"], (name, f)
        assert phase["host_faults"]["total"] == f["total"], (name, phase["host_faults"], f)
        rows = phase["per_vcpu"]
        assert sum(v["traps"] for v in rows) == f["total"]
        assert sum(v["resolved_sync"] for v in rows) == f["resolved_sync"]
        assert sum(v["async"] for v in rows) == f["async"]
    assert r["faults"]["sync_reasons"] == r["phases"]["workload"]["faults"]["sync_reasons"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_each_phases_fault_counters_sum_to_its_whole(tmp_path, mode):
    """In every phase (prefill, workload, verify) the sync reasons sum to the synchronous faults
    (plus memory failures), sync + async + memory failures to the total, the host's count of the
    phase's traps to the guest's, and the per-vCPU rows to the phase's totals."""
    proc, r = run_report(tmp_path, *SMALL, "--mode", mode, "--vcpus", "2", "--swap-latency", "200us")
    assert proc.returncode == 0, proc.stderr
    assert set(r["phases"]) == {"prefill", "workload", "verify"}
    _check_phase_sums(r)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_apf_run_writes_its_report_marked_partial(tmp_path, signum):
    """SIGINT or SIGTERM to `apf run --report FILE` mid-workload: it exits 130 and FILE holds the
    guest's partial report, marked `partial` and naming the signal, with what ran before the
    interrupt, the host's figures included (the guest is stopped before the host, so it can
    still ask the host for them)."""
    report = str(tmp_path / "report.json")
    proc = subprocess.Popen(APF + ["run", "--report", report, *LONG], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        root = psutil.Process(proc.pid)
        host = wait_until(lambda: next((c for c in root.children() if "host" in c.cmdline()), None),
                          "the host started", 20)
        run_dir = host.cmdline()[host.cmdline().index("--run-dir") + 1]
        _wait_for(os.path.join(run_dir, "host.json"))
        _wait_for_faults(run_dir, 20)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    with open(report, encoding="utf-8") as f:
        r = json.load(f)
    assert r["partial"] is True and r["ok"] is False and r["run"]["interrupted"] is True
    assert r["error"].startswith(f"interrupted by {signal.Signals(signum).name}"), r["error"]
    assert r["tasks"]["accesses"] > 0 and r["faults"]["total"] > 0
    assert r["host_faults"].get("total", 0) > 0 and r["host"]["memory"], "the host's figures are missing"


def test_host_injections_and_error_counts_reach_the_report_and_summary(tmp_path):
    """Injected write-back failures (a host-side fault) appear in the report's `injected` and
    `errors`, and the summary names them: a run with failed write-backs does not just say OK."""
    proc, r = run_report(tmp_path, *SMALL, "--mode", "async", "--inject", "swap-write:eio:every=3")
    assert proc.returncode == 0, proc.stderr
    fired = r["injected"]["swap-write:eio"]
    assert fired > 0 and r["injected_host"] == {"swap-write:eio": fired}
    assert r["errors"]["swap_write_errors"] == r["swap"]["write_errors"] > 0
    assert f"{r['errors']['swap_write_errors']} swap write errors" in proc.stdout
    assert f"injected: swap-write:eio x{fired}" in proc.stdout
    assert "result: OK (errors were counted: see the errors line)" in proc.stdout


def test_peak_rss_of_each_daemon_and_a_run_without_major_faults(tmp_path):
    """Each daemon reports its peak RSS (the kernel's VmHWM, at least its RSS at the end); a run
    whose working set fits in host memory has no major fault and its summary says so."""
    proc, r = run_report(tmp_path, "--guest-mem", "1MiB", "--host-mem", "1MiB", "--accesses", "200")
    assert proc.returncode == 0, proc.stderr
    for side in ("host", "guest"):
        assert r[side]["peak_rss_bytes"] >= r[side]["rss_bytes"] > 0, r[side]
    assert r["host_faults"]["major"] == 0
    assert "no major fault: the working set never exceeded host memory" in proc.stdout
