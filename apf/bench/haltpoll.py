"""The bench's `haltpoll` section: what halt polling (`--halt-poll`, guest/haltpoll.py) buys in
wall time and costs in CPU where asynchronous faults lose today: one task (an async fault can
only idle the vCPU) at short swap latencies. Asked for with `apf bench --only haltpoll`.

At each latency of HALTPOLL_LATENCIES_NS, one task of the sweep's workload runs as sync, async
without polling (the baseline) and async with each window of HALTPOLL_WINDOWS_NS, the
configurations of a repeat back to back (repeats outermost, as in the sweep). Each row keeps the
medians of the workload phase's wall time, the guest's and host's CPU time during it
(report `cpu`) and the poll counters (report `idle`); the ratios are paired: per repeat, the
configuration against async without polling (and against sync) of the same repeat, then the
median of those ratios.
"""
from __future__ import annotations

import os
import statistics
from typing import Any

from apf.bench.plan import (HALTPOLL_LATENCIES_NS, HALTPOLL_WINDOWS_NS, QUICK_HALTPOLL_LATENCIES_NS, Plan, Point,
                            latency_label)
from apf.bench.plan import number as _num
from apf.bench.progress import run_detail
from apf.bench.runner import RunResult, run_point
from shared.units import format_duration_ns

TASKS = 1


def configurations(windows: tuple[int, ...] = HALTPOLL_WINDOWS_NS) -> list[tuple[str, int]]:
    """(mode, poll window ns) of each configuration, baselines first: sync, async, async + each window."""
    return [("sync", 0), ("async", 0), *(("async", w) for w in windows)]


def label(mode: str, window_ns: int) -> str:
    """A configuration's name in tables: "sync", "async", "async + poll 200us"."""
    return mode if not window_ns else f"{mode} + poll {format_duration_ns(window_ns)}"


def haltpoll_points(plan: Plan) -> list[Point]:
    """The section's points in run order (latency, then configuration), on the sweep's workload."""
    lats = QUICK_HALTPOLL_LATENCIES_NS if plan.quick else HALTPOLL_LATENCIES_NS
    return [Point(mode, lat, TASKS, plan.sweep.total_accesses, plan.sweep.workload, halt_poll_ns=window)
            for lat in lats for mode, window in configurations()]


