"""`apf bench --preset arm64-v4-compute --quick` end to end: real runs of a memory hog beside a
compute task. Only the plumbing is checked (the runs, the fields, the ideal), never timings."""
from __future__ import annotations

import json
import os

import pytest

from tests.helpers import apf
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
