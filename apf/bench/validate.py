"""`apf bench --validate`: the published APF experiments re-run at real scale, and how far off apf-emu is.

Each experiment is a published run, its setup written down from its source and scaled down by a
stated factor that keeps the ratios that decide the result (the memory hog's CPU per APF, the
swap-in time, the compute task's CPU). Every run is an `apf run --dilation auto` with the exit
cost of the source's platform (`--exit-cost`, shared/dilation.py EXIT_COST_PROFILES), so its
real-equivalent figures (report `real_equivalent`) are in the source's units. Three short
`--dilation auto` probe runs measure D first, and every run of the experiment takes their median
(`--dilation D`), so that the modes compared are scaled alike (a run that measures its own D on a
busy machine can be scaled quite differently from the run it is compared with). Every experiment runs sync, async and adaptive under CFS, and sync and async under
EEVDF and round-robin.

Derivations (real-equivalent µs; ../shared/reference/apf.md has the sources' figures):
- arm64 v4 (Gavin Shan, "[PATCH v4 00/15] Support Asynchronous Page Fault", Aug 2021; 1 vCPU,
  1024 MB guest, cgroup v2 limit 512 MB, ~55,000 APFs). Memory hog alone 14.592 s sync; with a
  calculation thread 27.880 s sync, 16.539 s async. The calculation thread's CPU is 27.880 -
  14.592 = 13.288 s (241.6 per APF); with APF the run hides all stall, so the hog's CPU is
  16.539 - 13.288 = 3.251 s (59.1 per APF) and the swap-in time is 14.592 - 3.251 = 11.341 s
  (206.2 per APF, the mean; the series gives no distribution, so it is fixed here and its
  sensitivity measured at half and double). Scaled to ~107 APFs (1/510).
- arm64 v2 (Feb 2021; 1 vCPU, 4 GB guest, 2 GB limit, 7,555 APFs; swap-in 36 µs to 56 ms): the
  swap-in latency is a bounded Pareto over the published range (alpha 1, mean 265; an assumption,
  with fixed 36 and 265 as its sensitivity); the hog's CPU per APF is not published and is taken
  from v4 (the same series' hog). The calculation thread's throughput is its work in a fixed time
  (`--duration`) beside the hog.
- x86 2010 (Gleb Natapov, "[PATCH v4 00/12] KVM: Add host swap event notifications for PV guest",
  July 2010; `bm -f 4 -w 4 -t 60`, 4 vCPUs, 2 GB guest in a 512 MB host cgroup): 4 work tasks
  (compute) and 4 fault tasks writing random pages of a 2 MiB array in an 8 MiB guest on a host
  that holds 1 MiB (the source says only: larger than host memory, smaller than the guest; twice
  the host's memory keeps the prefill's write-backs, each a dilated disk-era latency, to seconds),
  for a fixed time; the metric is the work tasks' total
  work, APF on over off. No latency or count is published: a 1 ms swap-in (a disk-era host, an
  assumption) and 5 µs of CPU per page written.

Every run's CPU work (the hog's think, the compute tasks) is time on the guest's clock
(`--cpu-work clock`): four vCPUs doing real work would compete for this machine's two cores, and
on a busy machine burnt work is stretched by whatever else runs. The v4 compute experiment is
also run with burnt work (`--cpu-work burn`, one vCPU fits) to show that both ways agree, at about
twice D (`--trap-delay`) and beside two CPU hogs, to show how the figure moves with D and load.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

from apf.bench.plan import BenchError, Point, Workload
from apf.bench.progress import Progress, run_detail
from apf.bench.runner import RunResult, run_point

VALIDATION_JSON, VALIDATION_MD = "validation.json", "validation.md"
SCHEDULERS = ("cfs", "eevdf", "rr")
DEFAULT_REPEAT = 3
PROBES = 3                     # short --dilation auto runs per experiment; their median D is every run's
PROBE_ACCESSES = 40
EXTRA_RUNS = 1                 # a cell re-runs a drifted (unreliable) run at most this many more times
V4_HOG_CPU_PER_APF_NS = 59_100
V4_SWAP_IN_NS = 206_200
V4_COMPUTE_PER_APF_NS = 241_600
FAULTS_PER_ACCESS = 0.365      # measured: random accesses over the 8 MiB guest / 4 MiB host that fault
ARM64_ACCESSES = 300           # ~107 APFs
V2_LATENCY = "swap-latency:pareto:alpha=1:scale=36us:max=56ms"
V2_DURATION_NS = 150_000_000   # real-equivalent: long beside the range's 56 ms top, short enough to run
ARM64_WORKLOAD = Workload(guest_mem=8 << 20, host_mem=4 << 20, think_ns=round(V4_HOG_CPU_PER_APF_NS * FAULTS_PER_ACCESS))
X86_WORKLOAD = Workload(guest_mem=8 << 20, host_mem=1 << 20, vcpus=4, think_ns=5_000, io_depth=32)


@dataclass(frozen=True)
class Variant:
    """A sensitivity run of an experiment: another swap-in latency (ns), more options, or `hogs`
    busy processes beside it (load)."""
    label: str
    latency_ns: int
    extra: tuple[str, ...] = ()
    hogs: int = 0
    alone: bool = False        # its options replace the experiment's extra ones (e.g. no latency rule)
    own_factor: bool = False   # it measures its own D (--dilation auto) instead of the experiment's


@dataclass(frozen=True)
class Experiment:
    """A published run: `metric` (runtime_change_pct, throughput_change_pct or work_ratio) with
    its `published` range (None: not published), on `platform`, as apf run options (`point`)."""
    name: str
    source: str
    metric: str
    published: tuple[float, float] | None
    platform: str
    workload: Workload
    tasks: int
    accesses: int
    latency_ns: int = 0
    compute_tasks: int = 0
    compute_work_ns: int = 0
    duration_ns: int = 0
    extra: tuple[str, ...] = ()
    variants: tuple["Variant", ...] = ()     # sensitivity runs (CFS, sync and async, once each)

    def point(self, mode: str, sched: str, latency_ns: int | None = None, extra: tuple[str, ...] | None = None,
              factor: float | None = None) -> Point:
        """This experiment in `mode` under `sched`: at D = `factor`, or with --dilation auto (None)."""
        dilation = "auto" if factor is None else f"{factor:g}"
        args = ("--dilation", dilation, "--exit-cost", self.platform, "--sched", sched, "--cpu-work", "clock")
        if self.duration_ns:
            args += ("--duration", f"{self.duration_ns}ns")
        return Point(mode, self.latency_ns if latency_ns is None else latency_ns, self.tasks, self.accesses,
                     self.workload, compute_tasks=self.compute_tasks, compute_work_ns=self.compute_work_ns,
                     extra_args=args + (self.extra if extra is None else extra))


_V4_COMPUTE_NS = round(ARM64_ACCESSES * FAULTS_PER_ACCESS * V4_COMPUTE_PER_APF_NS)
EXPERIMENTS = {e.name: e for e in (
    Experiment("arm64-v4-compute", "arm64 APF v4 cover letter (Aug 2021): 27.880 s -> 16.539 s",
               "runtime_change_pct", (-42.0, -40.5), "arm64-nvhe", ARM64_WORKLOAD, 1, ARM64_ACCESSES,
               latency_ns=V4_SWAP_IN_NS, compute_tasks=1, compute_work_ns=_V4_COMPUTE_NS,
               variants=(Variant("swap-in x0.5", V4_SWAP_IN_NS // 2), Variant("swap-in x2", V4_SWAP_IN_NS * 2),
                         Variant("--cpu-work burn", V4_SWAP_IN_NS, ("--cpu-work", "burn")),
                         Variant("about 2 D (--trap-delay 150us)", V4_SWAP_IN_NS, ("--trap-delay", "150us"), own_factor=True),
                         Variant("2 CPU hogs beside it, own D", V4_SWAP_IN_NS, hogs=2, own_factor=True),
                         Variant("2 CPU hogs beside it, the experiment's D", V4_SWAP_IN_NS, hogs=2))),
    Experiment("arm64-v4-memory-only", "arm64 APF v4 cover letter (Aug 2021): 14.592 s -> 15.010 s",
               "runtime_change_pct", (2.8, 3.5), "arm64-nvhe", ARM64_WORKLOAD, 1, ARM64_ACCESSES,
               latency_ns=V4_SWAP_IN_NS),
    Experiment("arm64-v2-compute", "arm64 APF RFC v2 cover letter (Feb 2021): CPU thread +17.8 %",
               "throughput_change_pct", (17.8, 17.8), "arm64-nvhe", ARM64_WORKLOAD, 1, ARM64_ACCESSES,
               compute_tasks=1, duration_ns=V2_DURATION_NS, extra=("--inject", V2_LATENCY),
               variants=(Variant("swap-in 36 us (no Pareto)", 36_000, alone=True),
                         Variant("swap-in 265 us (no Pareto)", 265_000, alone=True),
                         Variant("Pareto alpha 2 (mean 71 us)", 0, ("--inject", V2_LATENCY.replace("alpha=1", "alpha=2")),
                                 alone=True),
                         Variant("Pareto alpha 3 (mean 54 us)", 0, ("--inject", V2_LATENCY.replace("alpha=1", "alpha=3")),
                                 alone=True))),
    Experiment("arm64-v2-memory-only", "arm64 APF RFC v2 cover letter (Feb 2021): +1.2 %",
               "runtime_change_pct", (1.2, 1.2), "arm64-nvhe", ARM64_WORKLOAD, 1, ARM64_ACCESSES,
               extra=("--inject", V2_LATENCY)),
    Experiment("x86-2010-bm", "x86 APF v4 (July 2010), bm -f 4 -w 4 -t 60: work count with / without APF",
               "work_ratio", None, "x86", X86_WORKLOAD, 4, ARM64_ACCESSES, latency_ns=1_000_000,
               compute_tasks=4, duration_ns=30_000_000,
               extra=("--working-set", "2MiB", "--write-frac", "1")),
)}


def cells(exp: Experiment) -> list[tuple[str, str]]:
    """(scheduler, mode) of every run of `exp`: sync, async and adaptive under CFS; sync and async
    under EEVDF and rr."""
    return [("cfs", m) for m in ("sync", "async", "adaptive")] + [(s, m) for s in SCHEDULERS[1:] for m in ("sync", "async")]


def count_validation_runs(names: list[str], repeat: int) -> int:
    """Runs planned (before re-runs of drifted ones): the probes, every cell x repeat, each variant
    sync and async once."""
    return sum(PROBES + len(cells(EXPERIMENTS[n])) * repeat + 2 * len(EXPERIMENTS[n].variants) for n in names)


def _value(r: RunResult, metric: str) -> float | None:
    """What a run contributes to `metric`: real-equivalent wall (s) or compute throughput."""
    if not r.ok or not r.report.get("real_equivalent"):
        return None
    if metric == "runtime_change_pct":
        return r.report["real_equivalent"]["wall_s"]
    return (r.report.get("throughput") or {}).get("compute_per_s")


def _kept(r: RunResult) -> bool:
    return r.ok and bool((r.report.get("dilation") or {}).get("reliable"))


def _change(metric: str, base: float, other: float) -> float:
    return other / base if metric == "work_ratio" else (other / base - 1) * 100


def _run(exp: Experiment, sched: str, mode: str, point: Point, label: str, n: int, runs_dir: str,
         timeout_s: float, progress: Progress) -> RunResult:
    what = f"validate {exp.name}{label} {sched} {mode} #{n}"
    progress.starting(what)
    r = run_point(point, f"{exp.name}{label.replace(' ', '_')}-{sched}-{n}", runs_dir, timeout_s)
    progress.finished(what, run_detail(r))
    return r


def probe_point(exp: Experiment) -> Point:
    """A short synchronous run of `exp` with --dilation auto: its memory tasks and latency (an
    --inject rule included: --dilation needs modelled latency), no compute task, no --duration."""
    return replace(exp.point("sync", "cfs"), accesses_per_task=PROBE_ACCESSES, compute_tasks=0, compute_work_ns=0,
                   extra_args=("--dilation", "auto", "--exit-cost", exp.platform, "--cpu-work", "clock") + exp.extra)


def probe_factor(exp: Experiment, runs_dir: str, timeout_s: float, progress: Progress) -> tuple[float | None, list]:
    """D for every run of `exp`: the median of PROBES short `--dilation auto` runs (sync, CFS) on
    its platform, so that the modes compared are scaled alike; and the probes' [exit ns, D]. None
    when no probe measured one (the runs then measure their own)."""
    found = []
    point = probe_point(exp)
    for i in range(PROBES):
        r = _run(exp, "cfs", "probe", point, " probe", i + 1, runs_dir, timeout_s, progress)
        d = r.report.get("dilation") or {}
        if r.ok and d.get("factor"):
            found.append([d.get("measured_exit_ns"), d["factor"]])
    return (round(statistics.median(f[1] for f in found), 3) if found else None), found


def _cells_runs(exp: Experiment, repeat: int, runs_dir: str, timeout_s: float, progress: Progress,
                factor: float | None) -> dict[tuple[str, str], list[RunResult]]:
    """Every cell of `exp` in rounds (each round runs every cell once, back to back, so that the
    modes compared meet the same load), `repeat` rounds; then cells short of `repeat` kept runs
    (their exit cost drifted) are run again, at most EXTRA_RUNS more times each."""
    runs: dict[tuple[str, str], list[RunResult]] = {c: [] for c in cells(exp)}
    for _ in range(repeat):
        for (sched, mode), done in runs.items():
            done.append(_run(exp, sched, mode, exp.point(mode, sched, factor=factor), "", len(done) + 1, runs_dir,
                             timeout_s, progress))
    for _ in range(EXTRA_RUNS):
        for (sched, mode), done in runs.items():
            if sum(map(_kept, done)) < repeat and any(r.ok for r in done):
                done.append(_run(exp, sched, mode, exp.point(mode, sched, factor=factor), "", len(done) + 1,
                                 runs_dir, timeout_s, progress))
    return runs


def _variant_runs(exp: Experiment, variant: "Variant", runs_dir: str, timeout_s: float, progress: Progress,
                  factor: float | None) -> dict[str, list[RunResult]]:
    """One sync and one async run of a variant under CFS, with its CPU hogs running meanwhile."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
            for _ in range(variant.hogs)]
    try:
        out: dict[str, list[RunResult]] = {}
        for mode in ("sync", "async"):
            point = exp.point(mode, "cfs", variant.latency_ns,
                              variant.extra if variant.alone else exp.extra + variant.extra,
                              factor=None if variant.own_factor else factor)
            runs = out[mode] = []
            while len(runs) < 1 + EXTRA_RUNS and not any(r.ok for r in runs):   # e.g. a calibration too noisy
                runs.append(_run(exp, "cfs", mode, point, f" [{variant.label}]", len(runs) + 1, runs_dir, timeout_s,
                                 progress))
        return out
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def _summary(runs: list[RunResult], metric: str) -> dict[str, Any]:
    kept = [r for r in runs if _kept(r)] or [r for r in runs if r.ok]
    values = [v for v in (_value(r, metric) for r in kept) if v is not None]
    factors = [r.report["dilation"]["factor"] for r in kept if r.report.get("dilation")]
    return {"values": values, "runs": len(runs), "kept": sum(map(_kept, runs)),
            "apfs": statistics.median([r.report["faults"]["async"] for r in kept]) if kept else None,
            "dilation": statistics.median(factors) if factors else None,
            "errors": [r.error for r in runs if not r.ok]}


