"""`apf bench` plumbing, in-process: the plan, the figures computed from reports, the trace reader
and the Markdown. No timings are checked here (they depend on the machine)."""
from __future__ import annotations

import json

import pytest

from apf.bench.analysis import add_comparisons, ideal, summarise
from apf.bench.markdown import markdown
from apf.bench.plan import ADAPTIVE, PRESETS, BenchError, Point, Sweep, Workload, build_plan, count_runs
from apf.bench.plots import read_guest_trace
from apf.bench.runner import RunResult
from apf.cli import build_parser

W = Workload(guest_mem=32 << 20, host_mem=8 << 20, vcpus=1, think_ns=200_000, io_depth=8)


def _values(*argv: str) -> dict:
    return vars(build_parser().parse_args(["bench", "--out", "/nonexistent", *argv]))


def _report(wall: float, reads: int = 100, ok: bool = True) -> dict:
    return {"ok": ok, "wall_s": wall, "vcpu_stall_s": wall / 2, "vcpu_idle_s": 0.01,
            "fault_latency_us": {"p50": 200.0, "p99": 900.0}, "faults": {"total": reads + 2, "async": reads},
            "swap": {"reads": reads}, "prefill_s": 1.0,
            "host": {"rss_bytes": 30 << 20, "cpu_user_s": 1.0, "cpu_system_s": 0.5},
            "guest": {"rss_bytes": 28 << 20, "cpu_user_s": 2.0, "cpu_system_s": 0.25}}


def _runs(point: Point, walls: list[float], reads: int = 100) -> list[RunResult]:
    return [RunResult(point, i, True, None, 1.0, 0.5, _report(w, reads)) for i, w in enumerate(walls)]


def test_default_plan_is_the_full_sweep_with_presets_micro_and_traces():
    """Without options: modes sync and async, 5 latencies x 5 task counts, 3 repeats, every section
    but haltpoll; --quick leaves the traces section out."""
    plan = build_plan(_values(), adaptive_available=lambda: False)
    assert plan.modes == ("sync", "async")
    assert plan.sections == ("sweep", "presets", "micro", "traces")
    assert build_plan(_values("--quick"), adaptive_available=lambda: False).sections == ("sweep", "presets", "micro")
    assert plan.sweep.latencies_ns == (0, 100_000, 500_000, 2_000_000, 10_000_000)
    assert plan.sweep.tasks == (1, 2, 4, 8, 16) and plan.sweep.repeat == 3
    assert plan.sweep.focus == (2_000_000, 8)
    assert len(plan.sweep.points(plan.modes)) == 50


def test_total_work_is_the_same_at_every_task_count():
    """accesses per task x tasks is the sweep's total accesses for every task count of the sweep."""
    sweep = Sweep()
    for p in sweep.points(("sync",)):
        assert p.total_accesses == sweep.total_accesses


def test_adaptive_mode_is_added_only_when_the_host_offers_it():
    """The adaptive policy joins the sweep when `apf host --help` mentions it, and not otherwise;
    asking for it on a host without it is an error that says so."""
    assert build_plan(_values(), adaptive_available=lambda: True).modes == ("sync", "async", ADAPTIVE)
    assert build_plan(_values(), adaptive_available=lambda: False).modes == ("sync", "async")
    with pytest.raises(BenchError, match="does not accept --policy adaptive"):
        build_plan(_values("--modes", "sync,adaptive"), adaptive_available=lambda: False)


def test_adaptive_point_runs_async_guest_with_adaptive_host_policy():
    """An adaptive point is `apf run --mode async --policy adaptive`; sync and async pass no policy."""
    argv = Point(ADAPTIVE, 2_000_000, 8, 250, W).argv("/r.json", 60)
    assert argv[argv.index("--mode") + 1] == "async"
    assert argv[argv.index("--policy") + 1] == "adaptive"
    sync = Point("sync", 0, 1, 2000, W).argv("/r.json", 60)
    assert "--policy" not in sync and sync[sync.index("--mode") + 1] == "sync"
    assert "--no-verify" in sync and "--prefill" in sync and "--quiet" in sync
    assert "--no-verify" not in Point("sync", 0, 1, 2000, W, verify=True).argv("/r.json", 60)


