"""The plots of `apf bench` (matplotlib, Agg: no display needed) and the trace reading they need.

    speedup.png           sync wall / mode wall over runnable tasks, one line per swap latency,
                          with the break-even line (speedup = 1)
    fault_latency_cdf.png per-fault trap-to-answer latency of the traced runs (guest "stall" spans)
    timeline.png          run / stall / idle of each vCPU in a window of one sync and one async run

Each is a PNG at DPI (150) and the same plot as SVG beside it (speedup.svg, ...).
"""
from __future__ import annotations

import json
import os
from typing import Any

from shared.units import format_duration_ns

DPI = 150                       # PNG resolution; each plot is also written as SVG (vector) beside it
TIMELINE_WINDOW_US = 25_000.0
TIMELINE_OFFSET = 0.25          # the window starts this far into the workload phase (past start-up)
MODE_COLOURS = {"sync": "#c0392b", "async": "#2471a3", "adaptive": "#27ae60"}
SPAN_COLOURS = {"run": "#58b368", "stall": "#d9534f", "idle": "#c8c8c8"}


def read_guest_trace(path: str) -> dict[str, Any]:
    """From a merged `apf run --trace` file: the durations (µs) of the guest's "stall" spans during
    the workload phase, the phase's window, and the run / stall / idle spans of each vCPU inside
    a TIMELINE_WINDOW_US window of it."""
    with open(path, encoding="utf-8") as f:
        events = json.load(f)["traceEvents"]
    guest_pids = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
                  and str(e.get("args", {}).get("name", "")).startswith("apf guest")}
    spans = [e for e in events if e.get("ph") == "X" and e.get("pid") in guest_pids]
    workload_runs = [e for e in spans if e["name"] == "run"
                     and not str(e["args"].get("task", "")).startswith(("prefill-", "verify-"))]
    if not workload_runs:
        return {"stall_us": [], "window_us": [0.0, 0.0], "spans": {}}
    start = min(e["ts"] for e in workload_runs)
    end = max(e["ts"] + e["dur"] for e in workload_runs)
    stalls = [e["dur"] for e in spans if e["name"] == "stall" and start <= e["ts"] < end]
    w0 = start + (end - start) * TIMELINE_OFFSET
    w1 = min(end, w0 + TIMELINE_WINDOW_US)
    timeline: dict[str, list[list[Any]]] = {}
    for e in spans:
        if e["name"] in SPAN_COLOURS and e["ts"] < w1 and e["ts"] + e["dur"] > w0:
            s, t = max(e["ts"], w0), min(e["ts"] + e["dur"], w1)
            timeline.setdefault(str(e["tid"]), []).append([e["name"], (s - w0) / 1000, (t - s) / 1000])
    return {"stall_us": stalls, "window_us": [start, end], "spans": timeline,
            "timeline_window_ms": [(w0 - start) / 1000, (w1 - start) / 1000]}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_speedup(rows: list[dict[str, Any]], path: str) -> str | None:
    rows = [r for r in rows if r["mode"] != "sync" and r.get("speedup")]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    latencies = sorted({r["swap_latency_ns"] for r in rows})
    cmap = plt.get_cmap("tab10")
    all_tasks = sorted({r["tasks"] for r in rows})
    for i, lat in enumerate(latencies):
        colour = cmap(i % 10)
        for mode, style in (("async", "-o"), ("adaptive", "--s")):
            pts = sorted((r for r in rows if r["swap_latency_ns"] == lat and r["mode"] == mode), key=lambda r: r["tasks"])
            if not pts:
                continue
            x = [r["tasks"] for r in pts]
            y = [r["speedup"] for r in pts]
            # the spread of this mode's repeats, against the sync median
            lo = [r["speedup"] * r["wall_s"] / r["wall_max_s"] for r in pts]
            hi = [r["speedup"] * r["wall_s"] / r["wall_min_s"] for r in pts]
            label = f"{mode}, {'device only' if lat == 0 else format_duration_ns(lat)}"
            ax.errorbar(x, y, yerr=[[a - b for a, b in zip(y, lo)], [c - a for a, c in zip(y, hi)]], fmt=style,
                        color=colour, capsize=2, markersize=4, linewidth=1.4, label=label)
    ax.axhline(1.0, color="black", linestyle=":", linewidth=1.2, label="break-even (= sync)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(all_tasks)
    ax.set_xticklabels([str(t) for t in all_tasks])
    ax.set_xlabel("runnable tasks")
    ax.set_ylabel("speedup = sync wall / wall")
    ax.set_title("APF speedup over synchronous faults, by swap latency")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)
    return path


