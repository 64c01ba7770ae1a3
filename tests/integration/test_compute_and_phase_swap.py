"""Compute-only tasks (`--compute-tasks`) and each phase's share of the host's swap I/O, on real
runs: two processes, shared files, a real swap file. Behaviour only, never timings."""
import json

import pytest

from tests.environment import require_overcommit
from tests.helpers import run_report

LATENCY_NS = 2_000_000


def _park_intervals(events: list[dict], task: str) -> list[tuple[float, float]]:
    """(sleep, wake) timestamps of every asynchronous fault `task` slept on, by token."""
    sleeps = {e["args"]["token"]: e["ts"] for e in events if e["name"] == "apf_sleep" and e["args"]["task"] == task}
    wakes = {e["args"]["token"]: e["ts"] for e in events if e["name"] == "apf_wake" and e["args"]["task"] == task}
    return [(sleeps[t], wakes[t]) for t in sleeps if t in wakes]


def test_compute_task_runs_while_the_memory_task_is_parked(tmp_path, shm_leftovers):
    """One vCPU, a memory task beside a compute task, asynchronous faults: the compute task does
    all its work, never faults, and gets the vCPU while the memory task sleeps on a token."""
    trace = str(tmp_path / "trace.json")
    proc, r = run_report(tmp_path, "--guest-mem", "2MiB", "--host-mem", "1MiB", "--mode", "async",
                         "--swap-latency", f"{LATENCY_NS}ns", "--tasks", "1", "--compute-tasks", "1",
                         "--accesses", "200", "--compute-work", "50ms", "--prefill", "--no-verify",
                         "--trace", trace)
    assert proc.returncode == 0, proc.stderr
    assert r["ok"], r["error"]
    t = r["tasks"]
    assert (t["total"], t["memory"], t["compute"], t["compute_done"]) == (2, 1, 1, 1)
    assert t["compute_work_s"] == pytest.approx(0.05)
    assert t["accesses"] == 200                    # the compute task's steps are not accesses
    assert r["faults"]["async"] > 0
    assert "compute tasks 1/1 done" in proc.stdout
    with open(trace, encoding="utf-8") as f:
        events = json.load(f)["traceEvents"]
    runs = {task: [(e["ts"], e["ts"] + e["dur"]) for e in events
                   if e["name"] == "run" and e["args"].get("task") == task] for task in ("random-0", "compute-0")}
    assert runs["compute-0"] and runs["random-0"]
    # The compute task never traps: no stall (trap) span starts inside one of its runs.
    stalls = [e["ts"] for e in events if e["name"] == "stall"]
    assert len(stalls) == sum(p["faults"]["total"] for p in r["phases"].values())
    assert not any(start <= ts <= end for start, end in runs["compute-0"] for ts in stalls)
    parked = _park_intervals(events, "random-0")
    assert 0 < len(parked) <= r["faults"]["async"]
    assert any(sleep < start < wake for start, _ in runs["compute-0"] for sleep, wake in parked)


def test_each_phase_reports_its_own_swap_io(tmp_path, shm_leftovers):
    """Prefill only writes (first touches, evicted), the workload and the read-back read: each
    phase's swap counts are its own, the phases' reads add up to the run's, and the workload's are
    also at the top level. With synchronous faults on one vCPU, every workload swap-in stalled
    the vCPU for at least the modelled latency, so those reads really are the workload's."""
    proc, r = run_report(tmp_path, "--guest-mem", "2MiB", "--host-mem", "512KiB", "--mode", "sync",
                         "--swap-latency", "1ms", "--tasks", "1", "--compute-tasks", "1", "--accesses", "150",
                         "--think", "100us", "--prefill")
    assert proc.returncode == 0, proc.stderr
    assert r["ok"] and r["pages_verified"] == r["pages_written"] > 0
    phases = r["phases"]
    assert set(phases) == {"prefill", "workload", "verify"}
    swap = {name: p["swap"] for name, p in phases.items()}
    assert swap["prefill"]["reads"] == 0 and swap["prefill"]["writes"] > 0
    assert swap["workload"]["reads"] > 0 and swap["verify"]["reads"] > 0
    assert sum(s["reads"] for s in swap.values()) == r["swap"]["reads"]
    for key in ("writes", "evictions"):     # a write-back in flight at the end is the run's only
        assert sum(s[key] for s in swap.values()) <= r["swap"][key]
    assert r["workload_swap"] == swap["workload"]
    assert r["vcpu_stall_s"] >= swap["workload"]["reads"] * 1e-3
    # --compute-work defaults to as much CPU work as a memory task thinks: accesses x think.
    assert r["tasks"]["compute_done"] == 1 and r["tasks"]["compute_work_s"] == pytest.approx(150 * 100e-6)
    assert "swap (workload phase)" in proc.stdout