def test_section_selection_and_overrides():
    """--micro, --preset and --only choose the sections; sweep overrides replace the defaults."""
    assert build_plan(_values("--micro"), adaptive_available=lambda: False).sections == ("micro",)
    plan = build_plan(_values("--preset", "arm64-v4-compute"), adaptive_available=lambda: False)
    assert plan.sections == ("presets",) and [p.name for p in plan.presets] == ["arm64-v4-compute"]
    plan = build_plan(_values("--only", "sweep", "--latencies", "0,1ms", "--tasks", "1,2", "--accesses", "40",
                              "--repeat", "1", "--guest-mem", "2MiB", "--host-mem", "512KiB", "--think", "0"),
                      adaptive_available=lambda: False)
    assert plan.sections == ("sweep",)
    assert plan.sweep.latencies_ns == (0, 1_000_000) and plan.sweep.tasks == (1, 2)
    assert plan.sweep.workload.guest_mem == 2 << 20 and plan.sweep.workload.think_ns == 0
    assert plan.sweep.focus == (1_000_000, 2)
    # 8 timed, 2 verified, 2 traced (the CDF latencies default to the focus latency)
    assert count_runs(plan) == 12
    with pytest.raises(BenchError, match="unknown section"):
        build_plan(_values("--only", "sweep,nope"), adaptive_available=lambda: False)
    with pytest.raises(BenchError, match="must include sync"):
        build_plan(_values("--modes", "async"), adaptive_available=lambda: False)


def test_quick_plan_is_reduced():
    """--quick: two latencies x two task counts, one repeat, a smaller guest."""
    plan = build_plan(_values("--quick"), adaptive_available=lambda: False)
    assert plan.sweep.latencies_ns == (0, 2_000_000) and plan.sweep.tasks == (1, 8)
    assert plan.sweep.repeat == 1 and plan.preset_repeat == 1 and plan.micro_quick
    assert plan.sweep.workload.guest_mem < Sweep().workload.guest_mem


def test_ideal_is_the_larger_of_cpu_and_io_limits():
    """cpu = accesses x think / vCPUs; io = major faults x latency / io-depth; ideal = max.
    8 tasks x 250 accesses x 200 us on 1 vCPU = 0.4 s of CPU; 1,000 swap-ins x 2 ms / 8 = 0.25 s
    of I/O: the ideal is the CPU's 0.4 s. At latency 0 the I/O costs nothing."""
    p = Point("async", 2_000_000, 8, 250, W)
    got = ideal(p, major_faults=1000)
    assert got["cpu_limit_s"] == pytest.approx(0.4)
    assert got["io_limit_s"] == pytest.approx(0.25)
    assert got["ideal_s"] == pytest.approx(0.4)
    assert ideal(p, major_faults=4000)["ideal_s"] == pytest.approx(1.0)    # 4,000 x 2 ms / 8: I/O bound
    assert ideal(Point("sync", 0, 1, 2000, W), 1600)["io_limit_s"] == 0


def test_ideal_counts_the_io_requests_issued_not_the_pages_read_ahead():
    """8 tasks x 250 accesses at 10 ms, depth 8: 1,600 pages read of which 600 came ahead in other
    faults' requests, and 200 write-backs, are 1,200 requests: 1,200 x 10 ms / 8 = 1.5 s."""
    got = ideal(Point("async", 10_000_000, 8, 250, W), major_faults=1600, write_backs=200, readahead_pages=600)
    assert got["io_limit_s"] == pytest.approx(1.5) and got["ideal_s"] == pytest.approx(1.5)


def test_summary_takes_medians_and_spread_and_efficiency():
    """A row's wall time is the median of its repeats, min/max the spread, efficiency ideal / wall."""
    p = Point("async", 2_000_000, 8, 250, W)
    row = summarise(p, _runs(p, [1.0, 3.0, 2.0], reads=2000))
    assert row["wall_s"] == 2.0 and row["wall_min_s"] == 1.0 and row["wall_max_s"] == 3.0
    assert row["ideal_s"] == pytest.approx(0.5) and row["efficiency"] == pytest.approx(0.25)
    assert row["fault_latency_us"] == {"p50": 200.0, "p99": 900.0}
    assert row["host"]["rss_bytes"] == 30 << 20 and row["guest"]["cpu_user_s"] == 2.0
    assert row["swap_latency_ns"] == 2_000_000 and row["swap_latency"] == "2ms"


