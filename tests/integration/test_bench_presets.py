"""`apf bench --preset arm64-v4-compute --quick` end to end: real runs of a memory hog beside a
compute task; and `--preset remote-memory`'s measurements, each against a real redis-server, and
its tables. Only the plumbing is checked (the runs, the fields, the ideal), never timings."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from apf.bench import remote
from tests.helpers import APF, ROOT, apf, refusal
from tests.integration.test_bench import private_tmp  # noqa: F401 (a fixture)


@pytest.mark.timeout(120)
def test_compute_preset_runs_a_compute_task_and_counts_workload_io(tmp_path, shm_leftovers, private_tmp):  # noqa: F811
    """Each mode's run has one memory and one compute task, both done; the row's swap-ins and
    write-backs are the workload phase's, and its CPU limit includes the compute task's work."""
    out = tmp_path / "bench"
    proc = apf("bench", "--out", str(out), "--no-progress", "--preset", "arm64-v4-compute", "--quick",
               "--modes", "sync,async", "--point-timeout", "60s", timeout=110)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    [preset] = results["presets"]
    c = preset["config"]
    assert (c["tasks"], c["compute_tasks"]) == (1, 1) and c["compute_work_ns"] > 0
    assert "compute_tasks*compute_work" in results["ideal_formula"]
    for mode in ("sync", "async"):
        row = preset["modes"][mode]
        assert row["repeats_ok"] == row["repeats"] == 1, row["errors"]
        with open(os.path.join(out, "runs", f"{mode}-2ms-t1-arm64-v4-compute-1.json"), encoding="utf-8") as f:
            report = json.load(f)
        tasks = report["tasks"]
        assert (tasks["memory"], tasks["compute"], tasks["compute_done"]) == (1, 1, 1)
        assert tasks["compute_work_s"] == pytest.approx(c["compute_work_ns"] / 1e9)
        assert row["major_faults"] == report["workload_swap"]["reads"] > 0
        assert row["write_backs"] == report["workload_swap"]["writes"]
        cpu_ns = c["accesses_per_task"] * c["think_ns"] + c["compute_work_ns"]
        assert row["cpu_limit_s"] == pytest.approx(cpu_ns / 1e9)
    assert "1 compute task(s)" in (out / "results.md").read_text()


def test_remote_memory_measures_against_a_real_redis_and_renders_its_tables(tmp_path, shm_leftovers, redis_server):
    """The remote-memory preset's parts, at small sizes against a real server: redis-benchmark's
    pipelined GETs, the engine's pipelined swap-ins and depth-1 latencies beside a raw client's,
    and one `apf run` per mode swapping to it; the markdown has the three tables, a row per run,
    each figure as measured. (The whole preset, `apf bench --preset remote-memory --quick`, takes
    about 90 s here: too long for the suite.)"""
    server = redis_server()
    figures = remote.swap_in_figures(server.url, reads=800, slots=256)
    assert figures["swap_in_pages_per_s"] > 0
    assert 0 < figures["swap_in_p50_us"] <= figures["swap_in_p99_us"]
    assert 0 < figures["raw_get_p50_us"] <= figures["raw_get_p99_us"]
    assert server.client().dbsize() == 0                      # the engine's keys and the raw GET's page went
    c1, c50 = (remote.redis_benchmark(server.port, 2000, clients) for clients in (1, 50))
    assert c1 > 0 and c50 > 0
    (tmp_path / "runs").mkdir()
    row = {"backend": "redis", "tasks": 2}
    for mode in ("sync", "async"):
        row[mode] = remote.apf_run(["--swap", server.url], mode, 2, True, str(tmp_path))
        assert row[mode]["wall_s"] > 0 and row[mode]["reads"] > 0 and row[mode]["swap_in_p50_us"] > 0
    row["async_vs_sync"] = row["async"]["wall_s"] / row["sync"]["wall_s"]
    results = {"preset": "remote-memory", "depth": remote.DEPTH, "redis_server": "Redis server v=test",
               "redis_benchmark_P8_c1_gets_per_s": c1, "redis_benchmark_P8_c50_gets_per_s": c50, **figures,
               "swap_in_vs_redis_benchmark_c1": figures["swap_in_pages_per_s"] / c1, "runs": [row]}
    lines = remote.markdown(results).splitlines()
    assert lines[0] == "Redis: Redis server v=test"
    assert f"| redis-benchmark -P 8, 1 connection | {c1:,.0f} | 100 % |" in lines
    assert any(line.startswith(f"| host swap-in (RemoteSwap + engine, 1 connection) | "
                               f"{figures['swap_in_pages_per_s']:,.0f} |") for line in lines)
    assert (f"| raw redis-py GET | {figures['raw_get_p50_us']:.0f} | {figures['raw_get_p99_us']:.0f} |") in lines
    assert (f"| redis | 2 | {row['sync']['wall_s']:.2f} | {row['async']['wall_s']:.2f} | "
            f"{row['async_vs_sync']:.2f} | {row['sync']['swap_in_p50_us']:.0f} |") in lines
    assert sum(1 for line in lines if line.startswith("|---")) == 3


def test_remote_memory_without_redis_benchmark_is_refused_in_one_line(tmp_path):
    """`apf bench --preset remote-memory` where redis-benchmark is not installed (a PATH holding
    only redis-server): one line saying what to install, exit 2, before anything starts."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "redis-server").symlink_to(shutil.which("redis-server"))
    proc = subprocess.run(APF + ["bench", "--preset", "remote-memory", "--quick", "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PATH": str(bin_dir)})
    assert refusal(proc) == ("apf bench: error: --preset remote-memory needs redis-server and redis-benchmark "
                             "(apt-get install redis-server redis-tools)")
