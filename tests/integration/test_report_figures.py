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
from tests.helpers import APF, ROOT, reap, run_report, wait_until

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
        reap(proc)
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


def test_masked_time_idle_blocks_window_shrinks_and_host_cpu_per_phase(tmp_path):
    """One task, async, a third of its accesses with interrupts off, swap-ins slower than the
    halt-poll window at times: the page-ready PPI was masked only around those traps
    (0 < `apf.masked_ns` <= the stall time); idle periods that polls did not end blocked
    (`idle.blocks` >= polls - poll hits > 0), halts longer than the window shrank it
    (`window_shrinks` > 0); each phase's `cpu.host_s` is measured (> 0), the workload's at the
    top level, and the phases' sum is within the host's whole CPU time (10 ms ticks apart)."""
    proc, r = run_report(tmp_path, "--guest-mem", "4MiB", "--host-mem", "1MiB", "--accesses", "300", "--prefill",
                         "--mode", "async", "--tasks", "1", "--swap-latency", "300us", "--halt-poll", "300us",
                         "--irqoff-frac", "0.3")
    assert proc.returncode == 0, proc.stderr
    assert r["ok"] and r["pages_verified"] == r["pages_written"] > 0
    masked = r["apf"]["masked_ns"]
    assert masked == r["phases"]["workload"]["apf"]["masked_ns"]
    assert 0 < masked <= r["vcpu_stall_s"] * 1e9, (masked, r["vcpu_stall_s"])
    idle = r["idle"]
    assert idle["blocks"] >= idle["polls"] - idle["poll_hits"] > 0, idle
    assert idle["window_shrinks"] > 0 and idle["window_grows"] > 0, idle
    host_cpu = {name: phase["cpu"]["host_s"] for name, phase in r["phases"].items()}
    assert all(s is not None and s > 0 for s in host_cpu.values()), host_cpu
    assert r["cpu"]["host_s"] == host_cpu["workload"]
    assert sum(host_cpu.values()) <= r["host"]["cpu_user_s"] + r["host"]["cpu_system_s"] + 0.02, (host_cpu, r["host"])


def test_no_interrupts_off_no_masked_time(tmp_path):
    """Without interrupts-off accesses (and no CPU going offline) the page-ready PPI is never
    masked: `apf.masked_ns` is 0 in every phase."""
    proc, r = run_report(tmp_path, *SMALL, "--mode", "async", "--swap-latency", "100us")
    assert proc.returncode == 0, proc.stderr
    assert all(phase["apf"]["masked_ns"] == 0 for phase in r["phases"].values())
