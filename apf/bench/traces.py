"""The bench's `traces` section: sync, async and adaptive on each shipped trace of a real program
(traces/), at two swap latencies and 1 and 4 tasks, host memory at HOST_FRACTION of the
footprint the tasks touch (distinct pages x tasks), every page prefilled so the workload starts
swapped. In the default sections (not with --quick); alone with `apf bench --only traces`.

Each point is one real `apf run --workload trace:FILE --accesses N` (N page-level records per
task from each task's start point); the row keeps wall time, per-record time, faults, async
faults and stall, and the speedup of each mode over sync at the same point. The points at the
lowest latency also read every written page back (`pages_verified`); at the highest, reading the
whole footprint of 4 tasks back one swap-in at a time would take minutes a point, so they skip it
(tests/integration/test_trace_workload.py verifies every shipped trace in both modes).
"""
from __future__ import annotations

import os
from typing import Any

from apf.bench.plan import ADAPTIVE, TRACES_LATENCIES_NS, TRACES_SHIPPED, TRACES_TASKS, Point, Workload
from apf.bench.plan import number as _num
from apf.bench.progress import run_detail
from apf.bench.runner import run_point
from shared.memtrace import PAGE_SIZE, read_header

TRACES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "traces")
SHIPPED, LATENCIES_NS, TASKS = TRACES_SHIPPED, TRACES_LATENCIES_NS, TRACES_TASKS
HOST_FRACTION = 0.25
RECORDS_PER_TASK = 20000
QUICK_RECORDS_PER_TASK = 1000


def trace_points(modes: tuple[str, ...], quick: bool, traces_dir: str = TRACES_DIR) -> list[tuple[str, Point]]:
    """(trace name, point) of the section: every trace x latency x tasks x mode."""
    records = QUICK_RECORDS_PER_TASK if quick else RECORDS_PER_TASK
    points = []
    for name in SHIPPED:
        path = os.path.join(traces_dir, name)
        distinct = read_header(path).distinct_pages
        for tasks in TASKS:
            pages = distinct * tasks
            guest_mem = -(-(pages * PAGE_SIZE + (1 << 20)) // (1 << 20)) << 20
            host_mem = max(16, int(pages * HOST_FRACTION)) * PAGE_SIZE
            workload = Workload(guest_mem=guest_mem, host_mem=host_mem, think_ns=0, pattern=f"trace:{path}")
            for latency in LATENCIES_NS:
                for mode in modes:
                    points.append((name, Point(mode, latency, tasks, records, workload,
                                               verify=latency == min(LATENCIES_NS))))
    return points


def run_traces(modes: tuple[str, ...], quick: bool, out: str, timeout_s: float, progress: Any = None) -> dict[str, Any]:
    """Run the section; results["traces"]: the parameters and one row per point."""
    runs_dir = os.path.join(out, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for name, point in trace_points(modes, quick):
        what = f"traces {point.name(name.split('.')[0])}"
        if progress is not None:
            progress.starting(what)
        result = run_point(point, name.split(".")[0], runs_dir, timeout_s)
        if progress is not None:
            progress.finished(what, run_detail(result))
        r = result.report
        rows.append({
            "trace": name, "mode": point.mode, "latency_ns": point.latency_ns, "tasks": point.tasks,
            "records_per_task": point.accesses_per_task, "guest_mem": point.workload.guest_mem,
            "host_mem": point.workload.host_mem, "ok": result.ok, "error": result.error,
            "wall_s": r.get("wall_s"), "us_per_record": (r["wall_s"] * 1e6 / point.total_accesses)
            if r.get("wall_s") else None,
            "faults": r.get("faults", {}).get("total"), "async": r.get("faults", {}).get("async"),
            "stall_s": r.get("vcpu_stall_s"), "idle_s": r.get("vcpu_idle_s"),
            "pages_touched": r.get("pages_touched"), "verified": point.verify,
            "pages_verified": r.get("pages_verified") if point.verify else None,
            "pages_corrupt": r.get("pages_corrupt"),
        })
    sync = {(x["trace"], x["latency_ns"], x["tasks"]): x["wall_s"] for x in rows if x["mode"] == "sync"}
    for x in rows:
        base = sync.get((x["trace"], x["latency_ns"], x["tasks"]))
        x["speedup_vs_sync"] = base / x["wall_s"] if base and x["wall_s"] else None
    return {"host_fraction": HOST_FRACTION, "latencies_ns": list(LATENCIES_NS), "tasks": list(TASKS),
            "records_per_task": QUICK_RECORDS_PER_TASK if quick else RECORDS_PER_TASK,
            "modes": list(modes), "adaptive": ADAPTIVE in modes, "rows": rows}


def markdown_section(section: dict[str, Any]) -> list[str]:
    """results.md lines of the section."""
    lines = ["## Real programs: the shipped traces", "",
             f"Each trace replayed by 1 and 4 tasks ({section['records_per_task']} page-level records each, "
             f"private pages), host memory {section['host_fraction']:.0%} of the pages the tasks touch, "
             "prefilled; no --think: the compute between records is the trace's own (instructions x the "
             "measured ns per instruction). Pages verified: every written page read back (the lowest "
             "latency only).", "",
             "| trace | latency | tasks | mode | wall s | us / record | faults | async | stall s | speedup vs sync "
             "| pages touched | pages verified | ok |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for x in section["rows"]:
        lines.append(f"| {x['trace']} | {x['latency_ns'] / 1e6:g} ms | {x['tasks']} | {x['mode']} | "
                     f"{_num(x['wall_s'])} | {_num(x['us_per_record'], '.0f')} | {x['faults']} | {x['async']} | "
                     f"{_num(x['stall_s'])} | {_num(x['speedup_vs_sync'], '.2f')} | {_int(x.get('pages_touched'))} | "
                     f"{_int(x.get('pages_verified'))} | {'yes' if x['ok'] else 'NO'} |")
    return lines + [""]


def _int(value: Any) -> str:
    return "–" if value is None else f"{value:,}"