def test_failed_repeats_are_counted_not_averaged():
    """A failed run is listed in the row's errors and left out of the medians."""
    p = Point("sync", 0, 1, 2000, W)
    runs = _runs(p, [1.0, 2.0]) + [RunResult(p, 3, False, "timed out", 1.0, 0.5, {})]
    row = summarise(p, runs)
    assert row["repeats"] == 3 and row["repeats_ok"] == 2 and row["errors"] == ["timed out"]
    assert row["wall_s"] == 1.5
    empty = summarise(p, [RunResult(p, 1, False, "no report", 1.0, 0.5, {})])
    assert "wall_s" not in empty and empty["repeats_ok"] == 0


def test_speedup_against_sync_and_adaptive_against_the_better_mode():
    """speedup = sync wall / wall at the same point; adaptive is compared with min(sync, async)."""
    rows = []
    for mode, wall in (("sync", 4.0), ("async", 1.0), (ADAPTIVE, 1.25)):
        p = Point(mode, 2_000_000, 8, 250, W)
        rows.append(summarise(p, _runs(p, [wall])))
    add_comparisons(rows)
    speed = {r["mode"]: r["speedup"] for r in rows}
    assert speed == {"sync": 1.0, "async": 4.0, ADAPTIVE: 3.2}
    assert rows[2]["slower_than_best_pct"] == pytest.approx(25.0)


def test_guest_trace_reader_keeps_workload_stalls_only(tmp_path):
    """Stall durations come from the guest process's "stall" spans inside the workload window
    (the span of the non-prefill tasks' run spans); host spans and prefill stalls are left out."""
    g, h = 200, 100
    events = [
        {"name": "process_name", "ph": "M", "pid": h, "tid": 0, "args": {"name": "apf host"}},
        {"name": "process_name", "ph": "M", "pid": g, "tid": 0, "args": {"name": "apf guest guest-1"}},
        {"name": "run", "ph": "X", "ts": 0, "dur": 100, "pid": g, "tid": 0, "args": {"task": "prefill-0"}},
        {"name": "stall", "ph": "X", "ts": 10, "dur": 7, "pid": g, "tid": 0, "args": {}},
        {"name": "run", "ph": "X", "ts": 1000, "dur": 500, "pid": g, "tid": 0, "args": {"task": "random-0"}},
        {"name": "stall", "ph": "X", "ts": 1100, "dur": 40, "pid": g, "tid": 0, "args": {}},
        {"name": "idle", "ph": "X", "ts": 1500, "dur": 20, "pid": g, "tid": 0, "args": {}},
        {"name": "run", "ph": "X", "ts": 1520, "dur": 480, "pid": g, "tid": 0, "args": {"task": "random-1"}},
        {"name": "stall", "ph": "X", "ts": 1600, "dur": 300, "pid": g, "tid": 0, "args": {}},
        {"name": "swap_in", "ph": "X", "ts": 1600, "dur": 999, "pid": h, "tid": 1000, "args": {}},
    ]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": events}))
    t = read_guest_trace(str(path))
    assert sorted(t["stall_us"]) == [40, 300]
    assert t["window_us"] == [1000, 2000]
    names = {span[0] for span in t["spans"]["0"]}
    assert names <= {"run", "stall", "idle"} and "run" in names