def _row(exp: Experiment, sched: str, mode: str, base: dict[str, Any], mine: dict[str, Any],
         variant: str | None = None) -> dict[str, Any]:
    measured = spread = None
    if base["values"] and mine["values"]:
        measured = _change(exp.metric, statistics.median(base["values"]), statistics.median(mine["values"]))
        pairs = [_change(exp.metric, b, m) for b, m in zip(base["values"], mine["values"])]
        spread = [min(pairs), max(pairs)] if pairs else None
    mid = None if exp.published is None else sum(exp.published) / 2
    error = None if measured is None or not mid else (measured - mid) / abs(mid) * 100
    return {"experiment": exp.name, "variant": variant, "metric": exp.metric,
            "published": None if exp.published is None else list(exp.published), "measured": measured,
            "spread": spread, "error_pct": error,
            "error_pp": None if measured is None or mid is None else measured - mid,
            "apfs": mine["apfs"], "dilation": mine["dilation"], "scheduler": sched, "mode": mode,
            "runs": {"sync": [base["kept"], base["runs"]], mode: [mine["kept"], mine["runs"]]},
            "errors": base["errors"] + mine["errors"], "platform": exp.platform, "source": exp.source}


def run_validation(names: list[str], repeat: int, out: str, timeout_s: float, show: bool = True) -> list[dict[str, Any]]:
    """Every experiment of `names`: its cells `repeat` times (drifted runs re-run, bounded), its
    variants once each in sync and async under CFS; writes validation.json and validation.md in
    `out` and returns the rows."""
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise BenchError(f"--experiments: unknown {', '.join(unknown)}; choose from {', '.join(EXPERIMENTS)}")
    runs_dir = os.path.join(out, "validation-runs")
    os.makedirs(runs_dir, exist_ok=True)
    rows: list[dict[str, Any]] = []
    factors: dict[str, Any] = {}
    started = time.monotonic()
    with Progress(count_validation_runs(names, repeat), enabled=show) as progress:
        for name in names:
            exp = EXPERIMENTS[name]
            factor, probes = probe_factor(exp, runs_dir, timeout_s, progress)
            factors[name] = {"factor": factor, "probes": probes}
            done = {c: _summary(r, exp.metric) for c, r in _cells_runs(exp, repeat, runs_dir, timeout_s,
                                                                          progress, factor).items()}
            for (sched, mode), mine in done.items():
                if mode != "sync":
                    rows.append(_row(exp, sched, mode, done[(sched, "sync")], mine))
            for variant in exp.variants:
                pair = {m: _summary(r, exp.metric)
                        for m, r in _variant_runs(exp, variant, runs_dir, timeout_s, progress, factor).items()}
                rows.append(_row(exp, "cfs", "async", pair["sync"], pair["async"], variant=variant.label))
            _write(rows, factors, out, repeat, time.monotonic() - started)
    return rows


