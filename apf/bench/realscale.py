"""The bench at real-hardware scale, with time dilation (shared/dilation.py; Gupta et al., NSDI
2006; DieCast, NSDI 2008): every point is an `apf run --dilation auto`, its swap latency and
think time given in real-equivalent units, and read on the real-equivalent clock (figures / D).

`scale-check`: the model holds only if real-equivalent results do not depend on D. Probe runs
measure D; every point runs with that D, then again with a `--trap-delay` that doubles the
emulator's measured exit cost and the D measured with it; the row gives how far the real-equivalent speedups of async (and
adaptive) over sync differ between the two factors.

`real-scale` (`apf bench --real-scale`): the break-even map: real-equivalent swap latency (5, 20,
80 µs: far memory; 0.3 ms: NVMe; 1 ms: a network block device) x runnable tasks, each mode.
Every point runs with the one D that probe runs measured (so the modes compared are scaled alike),
and its number of accesses keeps a synchronous run within POINT_BUDGET_S of emulator time. After
the map, the arm64 presets (apf/bench/plan.py PRESETS) run at real scale: the RFC v2 cover letter
gives its swap-ins' latency only as a range, 36 µs to 56 ms, so each swap-in's modelled latency
is drawn from a bounded Pareto over that range with alpha = 1 (ARM64_LATENCY: most near the low
end, median 72 µs, a tail to the top: p99 3.4 ms, mean 0.27 ms), an assumption of ours.
"""
from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass
from typing import Any

from apf.bench.plan import (ARM64_REAL_REPEAT, DELAY_PROBES, PRESETS, REAL_LATENCIES_NS, REAL_TASKS,
                            SCALE_LATENCIES_NS, SCALE_REPEAT, SCALE_TASKS, Point, Preset, Workload)
from apf.bench.plan import number as _n
from apf.bench.progress import run_detail
from apf.bench.runner import RunResult, run_point

REAL_THINK_NS = 4_000          # real-equivalent CPU work per access (x D ~ 50: the sweep's 200 µs)
REAL_WORKLOAD = Workload(guest_mem=8 << 20, host_mem=2 << 20, think_ns=REAL_THINK_NS)
MISS_FRACTION = 1 - REAL_WORKLOAD.host_mem / REAL_WORKLOAD.guest_mem   # random accesses that find their page out
POINT_BUDGET_S = 3.0           # emulator time a synchronous point may take (sets its accesses)
ACCESSES_BOUNDS = (96, 2000)   # total accesses per point, whatever the budget says
SCALE_ACCESSES = 240
PROBE_RUNS = 3                 # short --dilation auto runs whose median D a section's points share
AGREEMENT_PCT = 10.0           # the issue's bound: speedups at the two factors within 10 %
DILATION = ("--dilation", "auto")
ARM64_RANGE_NS = (36_000, 56_000_000)   # the RFC v2 cover letter's swap-in latencies, lowest to highest
ARM64_ALPHA = 1.0
ARM64_LATENCY = (f"swap-latency:pareto:alpha={ARM64_ALPHA:g}:scale={ARM64_RANGE_NS[0]}ns"
                 f":max={ARM64_RANGE_NS[1]}ns")
ARM64_WORKLOAD = Workload(guest_mem=8 << 20, host_mem=4 << 20, think_ns=REAL_THINK_NS)  # twice the limit, as published