def test_markdown_has_the_tables_of_every_section():
    """results.md carries the speedup pivot, every point, the verified runs, the presets and the
    micro-benchmark goals with their status."""
    rows = []
    for mode, wall in (("sync", 2.0), ("async", 1.0)):
        p = Point(mode, 2_000_000, 8, 250, W)
        rows.append(summarise(p, _runs(p, [wall])))
    add_comparisons(rows)
    preset = PRESETS["arm64-v4-compute"]
    results = {
        "command": "apf bench --out x", "duration_s": 3.0, "complete": True,
        "machine": {"nproc": 2, "cpu_model": "cpu", "memory_bytes": 1 << 30, "python": "3.11", "kernel": "6",
                    "loadavg_at_start": [0.5, 0, 0], "loadavg_at_end": [0.6, 0, 0]},
        "plan": {"modes": ["sync", "async"], "sweep": {"workload": vars(W).copy() | {"pattern": "random", "seed": 1},
                                                      "total_accesses": 2000, "repeat": 1}},
        "ideal_formula": "max(...)", "plots": ["speedup.png"],
        "sweep": {"rows": rows, "verified": [{"mode": "sync", "swap_latency_ns": 2_000_000, "tasks": 8, "ok": True,
                                              "error": None, "pages_written": 10, "pages_verified": 10,
                                              "pages_corrupt": 0}],
                  "traced": [{"mode": "async", "swap_latency_ns": 2_000_000, "tasks": 8, "ok": True,
                              "stall_us_summary": {"count": 3, "p50": 1, "p90": 2, "p99": 3, "max": 4}}]},
        "presets": [{"name": preset.name, "title": preset.title, "published": preset.published,
                     "approximation": preset.approximation,
                     "config": {"guest_mem": 32 << 20, "host_mem": 16 << 20, "vcpus": 1, "tasks": 2,
                                "accesses_per_task": 1000, "think_ns": 200_000, "swap_latency_ns": 2_000_000},
                     "modes": {"sync": rows[0] | {"change_vs_sync_pct": 0.0},
                               "async": rows[1] | {"change_vs_sync_pct": -50.0}}}],
        "micro": {"trap": {"error": "RuntimeError: boom", "met": False, "status": "error"}},
    }
    md = markdown(results)
    assert "### Speedup of async over sync" in md and "| 2ms | 2.00 |" in md
    assert "### Every point" in md and "### Verified runs" in md
    assert "arm64-v4-compute" in md and "-50.0 %" in md
    assert "RuntimeError: boom" in md and "![Speedup](speedup.png)" in md


def test_adaptive_is_also_compared_repeat_by_repeat():
    """The paired figure takes, per repeat, adaptive against the better mode of that same repeat,
    then the median: a slow repeat that hit every mode alike does not count against adaptive."""
    rows = []
    # repeat 1 ran on a slow machine (every mode 2x), repeats 2 and 3 on a quiet one
    for mode, walls in (("sync", [8.0, 4.0, 4.0]), ("async", [2.0, 1.0, 1.0]), (ADAPTIVE, [2.2, 1.1, 1.0])):
        p = Point(mode, 2_000_000, 8, 250, W)
        rows.append(summarise(p, _runs(p, walls)))
    add_comparisons(rows)
    assert rows[2]["walls_by_repeat"] == {"0": 2.2, "1": 1.1, "2": 1.0}
    assert rows[2]["slower_than_best_pct"] == pytest.approx(10.0)          # median 1.1 vs median 1.0
    assert rows[2]["slower_than_best_paired_pct"] == pytest.approx(10.0)   # ratios 1.1, 1.1, 1.0
    # A slow spell in repeat 1 that hit async and adaptive, run back to back, and not sync:
    # the medians say +30 %, the pairs 1.05, 1.04 and 1.3 say +5 %.
    rows = []
    for mode, walls in (("sync", [4.0, 4.0, 4.0]), ("async", [1.0, 1.3, 1.0]), (ADAPTIVE, [1.05, 1.35, 1.3])):
        p = Point(mode, 2_000_000, 8, 250, W)
        rows.append(summarise(p, _runs(p, walls)))
    add_comparisons(rows)
    assert rows[2]["slower_than_best_pct"] == pytest.approx(30.0)
    assert rows[2]["slower_than_best_paired_pct"] == pytest.approx(5.0)


def test_a_copy_of_the_better_mode_is_not_slower_against_that_mode():
    """Adaptive here has async's walls in another order: the same behaviour, other draws of the
    noise. Against each repeat's faster mode it looks 5 % slower, because sync's lucky repeat
    (1.0 in the first) counts and its unlucky ones do not; against async itself it is +0 %."""
    rows = []
    for mode, walls in (("sync", [1.0, 1.15, 1.05, 1.15, 1.15]), ("async", [1.05, 1.1, 1.0, 1.0, 1.1]),
                        (ADAPTIVE, [1.05, 1.0, 1.1, 1.1, 1.0])):
        p = Point(mode, 0, 2, 1000, W)
        rows.append(summarise(p, _runs(p, walls)))
    add_comparisons(rows)
    adaptive = rows[2]
    assert adaptive["better_mode"] == "async"                                 # median 1.05 against 1.15
    assert adaptive["slower_than_best_pct"] == pytest.approx(0.0)
    assert adaptive["slower_than_best_paired_pct"] == pytest.approx(5.0)
    assert adaptive["slower_than_better_mode_paired_pct"] == pytest.approx(0.0)
