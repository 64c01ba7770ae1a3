"""Whole runs through `apf run`: two real processes, shared files, ZeroMQ, a real swap file."""
import json
import os
import shutil
import tempfile
from collections import Counter

import pytest

from tests.environment import require_native_aio, require_o_direct
from tests.helpers import apf, run_report

SMALL = ["--guest-mem", "32MiB", "--host-mem", "8MiB"]


def test_sync_run_swaps_out_and_in_and_verifies_every_page(tmp_path, shm_leftovers):
    """A 32 MiB guest on 8 MiB of host memory swaps both ways, stalls, and loses no data."""
    proc, r = run_report(tmp_path, *SMALL, "--mode", "sync", "--tasks", "2", "--accesses", "3000")
    assert proc.returncode == 0, proc.stderr
    assert r["mode"] == "sync" and r["ok"]
    assert r["swap"]["reads"] > 0 and r["swap"]["writes"] > 0 and r["swap"]["evictions"] > 0
    assert r["vcpu_stall_s"] > 0
    assert r["faults"]["total"] == r["faults"]["resolved_sync"] > 0 and r["faults"]["async"] == 0
    assert r["pages_corrupt"] == 0
    assert r["pages_written"] > 0 and r["pages_verified"] == r["pages_written"]
    lat = r["fault_latency_us"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    for side in ("host", "guest"):
        assert r[side]["rss_bytes"] > 0 and r[side]["cpu_user_s"] > 0
    assert "OK" in proc.stdout and "pages verified" in proc.stdout


@pytest.mark.parametrize("engine", ["auto", "threads"])
def test_direct_io_run_verifies_every_page_on_either_io_engine(tmp_path, shm_leftovers, engine):
    """O_DIRECT swap through native AIO (what auto picks here) or the worker threads: same pages,
    same answers, and the report says which engine moved them."""
    require_native_aio() if engine == "auto" else require_o_direct()
    proc, r = run_report(tmp_path, *SMALL, "--mode", "async", "--tasks", "4", "--accesses", "3000",
                         "--direct-io", "--io-engine", engine)
    assert proc.returncode == 0, proc.stderr
    assert r["ok"] and r["pages_corrupt"] == 0 and r["pages_verified"] == r["pages_written"] > 0
    assert r["swap"]["reads"] > 0 and r["swap"]["writes"] > 0 and r["swap"]["read_errors"] == 0
    assert r["swap"]["io_engine"] == ("aio" if engine == "auto" else "threads")


def test_run_leaves_nothing_behind(tmp_path, shm_leftovers):
    """`apf run` with its own run dir removes it, and the host removes its shared files."""
    proc, r = run_report(tmp_path, "--guest-mem", "1MiB", "--host-mem", "256KiB", "--accesses", "200")
    assert proc.returncode == 0, proc.stderr
    assert r["run"]["run_dir"].startswith(tempfile.gettempdir())
    assert not os.path.exists(r["run"]["run_dir"])


def test_async_run_every_not_present_gets_one_page_ready(tmp_path, shm_leftovers):
    """kvm-unit-tests' asyncpf, end to end: touch more memory than the host keeps (twice over), and
    every PAGE_NOT_PRESENT token is answered by exactly one PAGE_READY that wakes its task."""
    trace = str(tmp_path / "trace.json")
    proc, r = run_report(tmp_path, *SMALL, "--mode", "async", "--tasks", "4", "--accesses", "2500",
                         "--swap-latency", "500us", "--trace", trace)
    assert proc.returncode == 0, proc.stderr
    assert r["ok"], (r["error"], r["corrupt_examples"], r["tasks"])
    assert r["pages_corrupt"] == 0 and r["pages_verified"] == r["pages_written"]
    assert r["faults"]["async"] > 0
    async_total = sum(p["faults"]["async"] for p in r["phases"].values())
    assert sum(p["page_ready"] for p in r["phases"].values()) == async_total
    assert all(p["apf"]["stray_tokens"] == 0 and p["apf"]["bad_exceptions"] == 0 for p in r["phases"].values())
    with open(trace, encoding="utf-8") as f:
        events = json.load(f)["traceEvents"]
    not_present = Counter(e["args"]["token"] for e in events if e["name"] == "kvm_async_pf_not_present")
    ready = Counter(e["args"]["token"] for e in events if e["name"] == "kvm_async_pf_ready"
                    and e["args"]["token"] != 0xFFFFFFFF)
    sleeps = Counter(e["args"]["token"] for e in events if e["name"] == "apf_sleep")
    wakes = Counter(e["args"]["token"] for e in events if e["name"] == "apf_wake")
    assert len(not_present) == async_total
    assert set(ready) == set(not_present) and set(ready.values()) == {1}
    assert set(wakes.values()) <= {1} and set(sleeps) == set(wakes)


def test_async_multi_vcpu_tasks_resume_anywhere(tmp_path, shm_leftovers):
    """With 2 vCPUs and 6 tasks, woken tasks run on whichever vCPU is free; no data is lost. Every
    access writes, so every page first touched takes host memory (a first-touch read would only map
    the zero page): the tasks' ~3500 pages overflow the host's 2048, and pages evicted are touched
    again, asynchronously."""
    proc, r = run_report(tmp_path, *SMALL, "--mode", "async", "--vcpus", "2", "--tasks", "6",
                         "--accesses", "800", "--swap-latency", "1ms", "--workload", "mixed",
                         "--write-frac", "1")
    assert proc.returncode == 0, proc.stderr
    assert r["ok"] and r["pages_corrupt"] == 0
    assert len(r["per_vcpu"]) == 2 and all(v["traps"] > 0 for v in r["per_vcpu"])
    assert r["faults"]["async"] > 0
    assert sum(p["page_ready"] for p in r["phases"].values()) == sum(p["faults"]["async"] for p in r["phases"].values())


def test_eviction_under_concurrent_writes_loses_no_write(tmp_path, shm_leftovers):
    """Break-before-make: with 2 vCPUs writing hard into a working set 8x the host's memory,
    reclaim unmaps, invalidates and copies out pages concurrently, and no write is lost."""
    proc, r = run_report(tmp_path, "--guest-mem", "2MiB", "--host-mem", "256KiB", "--vcpus", "2",
                         "--tasks", "4", "--accesses", "3000", "--write-frac", "0.9", "--workload", "zipf",
                         "--timeslice", "200us")
    assert proc.returncode == 0, proc.stderr
    assert r["swap"]["evictions"] > 500 and r["tlbi_acks"] > 10
    assert r["pages_corrupt"] == 0 and r["pages_verified"] == r["pages_written"]


def _stalls(tmp_path, name: str, args: list[str]) -> tuple[dict, list[int]]:
    """Run with --trace; return the report and the guest's stalls' pages in time order. With the
    host keeping every page, a page stalls at its first touch and, if that was a read (which maps
    the zero page), once more at its first write (a write-protect fault); nothing else stalls."""
    trace = str(tmp_path / f"{name}.trace.json")
    proc = apf("run", "--report", str(tmp_path / f"{name}.json"), "--trace", trace, *args)
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / f"{name}.json", encoding="utf-8") as f:
        report = json.load(f)
    with open(trace, encoding="utf-8") as f:
        stalls = sorted((e["ts"], e["args"]["gfn"]) for e in json.load(f)["traceEvents"] if e["name"] == "stall")
    return report, [gfn for _, gfn in stalls]