@dataclass(frozen=True)
class RealPoint:
    """A point in real-equivalent units: `latency_ns` swap latency, `tasks` memory tasks sharing
    `total_accesses`, in `mode`, with `trap_delay_ns` added to every exit (0: none), dilated by
    `factor` (None: --dilation auto, each run measuring its own)."""
    mode: str
    latency_ns: int
    tasks: int
    total_accesses: int
    workload: Workload = REAL_WORKLOAD
    trap_delay_ns: int = 0
    factor: float | None = None

    def point(self) -> Point:
        dilation = DILATION if self.factor is None else ("--dilation", f"{self.factor:g}")
        extra = dilation + (("--trap-delay", f"{self.trap_delay_ns}ns") if self.trap_delay_ns else ())
        return Point(self.mode, self.latency_ns, self.tasks, max(1, self.total_accesses // self.tasks),
                     self.workload, extra_args=extra)


def accesses_for(latency_ns: float, factor: float, think_ns: int = REAL_THINK_NS, exit_ns: float = 150_000,
                 budget_s: float = POINT_BUDGET_S, miss_fraction: float = MISS_FRACTION) -> int:
    """Total accesses of a point whose synchronous run takes about `budget_s` of emulator time:
    each access thinks D x think, and `miss_fraction` of them trap (an emulator exit, `exit_ns`)
    and wait D x latency."""
    per_access_ns = factor * think_ns + miss_fraction * (factor * latency_ns + exit_ns)
    n = int(budget_s * 1e9 / per_access_ns)
    return max(ACCESSES_BOUNDS[0], min(ACCESSES_BOUNDS[1], n - n % 8))


def _figures(r: RunResult) -> dict[str, Any] | None:
    rep = r.report
    if not r.ok or not rep.get("real_equivalent"):
        return None
    d, real = rep["dilation"], rep["real_equivalent"]
    return {"factor": d["factor"], "measured_exit_ns": d["measured_exit_ns"], "drift": d.get("drift"),
            "reliable": d.get("reliable"), "wall_s": rep["wall_s"], "real_wall_s": real["wall_s"],
            "real_stall_s": real["vcpu_stall_s"], "real_idle_s": real["vcpu_idle_s"],
            "real_fault_p50_us": real["fault_latency_us"]["p50"], "async": rep["faults"]["async"],
            "faults": rep["faults"]["total"], "device_share": d.get("swap_in", {}).get("device_share")}


def _median_row(runs: list[RunResult]) -> dict[str, Any]:
    good = [f for f in (_figures(r) for r in runs) if f]
    row: dict[str, Any] = {"repeats": len(runs), "repeats_ok": len(good), "errors": [r.error for r in runs if not r.ok]}
    if good:
        for key in ("factor", "measured_exit_ns", "wall_s", "real_wall_s", "real_stall_s", "real_idle_s",
                    "real_fault_p50_us", "async", "faults"):
            values = [g[key] for g in good if g[key] is not None]    # an unmeasured exit cost is None
            row[key] = statistics.median(values) if values else None
        shares = [g["device_share"] for g in good if g["device_share"] is not None]
        row["device_share"] = statistics.median(shares) if shares else None
        row["reliable"] = sum(1 for g in good if g["reliable"])
        row["drifts"] = [g["drift"] for g in good]
    return row


def _run(progress: Any, what: str, rp: RealPoint | Point, label: str, runs_dir: str, timeout_s: float) -> RunResult:
    """One run of `rp` (a RealPoint, or a Point already built), with its progress line."""
    if progress is not None:
        progress.starting(what)
    r = run_point(rp.point() if isinstance(rp, RealPoint) else rp, label, runs_dir, timeout_s)
    if progress is not None:
        progress.finished(what, run_detail(r))
    return r


def _speedups(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> None:
    """Each row's real-equivalent speedup over sync at the same `keys`."""
    sync = {tuple(x[k] for k in keys): x.get("real_wall_s") for x in rows if x["mode"] == "sync"}
    for x in rows:
        base = sync.get(tuple(x[k] for k in keys))
        x["speedup_vs_sync"] = base / x["real_wall_s"] if base and x.get("real_wall_s") else None


# -- scale-check -----------------------------------------------------------------------------------

def run_scale_check(modes: tuple[str, ...], quick: bool, out: str, timeout_s: float,
                    progress: Any = None) -> dict[str, Any]:
    """Every point at D (auto), then, with the trap delay set to the median exit cost measured,
    at about 2 D; results["scale-check"]: the rows and, per point, the speedups' difference (%)."""
    runs_dir = os.path.join(out, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    repeat = 1 if quick else SCALE_REPEAT
    grid = [(lat, t, m) for lat in SCALE_LATENCIES_NS for t in SCALE_TASKS for m in modes]
    rows: list[dict[str, Any]] = []
    factor, exit_ns, probes = _probe(0, "D", runs_dir, timeout_s, progress)
    settings = {"D": (factor, 0)}
    trap_delay, factor_2d, probes_2d = _doubling_delay(exit_ns, runs_dir, timeout_s, progress)
    settings["2D"] = (factor_2d, trap_delay)
    for which in ("D", "2D"):
        factor, trap_delay = settings[which]
        runs: dict[tuple, list[RunResult]] = {g: [] for g in grid}
        for rep in range(1, repeat + 1):      # repeats outermost, as in the sweep
            for lat, tasks, mode in grid:
                rp = RealPoint(mode, lat, tasks, SCALE_ACCESSES, trap_delay_ns=trap_delay, factor=factor)
                runs[(lat, tasks, mode)].append(_run(progress, f"scale-check {which} {mode} {lat // 1000}us x{tasks} #{rep}",
                                                     rp, f"scale-{which}-{rep}", runs_dir, timeout_s))
        these = [{"factor_set": which, "mode": m, "latency_ns": lat, "tasks": t, "trap_delay_ns": trap_delay,
                  **_median_row(runs[(lat, t, m)])} for lat, t, m in grid]
        _speedups(these, ("latency_ns", "tasks"))
        rows += these
    agreement = []
    for lat in SCALE_LATENCIES_NS:
        for tasks in SCALE_TASKS:
            for mode in modes:
                if mode == "sync":
                    continue
                a, b = (next(x for x in rows if x["factor_set"] == f and x["mode"] == mode and x["latency_ns"] == lat
                             and x["tasks"] == tasks) for f in ("D", "2D"))
                sa, sb = a.get("speedup_vs_sync"), b.get("speedup_vs_sync")
                wall = {f"{m}_wall_ratio": _ratio(rows, m, lat, tasks) for m in ("sync", mode)}
                agreement.append({"mode": mode, "latency_ns": lat, "tasks": tasks, "factor_d": a.get("factor"),
                                  "factor_2d": b.get("factor"), "speedup_d": sa, "speedup_2d": sb,
                                  "difference_pct": (sb / sa - 1) * 100 if sa and sb else None, **wall})
    diffs = [abs(x["difference_pct"]) for x in agreement if x["difference_pct"] is not None]
    return {"latencies_ns": list(SCALE_LATENCIES_NS), "tasks": list(SCALE_TASKS), "accesses": SCALE_ACCESSES,
            "repeat": repeat, "think_ns": REAL_THINK_NS, "trap_delay_ns": trap_delay, "modes": list(modes),
            "factors": {k: v[0] for k, v in settings.items()}, "probes": probes + probes_2d,
            "rows": rows, "agreement": agreement, "max_difference_pct": max(diffs) if diffs else None,
            "bound_pct": AGREEMENT_PCT}


def _probe(trap_delay: int, label: str, runs_dir: str, timeout_s: float, progress: Any) -> tuple[float, int, list]:
    """D and the exit cost (medians of PROBE_RUNS short `--dilation auto` runs) with `trap_delay`;
    and each probe's [trap delay, measured exit, D]. Every point of a set then runs with this one
    D, so that the modes it compares are scaled alike."""
    found = []
    for i in range(PROBE_RUNS):
        r = _run(progress, f"probe {label} #{i + 1}", RealPoint("sync", REAL_LATENCIES_NS[1], 1, 16,
                 trap_delay_ns=trap_delay), f"probe-{label}-{i + 1}", runs_dir, timeout_s)
        f = _figures(r)
        if f is not None:
            found.append([trap_delay, f["measured_exit_ns"], f["factor"]])
    if not found:
        return 50.0, 150_000, found
    return (round(statistics.median(x[2] for x in found), 3), int(statistics.median(x[1] for x in found)), found)


def _doubling_delay(exit_ns: int, runs_dir: str, timeout_s: float, progress: Any) -> tuple[int, float, list]:
    """A --trap-delay that makes the measured exit cost about 2 x `exit_ns`: start from `exit_ns`
    and correct it once from the probes (the delay need not add exactly itself). Returns the
    delay, the D it gives and the probes."""
    delay, probes = exit_ns, []
    for attempt in range(2):
        factor, measured, found = _probe(delay, f"2D-{attempt + 1}", runs_dir, timeout_s, progress)
        probes += found
        added = measured - exit_ns
        if attempt or added <= 0 or abs(measured / exit_ns - 2.0) <= 0.15:
            return delay, factor, probes
        delay = max(1_000, int(delay * exit_ns / added))
    return delay, factor, probes


def _ratio(rows: list[dict[str, Any]], mode: str, lat: int, tasks: int) -> float | None:
    """Real-equivalent wall at 2D over that at D, for one mode and point (1.0: D does not matter)."""
    a, b = (next((x for x in rows if x["factor_set"] == f and x["mode"] == mode and x["latency_ns"] == lat
                  and x["tasks"] == tasks), {}) for f in ("D", "2D"))
    return b["real_wall_s"] / a["real_wall_s"] if a.get("real_wall_s") and b.get("real_wall_s") else None


# -- real-scale ------------------------------------------------------------------------------------

def run_real_scale(modes: tuple[str, ...], out: str, timeout_s: float, progress: Any = None,
                   latencies: tuple[int, ...] = REAL_LATENCIES_NS, tasks: tuple[int, ...] = REAL_TASKS,
                   repeat: int = 1) -> dict[str, Any]:
    """A probe run for D, then the map; results["real-scale"]: the rows (real-equivalent wall, the
    speedup over sync, D, whether the exit cost held) and the break-even latency per task count."""
    runs_dir = os.path.join(out, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    factor, exit_ns, probes = _probe(0, "D", runs_dir, timeout_s, progress)
    rows = []
    for lat in latencies:
        n = accesses_for(lat, factor, exit_ns=exit_ns)
        for t in tasks:
            for mode in modes:
                rp = RealPoint(mode, lat, t, n, factor=factor)
                runs = [_run(progress, f"real-scale {mode} {lat // 1000}us x{t} #{rep}", rp, f"real-{rep}", runs_dir,
                             timeout_s) for rep in range(1, repeat + 1)]
                rows.append({"mode": mode, "latency_ns": lat, "tasks": t, "total_accesses": n, **_median_row(runs)})
    _speedups(rows, ("latency_ns", "tasks"))
    arm64 = run_arm64_real_scale(modes, factor, exit_ns, runs_dir, timeout_s, progress,
                                 max(repeat, ARM64_REAL_REPEAT))
    return {"arm64": arm64, "arm64_latency": ARM64_LATENCY, "arm64_mean_latency_ns": arm64_mean_latency_ns(),
            "latencies_ns": list(latencies), "tasks": list(tasks), "think_ns": REAL_THINK_NS,
            "workload": {"guest_mem": REAL_WORKLOAD.guest_mem, "host_mem": REAL_WORKLOAD.host_mem},
            "probe_factor": factor, "probes": probes, "repeat": repeat, "modes": list(modes), "rows": rows,
            "break_even": break_even(rows, modes, tasks)}


def break_even(rows: list[dict[str, Any]], modes: tuple[str, ...], tasks: tuple[int, ...]) -> dict[str, Any]:
    """Per mode other than sync and task count: the smallest real-equivalent latency (ns) from
    which on the mode is faster than sync at every latency measured, or None."""
    found: dict[str, Any] = {}
    for mode in modes:
        if mode == "sync":
            continue
        for t in tasks:
            mine = sorted((x for x in rows if x["mode"] == mode and x["tasks"] == t), key=lambda x: x["latency_ns"])
            pays = None
            for x in reversed(mine):
                if not x.get("speedup_vs_sync") or x["speedup_vs_sync"] <= 1.0:
                    break
                pays = x["latency_ns"]
            found[f"{mode}/{t}"] = pays
    return found


# -- the arm64 presets at real scale -------------------------------------------------------------------

def arm64_mean_latency_ns(low_ns: int = ARM64_RANGE_NS[0], high_ns: int = ARM64_RANGE_NS[1],
                          alpha: float = ARM64_ALPHA) -> float:
    """The mean of the bounded Pareto on [low, high] with shape alpha (ns)."""
    if alpha == 1.0:
        return low_ns * high_ns / (high_ns - low_ns) * math.log(high_ns / low_ns)
    return (low_ns ** alpha / (1 - (low_ns / high_ns) ** alpha) * alpha / (alpha - 1)
            * (1 / low_ns ** (alpha - 1) - 1 / high_ns ** (alpha - 1)))


def arm64_point(preset: Preset, mode: str, factor: float, exit_ns: float) -> Point:
    """`preset` at real scale in `mode`: the RFC v2 latency distribution as every swap-in's
    modelled latency, --dilation `factor`, accesses for POINT_BUDGET_S of emulator time, and a
    compute task's work (real-equivalent) as much as the hog waits at the distribution's mean."""
    w = ARM64_WORKLOAD
    miss = 1 - w.host_mem / w.guest_mem
    mean = arm64_mean_latency_ns()
    accesses = accesses_for(mean, factor, exit_ns=exit_ns, miss_fraction=miss)
    work = round(accesses * miss * mean) if preset.compute_tasks else 0
    return Point(mode, 0, preset.tasks, accesses, w, compute_tasks=preset.compute_tasks, compute_work_ns=work,
                 extra_args=("--dilation", f"{factor:g}", "--inject", ARM64_LATENCY))


def run_arm64_real_scale(modes: tuple[str, ...], factor: float, exit_ns: float, runs_dir: str, timeout_s: float,
                         progress: Any = None, repeat: int = ARM64_REAL_REPEAT) -> list[dict[str, Any]]:
    """Each arm64 preset in each mode, `repeat` times at D = `factor`; rows with the medians and
    the run-time change against sync (%), beside what the series published."""
    rows = []
    for preset in PRESETS.values():
        for mode in modes:
            point = arm64_point(preset, mode, factor, exit_ns)
            runs = [_run(progress, f"real-scale {preset.name} {mode} #{rep}", point, f"arm64-{preset.name}-{rep}",
                         runs_dir, timeout_s) for rep in range(1, repeat + 1)]
            rows.append({"preset": preset.name, "mode": mode, "accesses": point.accesses_per_task,
                         "compute_work_ns": point.compute_work_ns, "published": preset.published,
                         "published_change_pct": list(preset.published_change_pct), **_median_row(runs)})
    _speedups(rows, ("preset",))
    for x in rows:
        x["change_pct"] = (1 / x["speedup_vs_sync"] - 1) * 100 if x.get("speedup_vs_sync") else None
    return rows


# -- results.md ------------------------------------------------------------------------------------



def _lat(ns: int) -> str:
    return f"{ns / 1000:g} µs" if ns < 1_000_000 else f"{ns / 1e6:g} ms"


def markdown_scale_check(section: dict[str, Any]) -> list[str]:
    lines = ["## Scale-invariance check (time dilation)", "",
             f"Each point at D = {_n(section.get('factors', {}).get('D'), '.1f')} and at about 2 D = "
             f"{_n(section.get('factors', {}).get('2D'), '.1f')} (`--trap-delay {section['trap_delay_ns'] / 1000:.0f}us`), "
             f"each D the median of three `--dilation auto` probe runs, every point of a set run with `--dilation D`; {section['accesses']} accesses, think {section['think_ns'] / 1000:g} µs "
             f"(real-equivalent), {section['repeat']} repeat(s), medians. Speedup: real-equivalent wall of sync over "
             f"the mode's. Max difference {_n(section['max_difference_pct'], '.1f')} % (bound {section['bound_pct']:g} %).", "",
             "| mode | latency | tasks | D | 2D | speedup at D | at 2D | difference | sync wall 2D/D | mode wall 2D/D |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in section["agreement"]:
        lines.append(f"| {x['mode']} | {_lat(x['latency_ns'])} | {x['tasks']} | {_n(x['factor_d'], '.1f')} | "
                     f"{_n(x['factor_2d'], '.1f')} | {_n(x['speedup_d'], '.2f')} | {_n(x['speedup_2d'], '.2f')} | "
                     f"{_n(x['difference_pct'], '+.1f')} % | {_n(x.get('sync_wall_ratio'), '.2f')} | "
                     f"{_n(x.get(x['mode'] + '_wall_ratio'), '.2f')} |")
    return lines + [""]


def markdown_real_scale(section: dict[str, Any]) -> list[str]:
    lines = ["## Break-even map at real-hardware scale (time dilation)", "",
             f"Real-equivalent units throughout (`--dilation {section['probe_factor']:g}`: the median D of three `--dilation auto` probe runs); think "
             f"{section['think_ns'] / 1000:g} µs per access; {section['workload']['guest_mem'] >> 20} MiB guest, "
             f"{section['workload']['host_mem'] >> 20} MiB host; {section['repeat']} repeat(s).", "",
             "| latency | tasks | mode | accesses | D | real wall ms | speedup vs sync | async faults | device share | exit cost held |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for x in section["rows"]:
        held = f"{x.get('reliable', 0)}/{x.get('repeats_ok', 0)}"
        lines.append(f"| {_lat(x['latency_ns'])} | {x['tasks']} | {x['mode']} | {x['total_accesses']} | "
                     f"{_n(x.get('factor'), '.1f')} | {_n(None if x.get('real_wall_s') is None else x['real_wall_s'] * 1e3, '.2f')} | "
                     f"{_n(x.get('speedup_vs_sync'), '.2f')} | {_n(x.get('async'), '.0f')} | "
                     f"{_n(x.get('device_share'), '.1%')} | {held} |")
    lines += ["", "Break-even (smallest latency from which the mode beats sync at every latency above it):", ""]
    for key, ns in section["break_even"].items():
        lines.append(f"- {key} tasks: {'never in this range' if ns is None else _lat(ns)}")
    return lines + [""] + _markdown_arm64(section)


def _markdown_arm64(section: dict[str, Any]) -> list[str]:
    rows = section.get("arm64") or []
    if not rows:
        return []
    lines = ["### The arm64 presets at real scale", "",
             f"Every swap-in's modelled latency drawn from the RFC v2 range as a bounded Pareto "
             f"(`--inject {section['arm64_latency']}`, mean {section['arm64_mean_latency_ns'] / 1000:.0f} µs, "
             f"real-equivalent), `--dilation {section['probe_factor']:g}`; "
             f"{ARM64_WORKLOAD.guest_mem >> 20} MiB guest, {ARM64_WORKLOAD.host_mem >> 20} MiB host; medians.", "",
             "| preset | mode | accesses | real wall ms | run time vs sync | published (v4) |",
             "|---|---|---:|---:|---:|---|"]
    for x in rows:
        lo, hi = x["published_change_pct"]
        pub = f"{lo:+.1f} %" if lo == hi else f"{lo:+.1f} to {hi:+.1f} %"
        lines.append(f"| {x['preset']} | {x['mode']} | {x['accesses']} | "
                     f"{_n(None if x.get('real_wall_s') is None else x['real_wall_s'] * 1e3, '.1f')} | "
                     f"{_n(x.get('change_pct'), '+.1f')} % | {pub if x['mode'] != 'sync' else ''} |")
    return lines + [""]

