"""Running one benchmark point: a real `apf run` subprocess, bounded, and what it reported."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from apf.bench.plan import Point
from apf.procs import run_bounded

STOP_BOUND_S = 20.0                    # `apf run` asked to stop gets this long before SIGKILL
RUN_GRACE_S = 30.0                     # past its own --timeout, `apf run` gets this long to end by itself


@dataclass
class RunResult:
    """One run of a point. `ok`: `apf run` exited 0 with an ok report; else `error` says why.
    `elapsed_s`: the run's wall time seen from here (s); `loadavg`: the 1-minute load average
    just before it; `report`: the run's report ({} when it wrote none)."""
    point: Point
    repeat: int | str
    ok: bool
    error: str | None
    elapsed_s: float
    loadavg: float
    report: dict[str, Any] = field(default_factory=dict)


def run_point(point: Point, repeat: int | str, runs_dir: str, timeout_s: float,
              trace: str | None = None) -> RunResult:
    """One `apf run` subprocess of `point`, its report written to runs_dir/NAME.json (Point.name),
    its trace to `trace` when given. Bounded: `apf run` gives up after `timeout_s` seconds by
    itself; RUN_GRACE_S later it is sent SIGTERM (it then stops both daemons and removes its
    files), and SIGKILL only if it does not exit within STOP_BOUND_S. A failed run is not an
    exception: the result says what went wrong."""
    report_path = os.path.join(runs_dir, point.name(repeat) + ".json")
    argv = point.argv(report_path, timeout_s, trace)
    load = os.getloadavg()[0]
    start = time.monotonic()
    done, timed_out = run_bounded(argv, timeout_s + RUN_GRACE_S, STOP_BOUND_S)
    elapsed = time.monotonic() - start
    report, error = _read_report(report_path)
    if timed_out:
        error = f"timed out after {timeout_s + RUN_GRACE_S:g}s"
    elif done.returncode != 0 and error is None:
        error = f"exit status {done.returncode}"
    if error and done.stderr and done.stderr.strip():
        error += ": " + done.stderr.strip().splitlines()[-1][-300:]
    return RunResult(point, repeat, error is None, error, elapsed, load, report)


def _read_report(path: str) -> tuple[dict[str, Any], str | None]:
    """The report at `path` ({} when there is none) and what is wrong with it (None: it is ok)."""
    if not os.path.exists(path):
        return {}, "no report"
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    if not report.get("ok"):
        return report, f"run not ok: {report.get('error') or 'see ' + path}"
    return report, None