def _first_touches(stalls: list[int]) -> list[int]:
    """Each page's first stall, in time order: the order pages were first touched."""
    return list(dict.fromkeys(stalls))


@pytest.mark.parametrize("workload", ["random", "zipf", "sequential", "mixed"])
def test_workloads_are_reproducible(tmp_path, workload):
    """The same seed gives the same pages in the same order, whatever the pattern: one task, and a
    host that keeps all 512 pages, so the guest's trace has one stall per page first touched, in
    the order touched, plus one write-protect stall for each page first read and later written
    (no page stalls a third time). Another seed gives another order, except for `sequential`,
    which is 0, 1, 2, ... whatever the seed."""
    args = ["--guest-mem", "2MiB", "--host-mem", "2MiB", "--accesses", "300", "--workload", workload,
            "--tasks", "1"]
    first, stalls = _stalls(tmp_path, "first", [*args, "--seed", "7"])
    second, stalls_again = _stalls(tmp_path, "second", [*args, "--seed", "7"])
    _, stalls_other = _stalls(tmp_path, "other", [*args, "--seed", "8"])
    pages, again, other = _first_touches(stalls), _first_touches(stalls_again), _first_touches(stalls_other)
    assert first["ok"] and second["ok"]
    assert first["swap"]["evictions"] == 0 and first["faults"]["total"] == len(stalls)
    per_page = Counter(stalls)
    assert set(per_page.values()) <= {1, 2}
    assert len(stalls) - len(pages) == first["faults"]["write_protect"]
    assert len(pages) >= first["pages_written"] > 0
    assert stalls_again == stalls and again == pages
    if workload == "sequential":
        assert pages == other == list(range(300))
    else:
        assert other != pages
    assert first["tasks"]["accesses"] == second["tasks"]["accesses"] == 300


