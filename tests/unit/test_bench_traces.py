"""apf/bench/traces.py: the traces section's grid over the shipped traces, its memory sizes, which
points verify, and its table."""
from __future__ import annotations

import os

from apf.bench.plan import build_plan, count_runs
from apf.bench.traces import (HOST_FRACTION, LATENCIES_NS, QUICK_RECORDS_PER_TASK, SHIPPED, TASKS, TRACES_DIR,
                              markdown_section, trace_points)
from shared.memtrace import PAGE_SIZE, read_header
from tests.unit.test_bench import _values

MODES = ("sync", "async", "adaptive")


def test_every_shipped_trace_is_in_the_section_and_in_the_provenance():
    """Each trace of traces/ is one the section replays, and PROVENANCE.md and record.sh name it."""
    on_disk = sorted(f for f in os.listdir(TRACES_DIR) if f.endswith(".apfmt"))
    assert sorted(SHIPPED) == on_disk
    with open(os.path.join(TRACES_DIR, "PROVENANCE.md"), encoding="utf-8") as f:
        provenance = f.read()
    with open(os.path.join(TRACES_DIR, "record.sh"), encoding="utf-8") as f:
        script = f.read()
    for name in SHIPPED:
        assert f"`{name}`" in provenance and f'"$out/{name}"' in script, name


def test_grid_is_every_trace_latency_task_count_and_mode():
    """--quick: trace x tasks x latency x mode, in that nesting, QUICK_RECORDS_PER_TASK records per
    task; guest memory holds the tasks' pages plus 1 MiB; host memory is HOST_FRACTION of them;
    only the lowest latency verifies; count_runs agrees."""
    points = trace_points(MODES, quick=True)
    assert len(points) == len(SHIPPED) * len(TASKS) * len(LATENCIES_NS) * len(MODES)
    assert [n for n, _ in points[::len(TASKS) * len(LATENCIES_NS) * len(MODES)]] == list(SHIPPED)
    for name, p in points:
        pages = read_header(os.path.join(TRACES_DIR, name)).distinct_pages * p.tasks
        assert p.accesses_per_task == QUICK_RECORDS_PER_TASK
        assert pages * PAGE_SIZE + (1 << 20) <= p.workload.guest_mem < pages * PAGE_SIZE + (2 << 20)
        assert p.workload.host_mem == max(16, int(pages * HOST_FRACTION)) * PAGE_SIZE
        assert p.verify is (p.latency_ns == min(LATENCIES_NS))
        assert ("--no-verify" in p.argv("r.json", 60)) is not p.verify
    plan = build_plan(_values("--only", "traces", "--quick"), adaptive_available=lambda: True)
    assert count_runs(plan) == len(trace_points(plan.modes, quick=True))


def test_table_has_a_row_per_point_with_missing_figures_as_dashes():
    """A failed point (no report figures) renders with dashes and "NO"; a good one with its figures."""
    good = {"trace": "xz-9.apfmt", "latency_ns": 500_000, "tasks": 1, "mode": "async", "wall_s": 0.5,
            "us_per_record": 25.0, "faults": 10, "async": 8, "stall_s": 0.01, "speedup_vs_sync": 1.25,
            "pages_touched": 1234, "pages_verified": 1234, "ok": True}
    bad = dict(good, mode="sync", ok=False, **{key: None for key in (
        "wall_s", "us_per_record", "faults", "async", "stall_s", "speedup_vs_sync", "pages_touched", "pages_verified")})
    lines = markdown_section({"records_per_task": 1000, "host_fraction": 0.25, "rows": [good, bad]})
    rows = [line for line in lines if line.startswith("| xz-9")]
    assert rows[0] == ("| xz-9.apfmt | 0.5 ms | 1 | async | 0.500 | 25 | 10 | 8 | 0.010 | 1.25 | 1,234 | 1,234 "
                       "| yes |")
    assert rows[1].startswith("| xz-9.apfmt | 0.5 ms | 1 | sync | – | – |") and rows[1].endswith("| – | – | NO |")
