"""Running a bench plan: the sweep (timed, then verified, then traced runs), the published
scenarios and the micro-benchmarks, with progress, into the results that output.py writes.

Every run's report is kept in OUT/runs/; traced runs' Perfetto files go to OUT/traces/, removed
after reading unless the plan keeps them.
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, replace
from typing import Any

from apf.bench.analysis import IDEAL_FORMULA, add_comparisons, add_preset_changes, summarise
from apf.bench.output import write_outputs
from apf.bench.plan import ADAPTIVE, Plan, Point, Preset, count_runs, short_latency_label
from apf.bench.plots import read_guest_trace
from apf.bench.progress import Progress, run_detail
from apf.bench.runner import RunResult, run_point
from protocol.errors import BenchError

BENCH_VERSION = 1


def run_plan(plan: Plan, out: str, argv: list[str], show_progress: bool = True) -> dict[str, Any]:
    """Run every section of `plan` into the directory `out`, showing progress on stderr unless
    `show_progress` is false; `argv` (the options given to `apf bench`) is recorded. The output
    files are written when it ends, also when an exception (Ctrl-C) ends it early: "complete" is
    then false and the exception goes on. Returns the results as written to results.json.
    Raises BenchError if `out` cannot be created."""
    try:
        os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    except OSError as exc:
        raise BenchError(f"--out {out}: {exc.strerror}") from exc
    t0 = time.monotonic()
    results: dict[str, Any] = {
        "bench_version": BENCH_VERSION, "command": "apf bench " + " ".join(argv),
        "started_unix": time.time(), "machine": machine_info(), "complete": False,
        "plan": _plan_record(plan), "adaptive": ADAPTIVE in plan.modes, "ideal_formula": IDEAL_FORMULA,
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
            if "scale-check" in plan.sections:
                from apf.bench.realscale import run_scale_check
                results["scale-check"] = run_scale_check(plan.modes, plan.quick, out, plan.point_timeout_s, progress)
            if "real-scale" in plan.sections:
                from apf.bench.plan import REAL_LATENCIES_NS, REAL_TASKS
                from apf.bench.realscale import run_real_scale
                results["real-scale"] = run_real_scale(plan.modes, out, plan.point_timeout_s, progress,
                                                       plan.real_latencies_ns or REAL_LATENCIES_NS,
                                                       plan.real_tasks or REAL_TASKS, plan.real_repeat)
            if "traces" in plan.sections:
                from apf.bench.traces import run_traces
                results["traces"] = run_traces(plan.modes, plan.quick, out, plan.point_timeout_s, progress)
            if "haltpoll" in plan.sections:
                from apf.bench.haltpoll import run_haltpoll
                results["haltpoll"] = run_haltpoll(plan, out, progress)
        results["complete"] = True
    finally:
        results["duration_s"] = time.monotonic() - t0
        results["machine"]["loadavg_at_end"] = os.getloadavg()
        write_outputs(results, out)
    return results


def machine_info() -> dict[str, Any]:
    """CPUs, memory (bytes), Python, CPU model, kernel and the load averages now."""
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


def _plan_record(plan: Plan) -> dict[str, Any]:
    sweep = plan.sweep
    return {"sections": list(plan.sections), "modes": list(plan.modes), "quick": plan.quick,
            "sweep": {"latencies_ns": list(sweep.latencies_ns), "tasks": list(sweep.tasks),
                      "total_accesses": sweep.total_accesses, "repeat": sweep.repeat,
                      "workload": asdict(sweep.workload), "focus": list(sweep.focus),
                      "verified": list(sweep.verify_point)},
            "presets": [p.name for p in plan.presets], "preset_repeat": plan.preset_repeat,
            "point_timeout_s": plan.point_timeout_s}


def _run_shown(progress: Progress, what: str, point: Point, repeat: int | str, runs_dir: str, timeout_s: float,
               trace: str | None = None) -> RunResult:
    """run_point, announced to `progress` as `what` before and with its outcome after."""
    progress.starting(what)
    r = run_point(point, repeat, runs_dir, timeout_s, trace=trace)
    progress.finished(what, run_detail(r))
    return r


def _sweep_label(mode: str, latency_ns: int, tasks: int, which: str) -> str:
    return f"{mode} {short_latency_label(latency_ns)} x{tasks} {which}"


# -- sweep ---------------------------------------------------------------------------------------

def run_sweep(plan: Plan, out: str, progress: Progress) -> dict[str, Any]:
    """The sweep: its rows (one per point), the verified runs, the traced runs, and the load
    average before each timed run (for write_outputs to summarise)."""
    runs_dir = os.path.join(out, "runs")
    points = plan.sweep.points(plan.modes)
    runs = _timed_runs(plan, points, runs_dir, progress)
    rows = [summarise(p, runs[p.key]) for p in points]
    add_comparisons(rows)
    loads = [r.loadavg for rs in runs.values() for r in rs]
    verified = _verified_runs(plan, points, runs_dir, progress)
    traces = run_traced(plan, points, out, progress)
    return {"rows": rows, "verified": verified, "traced": traces, "loadavg": loads}


def _timed_runs(plan: Plan, points: list[Point], runs_dir: str, progress: Progress) -> dict[tuple, list[RunResult]]:
    runs: dict[tuple, list[RunResult]] = {p.key: [] for p in points}
    # Repeats outermost: a burst of noise from elsewhere hits one repeat of many points, which the
    # median absorbs, rather than every repeat of one point.
    for rep in range(1, plan.sweep.repeat + 1):
        for p in points:
            what = _sweep_label(p.mode, p.latency_ns, p.tasks, f"#{rep}")
            runs[p.key].append(_run_shown(progress, what, p, rep, runs_dir, plan.point_timeout_s))
    return runs


def _verified_runs(plan: Plan, points: list[Point], runs_dir: str, progress: Progress) -> list[dict[str, Any]]:
    """One run per mode at the verify point that reads back every page it wrote."""
    verify_lat, focus_tasks = plan.sweep.verify_point
    verified = []
    for mode in plan.modes:
        p = replace(next(q for q in points if q.key == (mode, verify_lat, focus_tasks)), verify=True)
        r = _run_shown(progress, _sweep_label(mode, verify_lat, focus_tasks, "verified"), p, "verified", runs_dir,
                       plan.point_timeout_s)
        rep = r.report
        verified.append({"mode": mode, "swap_latency_ns": verify_lat, "tasks": focus_tasks, "ok": r.ok,
                         "error": r.error, "pages_written": rep.get("pages_written"),
                         "pages_verified": rep.get("pages_verified"), "pages_corrupt": rep.get("pages_corrupt")})
    return verified


def run_traced(plan: Plan, points: list[Point], out: str, progress: Progress) -> list[dict[str, Any]]:
    """Runs with --trace, never timed: per-fault latencies from the guest's "stall" spans and the
    run / stall / idle timeline of each vCPU."""
    traces_dir = os.path.join(out, "traces")
    os.makedirs(traces_dir, exist_ok=True)
    focus_lat, focus_tasks = plan.sweep.focus
    traced = []
    for lat in plan.sweep.cdf_latencies:
        for mode in plan.modes:
            p = next(q for q in points if q.key == (mode, lat, focus_tasks))
            trace_path = os.path.join(traces_dir, p.name("trace") + ".json")
            r = _run_shown(progress, _sweep_label(mode, lat, focus_tasks, "traced"), p, "traced",
                           os.path.join(out, "runs"), plan.point_timeout_s, trace=trace_path)
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


# -- published scenarios -------------------------------------------------------------------------

def run_presets(plan: Plan, out: str, progress: Progress) -> list[dict[str, Any]]:
    """Each preset in every mode, repeated (repeats outermost, as in the sweep); one entry per
    preset with its configuration and a row per mode."""
    runs_dir = os.path.join(out, "runs")
    runs: dict[tuple[str, str], list[RunResult]] = {}
    for rep in range(1, plan.preset_repeat + 1):
        for preset in plan.presets:
            for mode in plan.modes:
                r = _run_shown(progress, f"{preset.name} {mode} #{rep}", preset.point(mode), f"{preset.name}-{rep}",
                               runs_dir, plan.point_timeout_s)
                runs.setdefault((preset.name, mode), []).append(r)
    return [_preset_entry(preset, {mode: runs[(preset.name, mode)] for mode in plan.modes}) for preset in plan.presets]


def _preset_entry(preset: Preset, runs: dict[str, list[RunResult]]) -> dict[str, Any]:
    rows = {mode: summarise(preset.point(mode), mode_runs) for mode, mode_runs in runs.items()}
    add_preset_changes(rows)
    return {"name": preset.name, "title": preset.title, "published": preset.published,
            "published_change_pct": list(preset.published_change_pct), "approximation": preset.approximation,
            "config": {**asdict(preset.workload), "tasks": preset.tasks, "compute_tasks": preset.compute_tasks,
                       "compute_work_ns": preset.point("sync").compute_work_ns,
                       "accesses_per_task": preset.accesses_per_task, "swap_latency_ns": preset.latency_ns},
            "modes": rows}


# -- micro-benchmarks ----------------------------------------------------------------------------

def run_micro(plan: Plan, progress: Progress) -> dict[str, Any]:
    """apf/microbench.py's run_all at the plan's sizes, each of its steps shown as a run."""
    from apf import microbench      # pyzmq and msgpack: only when the micro-benchmarks run

    sizes = microbench.QUICK_SIZES if plan.micro_quick else microbench.MicroSizes()
    steps = _MicroSteps(progress)
    result = microbench.run_all(sizes, steps.start)
    steps.finish()
    result["sizes"] = asdict(sizes)
    return result


class _MicroSteps:
    """The micro-benchmarks say only when a step starts: the one before it has then finished."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.current: str | None = None
        self.started = 0.0

    def start(self, name: str) -> None:
        self.finish()
        self.current, self.started = name, time.monotonic()
        self.progress.starting(f"micro {name}")

    def finish(self) -> None:
        if self.current is not None:
            self.progress.finished(f"micro {self.current}", f"{time.monotonic() - self.started:.1f}s")
            self.current = None