def run_haltpoll(plan: Plan, out: str, progress: Any) -> dict[str, Any]:
    """Run the section; results["haltpoll"]: its parameters and one row per configuration and latency."""
    runs_dir = os.path.join(out, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    points = haltpoll_points(plan)
    runs: dict[tuple[str, int, int], list[RunResult]] = {}
    for rep in range(1, plan.preset_repeat + 1):
        for p in points:
            what = f"haltpoll {label(p.mode, p.halt_poll_ns)} {latency_label(p.latency_ns).split()[0]} #{rep}"
            progress.starting(what)
            r = run_point(p, rep, runs_dir, plan.point_timeout_s)
            progress.finished(what, run_detail(r))
            runs.setdefault((p.mode, p.halt_poll_ns, p.latency_ns), []).append(r)
    rows = [summarise(p, runs[(p.mode, p.halt_poll_ns, p.latency_ns)]) for p in points]
    add_ratios(rows)
    return {"tasks": TASKS, "accesses": plan.sweep.total_accesses, "repeat": plan.preset_repeat,
            "latencies_ns": sorted({p.latency_ns for p in points}), "windows_ns": list(HALTPOLL_WINDOWS_NS),
            "rows": rows}


def extract(report: dict[str, Any]) -> dict[str, Any]:
    """The figures a row needs from one report (workload phase)."""
    cpu, idle = report.get("cpu") or {}, report.get("idle") or {}
    return {"wall_s": report["wall_s"], "idle_s": report["vcpu_idle_s"],
            "guest_cpu_s": cpu.get("guest_s"), "host_cpu_s": cpu.get("host_s"),
            "polls": idle.get("polls", 0), "poll_hits": idle.get("poll_hits", 0),
            "poll_s": idle.get("poll_ns", 0) / 1e9, "parked_p50_us": report.get("parked_us", {}).get("p50")}


def summarise(point: Point, runs: list[RunResult]) -> dict[str, Any]:
    """One row: medians over the successful repeats, and each repeat's figures for the pairing."""
    good = {str(r.repeat): extract(r.report) for r in runs if r.ok}
    row: dict[str, Any] = {"mode": point.mode, "halt_poll_ns": point.halt_poll_ns,
                           "label": label(point.mode, point.halt_poll_ns), "swap_latency_ns": point.latency_ns,
                           "repeats": len(runs), "repeats_ok": len(good), "errors": [r.error for r in runs if not r.ok],
                           "by_repeat": good}
    if not good:
        return row
    for key in ("wall_s", "idle_s", "guest_cpu_s", "host_cpu_s", "polls", "poll_hits", "poll_s", "parked_p50_us"):
        values = [g[key] for g in good.values() if g[key] is not None]
        row[key] = statistics.median(values) if values else None
    walls = [g["wall_s"] for g in good.values()]
    row["wall_min_s"], row["wall_max_s"] = min(walls), max(walls)
    row["hit_ratio"] = row["poll_hits"] / row["polls"] if row["polls"] else None
    return row


def _paired(row: dict[str, Any], base: dict[str, Any], key: str) -> float | None:
    """Median over common repeats of row[key] / base[key] (None: no repeat with both)."""
    mine, theirs = row.get("by_repeat", {}), base.get("by_repeat", {})
    ratios = [mine[rep][key] / theirs[rep][key] for rep in mine
              if rep in theirs and mine[rep][key] is not None and theirs[rep][key]]
    return statistics.median(ratios) if ratios else None


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Per row, paired against async without polling at the same latency: `wall_vs_async`,
    `guest_cpu_vs_async`, `host_cpu_vs_async`; and `speedup_vs_sync` (sync wall / this wall)."""
    by = {(r["mode"], r["halt_poll_ns"], r["swap_latency_ns"]): r for r in rows}
    for r in rows:
        base = by.get(("async", 0, r["swap_latency_ns"]), {})
        sync = by.get(("sync", 0, r["swap_latency_ns"]), {})
        r["wall_vs_async"] = _paired(r, base, "wall_s")
        r["guest_cpu_vs_async"] = _paired(r, base, "guest_cpu_s")
        r["host_cpu_vs_async"] = _paired(r, base, "host_cpu_s")
        inverse = _paired(r, sync, "wall_s")
        r["speedup_vs_sync"] = 1 / inverse if inverse else None


def markdown_section(section: dict[str, Any]) -> list[str]:
    """results.md lines of the section."""
    lines = ["## Halt polling: one task, short swap latencies", "",
             f"{section['tasks']} task x {section['accesses']} accesses, the sweep's workload; "
             f"{section['repeat']} run(s) per configuration, medians; ratios paired per repeat against async "
             "without polling at the same latency. CPU is each daemon's during the workload phase (report `cpu`).",
             "",
             "| swap latency | configuration | wall s | min–max s | speedup vs sync | wall vs async | guest CPU s "
             "| vs async | host CPU s | idle s | polls | hits | polling s | runs ok |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in section["rows"]:
        lines.append(
            f"| {latency_label(r['swap_latency_ns'])} | {r['label']} | {_num(r.get('wall_s'))} | "
            f"{_num(r.get('wall_min_s'))}–{_num(r.get('wall_max_s'))} | {_num(r.get('speedup_vs_sync'), '.2f')} | "
            f"{_num(r.get('wall_vs_async'), '.2f')} | {_num(r.get('guest_cpu_s'))} | "
            f"{_num(r.get('guest_cpu_vs_async'), '.2f')} | {_num(r.get('host_cpu_s'), '.2f')} | "
            f"{_num(r.get('idle_s'))} | {_num(r.get('polls'), '.0f')} | {_num(r.get('poll_hits'), '.0f')} | "
            f"{_num(r.get('poll_s'))} | {r['repeats_ok']}/{r['repeats']} |")
    return lines + [""]
