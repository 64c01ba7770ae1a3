"""`apf bench`: the performance numbers, measured, with the limits they are measured against.

Three sections, written to `--out DIR`: results.json, results.md, PNG plots, plot_data.json (what
the plots are drawn from, so `--replot` can redraw them) and runs/ (the report of every run).

- **sweep**: fault mode {sync, async (, adaptive)} x modelled swap latency x runnable tasks, on one
  fixed seeded workload whose total number of accesses is the same at every task count. Each
  point is a real `apf run` (host and guest processes), repeated; the median wall time of the
  workload phase is the result and min/max its spread. One verified run per mode checks that no
  page was corrupted; traced runs give per-fault latencies (CDF) and a vCPU timeline.
- **presets**: the two scenarios the arm64 series published: a memory hog beside a compute-only
  task (`--compute-tasks`), and the hog alone.
- **micro**: the emulator's own costs against their limits (apf/microbench.py).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from typing import Any, Callable

from apf.bench.plan import (ADAPTIVE, DEFAULT_REPEAT, POINT_TIMEOUT_S, PRESETS, BenchError, Plan, Point,
                            Sweep, Workload, build_plan, count_runs, host_accepts_adaptive, latency_label)
from apf.bench.analysis import IDEAL_FORMULA, add_comparisons, add_preset_changes, ideal, summarise
from apf.bench.markdown import markdown
from apf.bench.output import RESULTS_JSON, RESULTS_MD, redraw, write_outputs
from apf.bench.progress import Progress, run_detail
from apf.bench.runner import RunResult, run_point
from apf.units import parse_duration_ns, parse_size

BENCH_VERSION = 1


# -- machine and noise ---------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    import psutil
    cpu_model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "memory_bytes": psutil.virtual_memory().total,
            "python": platform.python_version(), "cpu_model": cpu_model, "kernel": platform.release(),
            "loadavg_at_start": os.getloadavg()}


# -- the sections --------------------------------------------------------------------------------

def run_sweep(plan: Plan, out: str, progress: Progress) -> dict[str, Any]:
    runs_dir = os.path.join(out, "runs")
    points = plan.sweep.points(plan.modes)
    results: dict[tuple, list[RunResult]] = {p.key: [] for p in points}
    # Repeats outermost: a burst of noise from elsewhere hits one repeat of many points, which the
    # median absorbs, rather than every repeat of one point.
    for rep in range(1, plan.sweep.repeat + 1):
        for p in points:
            what = f"{p.mode} {latency_label(p.latency_ns).split()[0]} x{p.tasks} #{rep}"
            progress.starting(what)
            r = run_point(p, rep, runs_dir, plan.point_timeout_s)
            results[p.key].append(r)
            progress.finished(what, run_detail(r))
    rows = [summarise(p, results[p.key]) for p in points]
    add_comparisons(rows)
    loads = [r.loadavg for rs in results.values() for r in rs]

    verify_lat, focus_tasks = plan.sweep.verify_point
    verified = []
    for mode in plan.modes:
        p = replace(next(q for q in points if q.key == (mode, verify_lat, focus_tasks)), verify=True)
        what = f"{mode} {latency_label(verify_lat).split()[0]} x{focus_tasks} verified"
        progress.starting(what)
        r = run_point(p, "verified", runs_dir, plan.point_timeout_s)
        progress.finished(what, run_detail(r))
        rep = r.report
        verified.append({"mode": mode, "swap_latency_ns": verify_lat, "tasks": focus_tasks, "ok": r.ok,
                         "error": r.error, "pages_written": rep.get("pages_written"),
                         "pages_verified": rep.get("pages_verified"), "pages_corrupt": rep.get("pages_corrupt")})

    traces = run_traced(plan, points, out, progress)
    return {"rows": rows, "verified": verified, "traced": traces, "loadavg": loads}


def run_traced(plan: Plan, points: list[Point], out: str, progress: Progress) -> list[dict[str, Any]]:
    """Runs with --trace, never timed: per-fault latencies from the guest's "stall" spans and the
    run / stall / idle timeline of each vCPU."""
    from apf.bench.plots import read_guest_trace

    traces_dir = os.path.join(out, "traces")
    os.makedirs(traces_dir, exist_ok=True)
    focus_lat, focus_tasks = plan.sweep.focus
    traced = []
    for lat in plan.sweep.cdf_latencies:
        for mode in plan.modes:
            p = next(q for q in points if q.key == (mode, lat, focus_tasks))
            trace_path = os.path.join(traces_dir, p.name("trace") + ".json")
            what = f"{mode} {latency_label(lat).split()[0]} x{focus_tasks} traced"
            progress.starting(what)
            r = run_point(p, "traced", os.path.join(out, "runs"), plan.point_timeout_s, trace=trace_path)
            progress.finished(what, run_detail(r))
            entry: dict[str, Any] = {"mode": mode, "swap_latency_ns": lat, "tasks": focus_tasks, "ok": r.ok,
                                     "error": r.error, "timeline": lat == focus_lat}
            if r.ok and os.path.exists(trace_path):
                t = read_guest_trace(trace_path)
                entry.update(stall_us=t["stall_us"], window_us=t["window_us"],
                             spans=t["spans"] if lat == focus_lat else None)
            if not plan.keep_traces and os.path.exists(trace_path):
                os.unlink(trace_path)
            traced.append(entry)
    if not plan.keep_traces:
        try:
            os.rmdir(traces_dir)
        except OSError:
            pass
    return traced


def run_presets(plan: Plan, out: str, progress: Progress) -> list[dict[str, Any]]:
    runs_dir = os.path.join(out, "runs")
    results: dict[tuple[str, str], list[RunResult]] = {}
    for rep in range(1, plan.preset_repeat + 1):
        for preset in plan.presets:
            for mode in plan.modes:
                p = preset.point(mode)
                what = f"{preset.name} {mode} #{rep}"
                progress.starting(what)
                r = run_point(p, f"{preset.name}-{rep}", runs_dir, plan.point_timeout_s)
                results.setdefault((preset.name, mode), []).append(r)
                progress.finished(what, run_detail(r))
    out_rows = []
    for preset in plan.presets:
        rows = {mode: summarise(preset.point(mode), results[(preset.name, mode)]) for mode in plan.modes}
        entry: dict[str, Any] = {"name": preset.name, "title": preset.title, "published": preset.published,
                                 "published_change_pct": list(preset.published_change_pct),
                                 "approximation": preset.approximation,
                                 "config": {**asdict(preset.workload), "tasks": preset.tasks,
                                            "compute_tasks": preset.compute_tasks,
                                            "compute_work_ns": preset.point("sync").compute_work_ns,
                                            "accesses_per_task": preset.accesses_per_task,
                                            "swap_latency_ns": preset.latency_ns},
                                 "modes": rows}
        add_preset_changes(rows)
        out_rows.append(entry)
    return out_rows


def run_micro(plan: Plan, progress: Progress) -> dict[str, Any]:
    from apf import microbench

    sizes = microbench.QUICK_SIZES if plan.micro_quick else microbench.MicroSizes()
    started: dict[str, float] = {}

    def step(name: str) -> None:
        if started:
            last = next(reversed(started))
            progress.finished(f"micro {last}", f"{time.monotonic() - started[last]:.1f}s")
        started[name] = time.monotonic()
        progress.starting(f"micro {name}")

    result = microbench.run_all(sizes, step)
    last = next(reversed(started))
    progress.finished(f"micro {last}", f"{time.monotonic() - started[last]:.1f}s")
    result["sizes"] = asdict(sizes)
    return result


# -- the command ---------------------------------------------------------------------------------

def run_plan(plan: Plan, out: str, argv: list[str], show_progress: bool = True) -> dict[str, Any]:
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    started = time.time()
    t0 = time.monotonic()
    results: dict[str, Any] = {
        "bench_version": BENCH_VERSION, "command": "apf bench " + " ".join(argv),
        "started_unix": started, "machine": machine_info(), "complete": False,
        "plan": {"sections": list(plan.sections), "modes": list(plan.modes), "quick": plan.quick,
                 "sweep": {"latencies_ns": list(plan.sweep.latencies_ns), "tasks": list(plan.sweep.tasks),
                           "total_accesses": plan.sweep.total_accesses, "repeat": plan.sweep.repeat,
                           "workload": asdict(plan.sweep.workload), "focus": list(plan.sweep.focus),
                           "verified": list(plan.sweep.verify_point)},
                 "presets": [p.name for p in plan.presets], "preset_repeat": plan.preset_repeat,
                 "point_timeout_s": plan.point_timeout_s},
        "adaptive": ADAPTIVE in plan.modes,
        "ideal_formula": IDEAL_FORMULA,
    }
    progress = Progress(count_runs(plan), enabled=show_progress)
    try:
        with progress:
            if "sweep" in plan.sections:
                results["sweep"] = run_sweep(plan, out, progress)
            if "presets" in plan.sections:
                results["presets"] = run_presets(plan, out, progress)
            if "micro" in plan.sections:
                results["micro"] = run_micro(plan, progress)
        results["complete"] = True
    finally:
        results["duration_s"] = time.monotonic() - t0
        results["machine"]["loadavg_at_end"] = os.getloadavg()
        write_outputs(results, out)
    return results


def replot(out: str) -> int:
    path = os.path.join(out, RESULTS_JSON)
    if not os.path.exists(path):
        print(f"apf bench: error: --replot: no {path}", file=sys.stderr)
        return 2
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    redraw(results, out)
    print(f"apf bench: redrew {', '.join(results['plots']) or 'no plots'} and results.md in {out}", file=sys.stderr)
    return 0


def _list(parse: Callable[[str], Any]) -> Callable[[str], tuple]:
    def parse_list(text: str) -> tuple:
        try:
            return tuple(parse(part.strip()) for part in text.split(",") if part.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse_list


def _int_at_least_1(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{value} must be at least 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="directory for results.json, results.md, the PNG plots and each run's report")
    parser.add_argument("--quick", action="store_true",
                        help="a reduced sweep (latency 0 and 2ms x 1 and 8 tasks, one repeat, an 8 MiB guest), "
                             "small presets and micro-benchmarks: a couple of minutes")
    parser.add_argument("--micro", action="store_true", help="only the micro-benchmarks")
    parser.add_argument("--preset", action="append", choices=sorted(PRESETS), metavar="NAME",
                        help=f"only this published scenario (repeatable): {', '.join(sorted(PRESETS))}")
    parser.add_argument("--only", type=_list(str), metavar="SECTIONS",
                        help="comma-separated sections to run: sweep, presets, micro (default: all)")
    parser.add_argument("--repeat", type=_int_at_least_1, metavar="N",
                        help=f"runs per point; the median is reported (default {DEFAULT_REPEAT}, quick 1)")
    parser.add_argument("--modes", type=_list(str), metavar="LIST",
                        help="modes to compare: sync, async, adaptive (default: sync,async, plus adaptive "
                             "when `apf host --help` offers --policy adaptive)")
    parser.add_argument("--latencies", type=_list(parse_duration_ns), metavar="LIST",
                        help="swap latencies of the sweep, e.g. 0,100us,2ms (default 0,100us,500us,2ms,10ms)")
    parser.add_argument("--tasks", type=_list(_int_at_least_1), metavar="LIST",
                        help="runnable task counts of the sweep (default 1,2,4,8,16)")
    parser.add_argument("--accesses", type=_int_at_least_1, metavar="N",
                        help="total accesses per point, split over its tasks (default 2000)")
    parser.add_argument("--guest-mem", type=parse_size, metavar="SIZE", help="sweep guest memory (default 32MiB)")
    parser.add_argument("--host-mem", type=parse_size, metavar="SIZE", help="sweep host memory (default 8MiB)")
    parser.add_argument("--think", type=parse_duration_ns, metavar="DUR", help="sweep think time (default 200us)")
    parser.add_argument("--vcpus", type=_int_at_least_1, metavar="N", help="sweep vCPUs (default 1)")
    parser.add_argument("--point-timeout", type=parse_duration_ns, default=int(POINT_TIMEOUT_S * 1e9),
                        metavar="DUR", help=f"bound on one run (default {POINT_TIMEOUT_S:g}s)")
    parser.add_argument("--keep-traces", action="store_true", help="keep the traced runs' Perfetto files")
    parser.add_argument("--no-progress", action="store_true", help="print nothing while running")
    parser.add_argument("--replot", action="store_true",
                        help="run nothing: redraw the plots and results.md of an earlier run in --out")


def main(values: dict[str, Any], argv: list[str] | None = None) -> int:
    if values.get("replot"):
        return replot(values["out"])
    try:
        plan = build_plan(values)
    except BenchError as exc:
        print(f"apf bench: error: {exc}", file=sys.stderr)
        return 2
    out = values["out"]
    show = not values.get("no_progress")
    if show:
        print(f"apf bench: {count_runs(plan)} runs ({', '.join(plan.sections)}; modes {', '.join(plan.modes)}) "
              f"-> {out}", file=sys.stderr)
    if argv is None:
        argv = sys.argv[sys.argv.index("bench") + 1:] if "bench" in sys.argv else []
    results = run_plan(plan, out, argv, show_progress=show)
    failed = [r for r in results.get("sweep", {}).get("rows", []) if r["repeats_ok"] < r["repeats"]]
    bad_verify = [v for v in results.get("sweep", {}).get("verified", []) if not v["ok"] or v["pages_corrupt"]]
    if show:
        print(f"apf bench: done in {results['duration_s']:.0f}s; results in {os.path.join(out, RESULTS_MD)}",
              file=sys.stderr)
    if failed or bad_verify:
        print(f"apf bench: {len(failed)} point(s) had failed runs, {len(bad_verify)} verified run(s) failed; "
              "see results.json", file=sys.stderr)
        return 1
    return 0
