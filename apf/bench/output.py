"""The files `apf bench` leaves in --out: results.json (summaries only), plot_data.json (the
per-fault samples and timeline spans the plots are drawn from, so `--replot` can redraw them),
the PNG plots and results.md."""
from __future__ import annotations

import json
import os
from typing import Any

from apf.bench.analysis import load_summary, stall_summary
from apf.bench.markdown import markdown
from apf.bench.plots import make_all

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
PLOT_DATA = "plot_data.json"
PLOT_DATA_FIELDS = ("mode", "swap_latency_ns", "tasks", "timeline", "stall_us", "spans")


def write_outputs(results: dict[str, Any], out: str) -> None:
    """Every file of a finished (or stopped) `apf bench` in the directory `out`. The sweep's raw
    figures leave `results` on the way: the load averages before each run become a summary in
    results["machine"], and each traced run's samples and spans go to plot_data.json, leaving
    a summary of its per-fault latencies."""
    sweep = results.get("sweep")
    if sweep:
        loads = sweep.pop("loadavg", [])
        if loads:
            results["machine"]["loadavg_1min_during_runs"] = load_summary(loads)
        traced = sweep.get("traced", [])
        _write_json(os.path.join(out, PLOT_DATA), [{k: t.get(k) for k in PLOT_DATA_FIELDS} for t in traced])
        for t in traced:
            samples = t.pop("stall_us", None) or []
            t.pop("spans", None)
            t.pop("window_us", None)
            if samples:
                t["stall_us_summary"] = stall_summary(samples)
    redraw(results, out)


def redraw(results: dict[str, Any], out: str) -> None:
    """The plots from the sweep's rows and plot_data.json (when there is one), then results.json
    (with the names of the plots drawn in results["plots"]) and results.md, all in `out`."""
    results["plots"] = []
    sweep = results.get("sweep")
    if sweep:
        results["plots"] = make_all({"rows": sweep.get("rows", []), "traced": _read_plot_data(out)}, out)
    _write_json(os.path.join(out, RESULTS_JSON), results, indent=1, sort_keys=True)
    with open(os.path.join(out, RESULTS_MD), "w", encoding="utf-8") as f:
        f.write(markdown(results))


def _read_plot_data(out: str) -> list[dict[str, Any]]:
    path = os.path.join(out, PLOT_DATA)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path: str, data: Any, **dump_options: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, **dump_options)
