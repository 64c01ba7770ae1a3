"""The figures of `apf bench`: a row of medians per point from its runs' reports, the ideal it is
measured against, speedups over sync, how adaptive compares with the better of sync and async,
and summaries of the per-fault latencies and the load average.

The ideal wall time of a point is the larger of two lower bounds:

    cpu_limit = (tasks * accesses_per_task * think + compute_tasks * compute_work) / vcpus
                                                     (the work itself, perfectly packed)
    io_limit  = (swap_reads - readahead_pages + swap_writes) * swap_latency / io_depth
                                                     (every swap I/O request overlapped, depth-wide)

`swap_reads` and `swap_writes` are the host's swap I/O during the workload phase,
report["workload_swap"]: a write-back takes the modelled latency on the same io_depth workers as a
swap-in, so both count. Pages read ahead (`readahead.pages`) come in the request of the major
fault that read them, under its one latency, so the I/O actually issued is the reads less them.
Clean pages dropped without a write (`clean_drops`) issue none. A report without that field (from an older guest) gives only the whole
run's report["swap"]["reads"], which with --prefill and without verification are the workload's
swap-ins, and no write-backs. The real device time of an I/O is left out of io_limit (it is not a
configured cost), so at latency 0 the ideal is the CPU limit. Efficiency is ideal / measured wall time.
"""
from __future__ import annotations

import statistics
from typing import Any

from apf.bench.plan import ADAPTIVE, MODES, Point, latency_label
from apf.bench.runner import RunResult

IDEAL_FORMULA = ("ideal_s = max((tasks*accesses_per_task*think + compute_tasks*compute_work)/vcpus, "
                 "(swap_reads - readahead_pages + swap_writes)*swap_latency/io_depth); swap_reads, "
                 "swap_writes, readahead_pages = report.workload_swap (reports without it: report.swap.reads, "
                 "no writes); efficiency = ideal_s / wall_s")
MEMORY_MODEL_COUNTS = ("clean_drops", "write_protect", "readahead_pages", "readahead_hits")


def workload_swap(report: dict[str, Any]) -> tuple[int, int | None]:
    """(swap-ins, write-backs) of the workload phase; a report from before per-phase swap counts
    gives the whole run's swap-ins (the workload's, with --prefill and --no-verify) and None."""
    phase = report.get("workload_swap")
    if phase is None:
        return report["swap"]["reads"], None
    return phase["reads"], phase["writes"]


def memory_model_counts(report: dict[str, Any]) -> dict[str, int]:
    """The workload phase's clean drops, write-protect faults and readahead pages and hits (0 in
    reports from before the host modelled them)."""
    phase = report.get("workload_swap") or {}
    readahead = phase.get("readahead") or {}
    return {"clean_drops": phase.get("clean_drops", 0), "write_protect": phase.get("write_protect", 0),
            "readahead_pages": readahead.get("pages", 0), "readahead_hits": readahead.get("hits", 0)}


def extract(report: dict[str, Any]) -> dict[str, Any]:
    """The figures a row needs from one report."""
    res = lambda side: {k: report.get(side, {}).get(k, 0) for k in ("rss_bytes", "cpu_user_s", "cpu_system_s")}  # noqa: E731
    reads, writes = workload_swap(report)
    return {
        "wall_s": report["wall_s"], "vcpu_stall_s": report["vcpu_stall_s"], "vcpu_idle_s": report["vcpu_idle_s"],
        "fault_p50_us": report["fault_latency_us"]["p50"], "fault_p99_us": report["fault_latency_us"]["p99"],
        "faults": report["faults"]["total"], "faults_async": report["faults"]["async"],
        "major_faults": reads, "write_backs": writes, "prefill_s": report.get("prefill_s", 0.0),
        "host": res("host"), "guest": res("guest"), **memory_model_counts(report),
    }


def ideal(point: Point, major_faults: float, write_backs: float = 0, readahead_pages: float = 0) -> dict[str, float]:
    """cpu_limit_s, io_limit_s and ideal_s (their max), in seconds, of `point` given its swap-ins
    (pages read, `readahead_pages` of them read ahead in other faults' requests) and write-backs
    during the workload phase (see the module docstring)."""
    w = point.workload
    cpu = (point.total_accesses * w.think_ns + point.compute_tasks * point.compute_work_ns) / 1e9 / w.vcpus
    io = (major_faults - readahead_pages + write_backs) * point.latency_ns / 1e9 / w.io_depth
    return {"cpu_limit_s": cpu, "io_limit_s": io, "ideal_s": max(cpu, io)}