def _write(rows: list[dict[str, Any]], factors: dict[str, Any], out: str, repeat: int, elapsed_s: float) -> None:
    with open(os.path.join(out, VALIDATION_JSON), "w", encoding="utf-8") as f:
        json.dump({"repeat": repeat, "elapsed_s": elapsed_s, "factors": factors, "load": os.getloadavg(),
                   "rows": rows}, f, indent=2)
    with open(os.path.join(out, VALIDATION_MD), "w", encoding="utf-8") as f:
        f.write("\n".join(markdown(rows, repeat, elapsed_s)) + "\n")


UNITS = {"runtime_change_pct": "run time vs sync, %", "throughput_change_pct": "CPU thread throughput vs sync, %",
         "work_ratio": "work count, APF / no APF"}


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}x" if metric == "work_ratio" else f"{value:+.1f} %"


def markdown(rows: list[dict[str, Any]], repeat: int, elapsed_s: float) -> list[str]:
    """validation.md: one row per experiment x scheduler x mode (against that scheduler's sync),
    then the sensitivity rows."""
    lines = ["# Validation against the published APF runs", "",
             f"{repeat} kept run(s) per cell wanted (a run whose exit cost drifted beyond 25 % is run again, at "
             f"most {EXTRA_RUNS} more times); medians; spread: min–max of the paired changes; "
             f"{elapsed_s / 60:.1f} min.", "",
             "| experiment | metric | scheduler | mode | published | measured | spread | error | APFs | D | runs kept (sync, mode) |",
             "|---|---|---|---|---:|---:|---|---:|---:|---:|---|"]
    for x in rows:
        if x["variant"]:
            continue
        lines.append(_md_row(x))
    variants = [x for x in rows if x["variant"]]
    if variants:
        lines += ["", "Sensitivity (CFS, async against sync, one run each):", "",
                  "| experiment | variant | measured | published |", "|---|---|---:|---:|"]
        for x in variants:
            lines.append(f"| {x['experiment']} | {x['variant']} | {_fmt(x['measured'], x['metric'])} | "
                         f"{_pub(x)} |")
    return lines


def _pub(x: dict[str, Any]) -> str:
    p = x["published"]
    if p is None:
        return "not published"
    return _fmt(p[0], x["metric"]) if p[0] == p[1] else f"{_fmt(p[0], x['metric'])} to {_fmt(p[1], x['metric'])}"


def _md_row(x: dict[str, Any]) -> str:
    m = x["metric"]
    spread = "–" if not x["spread"] else f"{_fmt(x['spread'][0], m)} … {_fmt(x['spread'][1], m)}"
    err = "–" if x["error_pct"] is None else f"{x['error_pct']:+.0f} % ({x['error_pp']:+.1f} pp)" \
        if m != "work_ratio" else f"{x['error_pct']:+.0f} %"
    kept = ", ".join(f"{k}/{n}" for k, n in x["runs"].values())
    return (f"| {x['experiment']} | {UNITS[m]} | {x['scheduler']} | {x['mode']} | {_pub(x)} | "
            f"{_fmt(x['measured'], m)} | {spread} | {err} | {'–' if x['apfs'] is None else round(x['apfs'])} | "
            f"{'–' if x['dilation'] is None else round(x['dilation'], 1)} | {kept} |")