def plot_cdf(traced: list[dict[str, Any]], path: str) -> str | None:
    traced = [t for t in traced if t.get("stall_us")]
    if not traced:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    latencies = sorted({t["swap_latency_ns"] for t in traced})
    styles = ["-", "--", ":", "-."]
    for t in traced:
        samples = sorted(t["stall_us"])
        n = len(samples)
        y = [(i + 1) / n for i in range(n)]
        style = styles[latencies.index(t["swap_latency_ns"]) % len(styles)]
        lat = "device only" if t["swap_latency_ns"] == 0 else format_duration_ns(t["swap_latency_ns"])
        ax.step(samples, y, where="post", linestyle=style, color=MODE_COLOURS.get(t["mode"], "black"),
                label=f"{t['mode']}, {lat}, {t['tasks']} tasks ({n} faults)")
    ax.set_xscale("log")
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator
    lo = min(min(t["stall_us"]) for t in traced)
    hi = max(max(t["stall_us"]) for t in traced)
    ticks = [v for v in (50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000) if lo / 2 <= v <= hi * 2]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticklabels([f"{v:g}" for v in ticks])
    ax.set_xlabel("trap to answer (µs, log scale)")
    ax.set_ylabel("fraction of faults")
    ax.set_title("Fault latency CDF (guest vCPU blocked in a trap)")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)
    return path


def plot_timeline(traced: list[dict[str, Any]], path: str) -> str | None:
    chosen = [t for t in traced if t.get("timeline") and t.get("spans")]
    if not chosen:
        return None
    plt = _plt()
    rows = sum(len(t["spans"]) for t in chosen)
    fig, axes = plt.subplots(len(chosen), 1, figsize=(7.5, 1.0 + 0.9 * rows), sharex=True, squeeze=False)
    for ax, t in zip(axes[:, 0], chosen):
        vcpus = sorted(t["spans"], key=int)
        for row, vcpu in enumerate(vcpus):
            for name in ("run", "idle", "stall"):       # stalls happen inside run spans: draw them on top
                bars = [(s, d) for n, s, d in t["spans"][vcpu] if n == name]
                ax.broken_barh(bars, (row - 0.35, 0.7), facecolors=SPAN_COLOURS[name])
        ax.set_yticks(range(len(vcpus)))
        ax.set_yticklabels([f"vCPU {v}" for v in vcpus])
        lat = format_duration_ns(t["swap_latency_ns"]) if t["swap_latency_ns"] else "device only"
        ax.set_title(f"{t['mode']}: {lat} swap latency, {t['tasks']} tasks", fontsize=9)
        ax.set_ylim(-0.6, len(vcpus) - 0.4)
    from matplotlib.patches import Patch
    axes[0, 0].legend(handles=[Patch(color=c, label=n) for n, c in SPAN_COLOURS.items()], fontsize=7,
                      loc="upper right", ncol=3)
    axes[-1, 0].set_xlabel(f"ms into a window of at most {TIMELINE_WINDOW_US / 1000:g} ms, starting "
                           f"{TIMELINE_OFFSET:.0%} into the workload phase")
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)
    return path


def save(fig: Any, path: str) -> None:
    """Write `fig` to `path` (a PNG at DPI dots per inch) and, beside it, the same plot as SVG
    (`path` with .svg for .png), for papers and slides that scale it."""
    fig.savefig(path, dpi=DPI)
    fig.savefig(os.path.splitext(path)[0] + ".svg")


def make_all(sweep: dict[str, Any], out: str) -> list[str]:
    """Every plot the sweep's data allows; return the PNG file names written (each has its .svg
    beside it)."""
    made = [plot_speedup(sweep.get("rows", []), os.path.join(out, "speedup.png")),
            plot_cdf(sweep.get("traced", []), os.path.join(out, "fault_latency_cdf.png")),
            plot_timeline(sweep.get("traced", []), os.path.join(out, "timeline.png"))]
    return [os.path.basename(p) for p in made if p]