def summarise(point: Point, runs: list[RunResult]) -> dict[str, Any]:
    """One row: medians over the point's successful repeats, min/max of the wall time."""
    good = [extract(r.report) for r in runs if r.ok]
    row: dict[str, Any] = {
        "mode": point.mode, "swap_latency_ns": point.latency_ns, "swap_latency": latency_label(point.latency_ns),
        "tasks": point.tasks, "accesses_per_task": point.accesses_per_task,
        "total_accesses": point.total_accesses, "repeats": len(runs), "repeats_ok": len(good),
        "errors": [r.error for r in runs if not r.ok],
    }
    if not good:
        return row
    med = lambda key: statistics.median(g[key] for g in good)  # noqa: E731
    walls = [g["wall_s"] for g in good]
    major = med("major_faults")
    # Reports from before per-phase swap counts have no write-backs: the ideal then counts swap-ins only.
    writes = med("write_backs") if all(g["write_backs"] is not None for g in good) else None
    row.update({
        "wall_s": statistics.median(walls), "wall_min_s": min(walls), "wall_max_s": max(walls), "walls_s": walls,
        "walls_by_repeat": {str(r.repeat): r.report["wall_s"] for r in runs if r.ok},
        "spread_pct": (max(walls) - min(walls)) / statistics.median(walls) * 100,
        "vcpu_stall_s": med("vcpu_stall_s"), "vcpu_idle_s": med("vcpu_idle_s"),
        "fault_latency_us": {"p50": med("fault_p50_us"), "p99": med("fault_p99_us")},
        "faults": med("faults"), "faults_async": med("faults_async"), "major_faults": major,
        "write_backs": writes, "prefill_s": med("prefill_s"),
        **{k: med(k) for k in MEMORY_MODEL_COUNTS},
        **ideal(point, major, writes or 0, med("readahead_pages")),
        "host": {k: statistics.median(g["host"][k] for g in good) for k in good[0]["host"]},
        "guest": {k: statistics.median(g["guest"][k] for g in good) for k in good[0]["guest"]},
    })
    row["efficiency"] = row["ideal_s"] / row["wall_s"] if row["wall_s"] else None
    return row


def add_comparisons(rows: list[dict[str, Any]]) -> None:
    """speedup = sync wall / this wall at the same (latency, tasks); for adaptive rows also how much
    slower it is than the better of sync and async there."""
    by_key = {(r["mode"], r["swap_latency_ns"], r["tasks"]): r for r in rows}
    for r in rows:
        sync = by_key.get(("sync", r["swap_latency_ns"], r["tasks"]), {})
        r["speedup"] = sync["wall_s"] / r["wall_s"] if "wall_s" in r and "wall_s" in sync else None
        if r["mode"] == ADAPTIVE:
            r.update(adaptive_comparison(r, [by_key.get((m, r["swap_latency_ns"], r["tasks"]), {}) for m in MODES]))


def adaptive_comparison(adaptive: dict[str, Any], others: list[dict[str, Any]]) -> dict[str, Any]:
    """How much slower adaptive is than the better of the other modes at one point, three ways:

    slower_than_best_pct                  its median wall against the best median
    slower_than_best_paired_pct           per repeat, against the faster mode of that repeat
    slower_than_better_mode_paired_pct    per repeat, against the same mode every time: `better_mode`,
                                          the one with the best median

    Pairing cancels the machine's slow spells (a repeat's modes run back to back). Taking the
    faster of two modes in each repeat, though, is biased where the two are close: the minimum of
    two noisy walls is below either one's typical wall, so even a copy of the better mode would
    look slower. The third figure pairs without that bias."""
    if not adaptive.get("wall_s"):
        return {}
    rated = [o for o in others if o.get("wall_s")]
    if not rated:
        return {}
    better = min(rated, key=lambda o: o["wall_s"])
    return {"best_other_wall_s": better["wall_s"],
            "slower_than_best_pct": (adaptive["wall_s"] / better["wall_s"] - 1) * 100,
            "slower_than_best_paired_pct": paired_slower_pct(adaptive, rated),
            "better_mode": better.get("mode"),
            "slower_than_better_mode_paired_pct": paired_slower_pct(adaptive, [better])}


def paired_slower_pct(adaptive: dict[str, Any], others: list[dict[str, Any]]) -> float | None:
    """Median over repeats of (adaptive wall / the better other mode's wall in the same repeat - 1),
    in %. The modes of one repeat run back to back, so a slow minute of the machine hits all of
    them; this cancels it where comparing medians over repeats does not. None: no common repeat."""
    mine = adaptive.get("walls_by_repeat", {})
    theirs = [o.get("walls_by_repeat", {}) for o in others if o.get("walls_by_repeat")]
    ratios = [wall / min(t[rep] for t in theirs) for rep, wall in mine.items()
              if theirs and all(rep in t for t in theirs)]
    return (statistics.median(ratios) - 1) * 100 if ratios else None


def add_preset_changes(rows: dict[str, dict[str, Any]]) -> None:
    """For one preset's rows (mode -> row): each mode's change of wall time against sync, in %,
    and for adaptive also how it compares with the better of sync and async."""
    sync_wall = rows.get("sync", {}).get("wall_s")
    for row in rows.values():
        if sync_wall and row.get("wall_s"):
            row["change_vs_sync_pct"] = (row["wall_s"] / sync_wall - 1) * 100
    if ADAPTIVE in rows:
        rows[ADAPTIVE].update(adaptive_comparison(rows[ADAPTIVE], [rows.get(m, {}) for m in MODES]))


def stall_summary(samples: list[float]) -> dict[str, Any]:
    """count, p50, p90, p99 and max of per-fault latencies (µs; at least one sample), each a sample."""
    s = sorted(samples)
    return {"count": len(s), "p50": s[len(s) // 2], "p90": s[int(len(s) * 0.9)],
            "p99": s[min(len(s) - 1, int(len(s) * 0.99))], "max": s[-1]}


def load_summary(loads: list[float]) -> dict[str, float]:
    """min, median and max of the 1-minute load averages taken before each run (at least one)."""
    return {"min": min(loads), "median": statistics.median(loads), "max": max(loads)}