def test_read_only_workload_writes_back_only_what_prefill_left_dirty(tmp_path, shm_leftovers):
    """After --prefill, a workload that only reads swaps pages in clean (read-only, keeping their
    swap slots) and evicts them again without writing: its write-backs are at most the pages the
    prefill left dirty in RAM (the budget), the rest of its evictions are clean drops, it takes no
    permission fault, and every page verifies."""
    proc, r = run_report(tmp_path, "--guest-mem", "2MiB", "--host-mem", "256KiB", "--mode", "sync",
                         "--tasks", "2", "--accesses", "600", "--write-frac", "0", "--prefill")
    assert proc.returncode == 0, proc.stderr
    assert r["ok"] and r["pages_verified"] == r["pages_written"] > 0 and r["pages_corrupt"] == 0
    work = r["workload_swap"]
    budget = r["host"]["memory"]["budget_pages"]
    assert work["reads"] > 2 * budget
    assert work["writes"] <= budget
    assert work["clean_drops"] >= work["evictions"] - budget > 0
    assert work["write_protect"] == 0 and r["faults"]["write_protect"] == 0
    assert r["swap"]["clean_drops"] >= work["clean_drops"]


def test_small_swap_device_is_handled_and_every_page_verifies(tmp_path, shm_leftovers):
    """With --swap-size below what the guest needs, the swap device fills: evictions that find no
    slot keep their page resident (over budget, as ENOSPC), the slots in use never exceed the
    device, and every page still verifies."""
    proc, r = run_report(tmp_path, "--guest-mem", "2MiB", "--host-mem", "256KiB", "--swap-size", "1MiB",
                         "--tasks", "2", "--accesses", "300", "--prefill")
    assert proc.returncode == 0, proc.stderr
    assert r["ok"] and r["pages_verified"] == r["pages_written"] == 512 and r["pages_corrupt"] == 0
    assert 0 < r["swap"]["slots_used"] <= 256
    assert r["swap"]["write_errors"] > 0 and r["host"]["memory"]["over_budget_pages"] > 0


def test_sequential_workload_with_readahead_takes_fewer_major_faults_and_verifies(tmp_path, shm_leftovers):
    """A one-task sequential workload at --page-cluster 3 reads neighbours ahead: its read-ahead
    pages are mostly hits, it takes at most a third of the major faults that --page-cluster 0
    takes, and every page verifies in both runs."""
    majors = {}
    for cluster in ("0", "3"):
        (tmp_path / cluster).mkdir()
        proc, r = run_report(tmp_path / cluster, "--guest-mem", "2MiB", "--host-mem", "256KiB", "--mode", "sync",
                             "--tasks", "1", "--accesses", "400", "--workload", "sequential", "--prefill",
                             "--page-cluster", cluster)
        assert proc.returncode == 0, proc.stderr
        assert r["ok"] and r["pages_verified"] == r["pages_written"] > 0 and r["pages_corrupt"] == 0
        ra = r["workload_swap"]["readahead"]
        majors[cluster] = r["phases"]["workload"]["host_faults"]["major"]
        if cluster == "0":
            assert ra == {"pages": 0, "hits": 0, "misses": 0}
        else:
            assert ra["hits"] > ra["misses"] and ra["pages"] >= ra["hits"] > 0
            assert "readahead" in proc.stdout
    assert 0 < majors["3"] <= majors["0"] / 3, majors


def test_a_terabyte_guest_starts_runs_and_verifies_in_little_memory(tmp_path, shm_leftovers):
    """A 1 TiB guest with a 64 MiB host: both daemons start (per-page state is sparse), 2,000
    random first touches are minor faults, every written page verifies, and the host's RSS stays
    far below what dense per-page arrays would cost (256 MiB per byte of state)."""
    require_overcommit(1 << 40)
    proc, r = run_report(tmp_path, "--guest-mem", "1TiB", "--host-mem", "64MiB", "--tasks", "1",
                         "--accesses", "2000")
    assert proc.returncode == 0, proc.stderr
    assert r["ok"] and r["pages_verified"] == r["pages_written"] > 0 and r["pages_corrupt"] == 0
    assert r["faults"]["total"] >= r["pages_touched"] > 1900
    assert r["host"]["peak_rss_bytes"] < 150 << 20 and r["guest"]["rss_bytes"] < 150 << 20