@pytest.mark.parametrize("tasks, expect_async", [(1, False), (8, True)])
def test_adaptive_policy_follows_what_pays(tmp_path, shm_leftovers, tasks, expect_async):
    """With slow swap (10 ms): one task alone goes idle after every not-present, so adaptive turns
    synchronous; eight tasks keep the vCPU busy, so adaptive stays asynchronous."""
    proc, r = run_report(tmp_path, *SMALL, "--mode", "async", "--policy", "adaptive", "--prefill",
                         "--swap-latency", "10ms", "--tasks", str(tasks), "--accesses", str(160 // tasks),
                         "--think", "100us", "--no-verify", "--page-cluster", "0")
    assert proc.returncode == 0, proc.stderr
    policy = r["host_policy"]
    assert policy["name"] == "adaptive"
    if expect_async:
        assert policy["async"] > 3 * policy["sync"] and policy["idle_ratio"][0] <= 0.5
    else:
        assert policy["sync"] > 3 * policy["async"] and policy["idle_ratio"][0] > 0.5
        assert r["faults"]["sync_reasons"].get("policy", 0) == policy["sync"]


def test_the_largest_task_count_runs(tmp_path, shm_leftovers):
    """--tasks 100000, the most it takes: making that many tasks takes longer than the host waits
    to hear from its guest, so the guest keeps its heartbeat going while it makes them."""
    proc, r = run_report(tmp_path, "--guest-mem", "4MiB", "--host-mem", "4MiB", "--tasks", "100000",
                         "--accesses", "1", "--no-verify")
    assert proc.returncode == 0, proc.stderr
    assert r["ok"] and r["tasks"]["accesses"] == 100_000


def test_a_guest_on_path_shared_memory_in_its_own_shm_dir_verifies_every_page(host, tmp_path):
    """The compose setup: `apf host --shared-memory path --shm-dir DIR` and a separate `apf guest`
    that opens the RAM, stage-2 and control files by the paths in DIR (no descriptors passed).
    The files are in DIR alone while the host serves; the guest swaps both ways and verifies every
    page it wrote (all of them: --prefill); when the host stops, DIR is left empty."""
    shm = tempfile.mkdtemp(prefix="apf-test-shm-", dir="/dev/shm")
    try:
        h = host("--guest-mem", "8MiB", "--host-mem", "2MiB", "--vcpus", "2", "--io-depth", "8",
                 "--shared-memory", "path", "--shm-dir", shm)
        files = h.info["files"]
        assert h.info["shared_memory"] == "path" and sorted(files) == ["control", "ram", "stage2"]
        assert sorted(os.listdir(shm)) == sorted(os.path.basename(p) for p in files.values())
        assert all(os.path.dirname(p) == shm for p in files.values())
        report = str(tmp_path / "guest.json")
        proc = apf("guest", "--run-dir", h.run_dir, "--vcpus", "2", "--mode", "async", "--prefill",
                   "--tasks", "4", "--accesses", "400", "--report", report, timeout=120)
        assert proc.returncode == 0, proc.stderr
        with open(report, encoding="utf-8") as f:
            r = json.load(f)
        assert r["ok"] and r["pages_corrupt"] == 0
        assert r["pages_verified"] == r["pages_written"] == 2048
        assert r["swap"]["reads"] > 0 and r["swap"]["writes"] > 0
        assert h.stop() == 0
        assert os.listdir(shm) == []
    finally:
        shutil.rmtree(shm, ignore_errors=True)
