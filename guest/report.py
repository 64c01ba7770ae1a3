"""The run report: the JSON users script against. Field names are an interface: extend, never rename.

Required fields: `mode`, `wall_s`, `vcpu_stall_s`, `vcpu_idle_s`, `faults` {`total`,
`resolved_sync`, `async`}, `fault_latency_us` {`p50`, `p99`, `max`}, `swap` {`reads`, `writes`,
`evictions`}, `pages_verified`, `pages_corrupt`, `host` and `guest` resources.

The top-level timing and fault fields describe the timed workload phase; `phases` gives the same
figures for every phase (prefill, workload, verify). `swap` is the host's counts for the whole run;
`phases.<name>.swap` {`reads`, `writes`, `evictions`} is the host's swap I/O during that phase (read
at the phase boundaries; a write-back still in flight at a boundary counts in the phase it ends in),
and `workload_swap` is the workload phase's. Each also has `clean_drops`, `readahead` {`pages`,
`hits`, `misses`}, `write_protect` (permission faults, also in the phase's `faults`) and
`slots_used` (swap slots in use at the phase's end).

`workload` {`name`, `trace`}: with `--workload trace:FILE`, `trace` is {`path`, `sha256` (of the
source the memtrace was made from), `format` (the source's: lackey, pageref), `records`,
`distinct_pages`, `shared`, `has_instructions`, `ns_per_insn`}; else null. `pages_touched` counts
the distinct guest pages the workload phase touched.

`dilation` (null without --dilation): {`mode` (auto or the factor given), `factor` D,
`target_exit_ns` (--exit-cost), `measured_exit_ns` (the calibration before the workload),
`end_exit_ns` and `drift` (the calibration after the last phase: end / start - 1), `drift_bound`,
`reliable` (|drift| within the bound), `calibration` and `end_calibration` ({`method`, `exit_ns`,
`burst_p50_ns`, `spread`, `samples`}), `applied` (the guest's costs as applied, x D), `host`
(the host's STATS `dilation`: the swap latency it applied), `swap_in` {`device_s`, `modelled_s`,
`device_share`} of the workload phase's swap-ins: real device time cannot be dilated, so its share
says how much of the swap-in time is read D times too short}. `real_equivalent` (null without
--dilation): the workload phase's `wall_s`, `vcpu_stall_s`, `vcpu_idle_s`, `fault_latency_us`
and `parked_us` divided by D, and `reliable`.
`idle` {`polls`, `poll_hits`, `poll_ns`, `poll_hit_ns`, `blocks`, `window_grows`, `window_shrinks`}
(per phase, and the workload phase's at the top level): how idle vCPUs waited with `--halt-poll`
(guest/haltpoll.py); each `per_vcpu` row has `polls`, `poll_hits` and `poll_ns`.

`cpu` {`guest_s`, `host_s`} (per phase, and the workload phase's at the top level): the CPU time
each daemon's process used during the phase (the whole-run figures are `guest` and `host`).

`scheduler` {`policy` (cfs, eevdf, rr), `latency_ns`, `min_granularity_ns`, `wakeup_granularity_ns`,
`base_slice_ns`, `tick_ns`, `timeslice_ns` (real-equivalent, scaled for the vCPU count as Linux
does), `preemptions` {`wakeup`, `tick`}, `migrations`, `window_ns` (the workload's `--duration` as
applied, emulator ns; 0 without), `run_delay_us` {`memory`, `compute`}
(time runnable but not running, percentiles), `tasks` (up to 64 rows: `name`, `kind`, `runs`,
`run_delay_us` {`p50`, `p99`}, `cpu_s`)}. `throughput` {`accesses_per_s`, `compute_per_s`} of the
workload phase (compute: vCPU-seconds of work per second); with `--duration` it is the figure to
compare.

`tasks`: `total` workload tasks, of which `memory` make accesses (`accesses` completed, summed) and
`compute` only compute (`compute_done` of them finished, `compute_work_s` of CPU work completed).
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from shared.metrics import percentiles_us, process_resources
from guest.config import GuestConfig
from guest.dilation import real_equivalent
from guest.scheduler import Task, TaskState
from guest.vcpu import VcpuStats

REPORT_VERSION = 1
SWAP_COUNTS = ("reads", "writes", "evictions", "clean_drops")   # the host's swap counters each phase gets its share of
READAHEAD_COUNTS = ("pages", "hits", "misses")    # STATS `swap.readahead.K`, per phase
ERROR_COUNTS = ("read_errors", "write_errors")    # the host's swap errors, also per phase
SWAP_LEVELS = ("slots_used",)                     # gauges: a phase reports the value at its end
SWAP_TIMES = ("read_device_ns", "read_modelled_ns")   # summed swap-in time, real device vs modelled, per phase
FAULT_COUNTS = ("total", "sync", "async", "spurious", "major", "minor", "write_protect")   # the host's, per phase


def host_marks(stats: dict[str, Any]) -> dict[str, Any]:
    """The host's counters (a STATS map) that phases take their share of."""
    swap, faults = stats.get("swap", {}), stats.get("faults", {})
    readahead = swap.get("readahead", {})
    return {"swap": {k: int(swap.get(k, 0)) for k in SWAP_COUNTS + ERROR_COUNTS + SWAP_TIMES},
            "readahead": {k: int(readahead.get(k, 0)) for k in READAHEAD_COUNTS},
            "levels": {k: int(swap.get(k, 0)) for k in SWAP_LEVELS},
            "faults": {k: int(faults.get(k, 0)) for k in FAULT_COUNTS},
            "sync_reasons": {k: int(v) for k, v in faults.get("sync_reasons", {}).items()},
            "injected": {k: int(v) for k, v in stats.get("injected", {}).items() if isinstance(v, int)},
            "cpu_s": _cpu_s(stats.get("resources", {}))}


def _cpu_s(resources: dict[str, Any]) -> float | None:
    """A process's CPU time (user + system, s) in a `resources` map; None when it has none."""
    if "cpu_user_s" not in resources:
        return None
    return float(resources["cpu_user_s"]) + float(resources.get("cpu_system_s", 0.0))


def mark_cpu_delta(before: dict[str, Any], after: dict[str, Any]) -> float | None:
    """The host's CPU time (s) between two marks; None when either lacks it."""
    old, new = before.get("cpu_s"), after.get("cpu_s")
    return None if old is None or new is None else new - old


def mark_delta(before: dict[str, Any], after: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the host counted between two marks: (swap I/O with readahead nested, the gauges at
    `after` and the write-protect faults; faults with their sync reasons)."""
    def delta(section: str, keys=None) -> dict[str, int]:
        old = before.get(section, {})
        keys = after[section] if keys is None else keys
        return {k: after[section].get(k, 0) - old.get(k, 0) for k in keys}
    swap: dict[str, Any] = delta("swap")
    swap["readahead"] = delta("readahead")
    swap.update(after["levels"])
    faults: dict[str, Any] = delta("faults", FAULT_COUNTS)
    swap["write_protect"] = faults["write_protect"]
    faults["sync_reasons"] = {k: v for k, v in delta("sync_reasons").items() if v}
    faults["injected"] = {k: v for k, v in delta("injected").items() if v}
    return swap, faults


def empty_swap() -> dict[str, Any]:
    """A phase's `swap` figures when the host was not asked (no I/O, or the run failed)."""
    return mark_delta({}, host_marks({}))[0]


@dataclass(frozen=True)
class RunFigures:
    """What a report is made of, collected by the guest daemon when the run is over."""
    cfg: GuestConfig
    failure: str | None                          # why the run failed, or None
    start_ns: int                                # run start and end, monotonic ns
    end_ns: int
    tasks: list[Task]                            # every task of every phase
    phase_ns: dict[str, list[int]]               # phase -> [start, end] ns
    parked_ns: list[tuple[str, int]]             # (phase, how long a task slept) ns
    vcpu_stats: list[dict[str, VcpuStats]]       # per vCPU: phase -> its counters
    host_stats: dict[str, Any]                   # the host's last STATS_REPLY
    phase_swap: dict[str, dict[str, int]]        # phase -> the host's swap I/O during it
    tlbi_acks: int
    pages_to_verify: int                         # pages written, read back by the verify phase
    corrupt: dict[int, str]                      # gfn -> what was wrong (first seen)
    corrupt_count: int                           # corrupt accesses seen
    pages_poisoned: int                          # pages the host reported lost
    duplicate_page_ready: int
    injected: dict[str, Any]                     # the guest's fault-injection summary
    workload: dict[str, Any] | None = None       # {"name", "trace": {...} or None}
    pages_touched: int | None = None             # distinct guest pages the workload phase touched
    phase_host_faults: dict[str, dict[str, Any]] = field(default_factory=dict)  # phase -> host fault counts
    dilation: dict[str, Any] | None = None       # guest/dilation.py figures, None without --dilation
    phase_cpu_ns: dict[str, list[int]] = field(default_factory=dict)   # phase -> guest process CPU [start, end] ns
    phase_host_cpu_s: dict[str, float] = field(default_factory=dict)   # phase -> host process CPU during it (s)
    scheduler: dict[str, Any] = field(default_factory=dict)   # guest/scheduler.py Scheduler.figures()
    cut_ns: int | None = None                    # when the run failed (monotonic ns), None if it did not


def build_report(g: RunFigures) -> dict[str, Any]:
    """The report (a JSON-able dict; fields in the module docstring) of one run's figures."""
    phases = {name: _phase_figures(g, name) for name in g.phase_ns}
    workload = phases.get("workload") or _phase_figures(g, "workload")
    failed = [t for t in g.tasks if t.state == TaskState.FAILED]
    host = g.host_stats
    host_swap = host.get("swap", {})
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "mode": g.cfg.mode,
        "ok": g.failure is None and g.corrupt_count == 0 and not failed,
        "partial": g.failure is not None,      # the run was cut short: figures up to that point
        "error": g.failure,
        **workload,
        "verify_s": phases.get("verify", {}).get("wall_s", 0.0),
        "prefill_s": phases.get("prefill", {}).get("wall_s", 0.0),
        "total_s": (g.end_ns - g.start_ns) / 1e9,
        "phases": phases,
        "host_figures": bool(host),            # false: the host's last STATS never came (it was gone)
        "swap": {"reads": host_swap.get("reads", 0), "writes": host_swap.get("writes", 0),
                 "evictions": host_swap.get("evictions", 0),
                 **{k: v for k, v in host_swap.items() if k not in ("reads", "writes", "evictions")}},
        "tlbi_acks": g.tlbi_acks,
        "pages_verified": sum(t.completed for t in g.tasks if t.phase == "verify")
                          - sum(p.get("faults", {}).get("memory_failures", 0) for n, p in phases.items()
                                if n == "verify"),
        "pages_written": g.pages_to_verify,
        "pages_corrupt": len(g.corrupt),
        "pages_poisoned": g.pages_poisoned,
        "corrupt_examples": {str(k): v for k, v in list(g.corrupt.items())[:10]},
        "workload_swap": workload["swap"],
        "tasks": _task_figures(g, failed),
        "scheduler": _scheduler_figures(g),
        "throughput": _throughput(g, workload["wall_s"]),
        "duplicate_page_ready": g.duplicate_page_ready,
        "workload": g.workload or {"name": g.cfg.workload, "trace": None},
        "pages_touched": g.pages_touched,
        "injected": {**host.get("injected", {}), **g.injected},   # both sides (their keys differ)
        "injected_guest": g.injected,
        "injected_host": host.get("injected", {}),
        "host_faults": host.get("faults", {}),
        "host_apf": host.get("apf", {}),
        "host_policy": host.get("policy", {}),
        "host": {**host.get("resources", {}), "memory": host.get("memory", {}),
                 "bad_frames": host.get("bad_frames", {})},
        "guest": process_resources(),
        "config": {k: v for k, v in asdict(g.cfg).items() if k not in ("report", "trace")},
    }
    report["errors"] = _error_counts(report, phases)
    report["dilation"], report["real_equivalent"] = _dilation_figures(g, workload, host)
    if report["real_equivalent"] is not None:
        factor = report["dilation"]["factor"]
        report["real_equivalent"]["throughput"] = {
            k: (v * factor if v is not None and k == "accesses_per_s" else v) for k, v in report["throughput"].items()}
    return report


def _dilation_figures(g: RunFigures, workload: dict[str, Any], host: dict[str, Any]) -> tuple[Any, Any]:
    """(`dilation`, `real_equivalent`) of the report, (None, None) without dilation."""
    if g.dilation is None:
        return None, None
    d = dict(g.dilation)
    swap = workload.get("swap", {})
    device, modelled = swap.get("read_device_ns", 0), swap.get("read_modelled_ns", 0)
    d["swap_in"] = {"device_s": device / 1e9, "modelled_s": modelled / 1e9,
                    "device_share": device / (device + modelled) if device + modelled else None}
    d["host"] = host.get("dilation", {})
    real = real_equivalent(workload, d["factor"])
    real["reliable"] = bool(d.get("reliable"))
    return d, real


def _error_counts(report: dict[str, Any], phases: dict[str, Any]) -> dict[str, int]:
    """Every error the run met, by kind (whole run), whether injected or not."""
    host, swap = report["host"], report["swap"]
    each = lambda section, name: sum(p[section].get(name, 0) for p in phases.values())  # noqa: E731
    return {
        "swap_read_errors": swap.get("read_errors", 0),
        "swap_write_errors": swap.get("write_errors", 0),
        "over_budget_events": host.get("memory", {}).get("over_budget_events", 0),
        "memory_failures": each("faults", "memory_failures"),
        "pages_poisoned": report["pages_poisoned"],
        "pages_corrupt": report["pages_corrupt"],
        "tasks_failed": report["tasks"]["failed"],
        "host_bad_frames": sum(host.get("bad_frames", {}).values()),
        "guest_rejected_frames": each("messages", "rejected"),
        "unexpected_messages": each("messages", "unexpected"),
        "bad_notifications": each("apf", "bad_notifications"),
        "stray_tokens": each("apf", "stray_tokens"),
        "bad_exceptions": each("apf", "bad_exceptions"),
        "duplicate_page_ready": report["duplicate_page_ready"],
    }


def _task_figures(g: RunFigures, failed: list) -> dict[str, Any]:
    workload = [t for t in g.tasks if t.phase == "workload"]
    memory = [t for t in workload if not t.compute]
    compute = [t for t in workload if t.compute]
    return {"total": len(workload), "failed": len(failed), "errors": [t.error for t in failed][:20],
            "memory": len(memory), "accesses": sum(t.completed for t in memory),
            "compute": len(compute), "compute_done": sum(1 for t in compute if t.state == TaskState.DONE),
            "compute_work_s": sum(t.work_ns for t in compute) / 1e9}


TASK_ROWS_MAX = 64      # tasks listed one by one in `scheduler.tasks`; more are summarized by kind only


def _scheduler_figures(g: RunFigures) -> dict[str, Any]:
    """`scheduler`: the class and its tunables (real-equivalent ns), preemptions by reason,
    migrations, and the workload tasks' run delay (runnable until running, µs on the emulator's
    clock) by kind and, for up to TASK_ROWS_MAX tasks, per task."""
    workload = [t for t in g.tasks if t.phase == "workload"]
    delays = {kind: percentiles_us(d for t in workload if t.compute == (kind == "compute") for d in t.run_delays_ns)
              for kind in ("memory", "compute")}
    rows = [{"name": t.name, "kind": "compute" if t.compute else "memory", "runs": len(t.run_delays_ns),
             "run_delay_us": {k: v for k, v in percentiles_us(t.run_delays_ns).items() if k in ("p50", "p99")},
             "cpu_s": t.sum_exec_ns / 1e9} for t in workload[:TASK_ROWS_MAX]]
    return {**g.scheduler, "run_delay_us": delays, "tasks": rows}


def _throughput(g: RunFigures, wall_s: float) -> dict[str, float | None]:
    """`throughput` of the workload phase: memory accesses completed per second, and compute work
    done per second of wall time (vCPU-seconds of work per second: 1.0 is one vCPU's whole time).
    With --duration the time is the duration's window (what runs past it, such as a stall that
    ends later, did no more work)."""
    workload = [t for t in g.tasks if t.phase == "workload"]
    window_ns = g.scheduler.get("window_ns", 0)
    if window_ns:
        wall_s = min(wall_s, window_ns / 1e9)
    if wall_s <= 0:
        return {"accesses_per_s": None, "compute_per_s": None}
    return {"accesses_per_s": sum(t.completed for t in workload if not t.compute) / wall_s,
            "compute_per_s": sum(t.work_ns for t in workload if t.compute) / 1e9 / wall_s}


def _phase_figures(g: RunFigures, phase: str) -> dict[str, Any]:
    """The timing and fault figures of one phase, summed over vCPUs."""
    vstats: list[VcpuStats] = [v[phase] for v in g.vcpu_stats if phase in v]
    start, end = g.phase_ns.get(phase, (0, 0))
    if g.failure is not None and start and end <= start:
        end = max(start, g.cut_ns or g.end_ns)   # the phase the run was cut in: figures until the cut
    total = lambda field: sum(getattr(s, field) for s in vstats)  # noqa: E731
    wall_ns = max(0, end - start)
    return {
        "wall_s": wall_ns / 1e9,
        "vcpu_stall_s": total("stall_ns") / 1e9,
        "vcpu_idle_s": total("idle_ns") / 1e9,
        "vcpu_hvc_s": total("hvc_ns") / 1e9,
        "vcpu_run_s": max(0, wall_ns * len(g.vcpu_stats) - total("stall_ns") - total("idle_ns")) / 1e9,
        "faults": {"total": total("traps"), "resolved_sync": total("resolved_sync"),
                   "async": total("async_faults"), "memory_failures": total("memory_failures"),
                   "write_protect": g.phase_swap.get(phase, {}).get("write_protect", 0),
                   "sync_reasons": _sync_reasons(g.phase_host_faults.get(phase))},
        "fault_latency_us": percentiles_us(ns for s in vstats for ns in s.fault_latency_ns),
        "parked_us": percentiles_us(ns for t, ns in g.parked_ns if t == phase),
        "page_ready": total("page_ready"),
        "swap": g.phase_swap.get(phase) or empty_swap(),
        "host_faults": {k: v for k, v in g.phase_host_faults.get(phase, {}).items() if k != "sync_reasons"},
        "apf": {"wake_all": total("wake_all"), "spurious_irqs": total("spurious_irqs"),
                "acks_withheld": total("acks_withheld"),
                "stray_tokens": total("stray_tokens"), "bad_exceptions": total("bad_exceptions"),
                "reenabled": total("reenabled"), "masked_ns": total("masked_ns"),
                "offline_ns": total("offline_ns"), "bad_notifications": total("bad_notifications")},
        "messages": {"rejected": total("rejected"), "unexpected": total("unexpected")},
        "idle": _idle_figures(total),
        "cpu": _cpu_figures(g, phase),
        "per_vcpu": [_vcpu_row(s) for s in vstats],
    }


def _cpu_figures(g: RunFigures, phase: str) -> dict[str, float | None]:
    """CPU time (s) the phase cost: `guest_s`, the guest process's from the phase's start to its
    end; `host_s`, the host process's between the phase boundaries' STATS requests (the boundary
    after it included); None when not measured (the run ended before the boundary)."""
    start, end = g.phase_cpu_ns.get(phase, (0, 0))
    return {"guest_s": (end - start) / 1e9 if end >= start and phase in g.phase_cpu_ns else None,
            "host_s": g.phase_host_cpu_s.get(phase)}


def _idle_figures(total) -> dict[str, Any]:
    """How the phase's idle vCPUs waited (halt polling, guest/haltpoll.py): `polls` idle periods
    polled first and `poll_hits` of them caught their wake-up event while polling; `poll_ns` is
    the time spent polling (hits and misses; it is part of `vcpu_idle_s`), `poll_hit_ns` that of
    the hits; `blocks` idle periods blocked; `window_grows` / `window_shrinks` count the poll
    window's adjustments."""
    return {"polls": total("halt_polls"), "poll_hits": total("halt_poll_hits"), "poll_ns": total("halt_poll_ns"),
            "poll_hit_ns": total("halt_poll_hit_ns"), "blocks": total("halt_blocks"),
            "window_grows": total("halt_poll_grows"), "window_shrinks": total("halt_poll_shrinks")}


def _sync_reasons(host_faults: dict[str, Any] | None) -> dict[str, int]:
    """Why the phase's synchronous faults were synchronous: the host's refusal reasons during the
    phase, and `spurious` for traps of pages mapped by the time the host saw them (resolved
    without asking). They sum to `resolved_sync` + `memory_failures`."""
    if not host_faults:
        return {}
    reasons = dict(host_faults.get("sync_reasons", {}))
    if host_faults.get("spurious"):
        reasons["spurious"] = host_faults["spurious"]
    return reasons


def _vcpu_row(s: VcpuStats) -> dict[str, Any]:
    return {"stall_s": s.stall_ns / 1e9, "idle_s": s.idle_ns / 1e9, "hvc_s": s.hvc_ns / 1e9,
            "traps": s.traps, "resolved_sync": s.resolved_sync, "async": s.async_faults,
            "page_ready": s.page_ready, "reenabled": s.reenabled,
            "async_after_reenable": s.async_after_reenable,
            "polls": s.halt_polls, "poll_hits": s.halt_poll_hits, "poll_ns": s.halt_poll_ns,
            "fault_latency_us": percentiles_us(s.fault_latency_ns)}


def print_summary(report: dict[str, Any]) -> None:
    """The summary on stdout; a failed run's result line, which carries its error (said only
    there), on stderr."""
    head, _, result = summary(report).rpartition("\n")
    print(head)
    print(result, file=sys.stdout if report["ok"] else sys.stderr, flush=True)


def _real_line(report: dict[str, Any]) -> str:
    """The summary's real-equivalent line (the emulator clock / D) and whether it holds."""
    d, r = report["dilation"], report["real_equivalent"]
    lat, parked = r["fault_latency_us"], r["parked_us"]
    share = d.get("swap_in", {}).get("device_share")
    drift = d.get("drift")
    if d.get("reliable"):
        verdict = f"exit cost drift {drift:+.0%}"
    elif drift is None:
        verdict = "UNRELIABLE: the exit cost could not be measured again at the end"
    else:
        verdict = f"UNRELIABLE: the exit cost drifted {drift:+.0%} (bound {d['drift_bound']:.0%})"
    measured = "not measured" if d["measured_exit_ns"] is None else f"{d['measured_exit_ns'] / 1000:.1f}us measured"
    return (f"real-equivalent clock (/ D {d['factor']:g}; exit cost {measured}, "
            f"{d['target_exit_ns'] / 1000:g}us target; {verdict}): wall {r['wall_s'] * 1e3:.3f}ms, "
            f"stall {r['vcpu_stall_s'] * 1e3:.3f}ms, idle {r['vcpu_idle_s'] * 1e3:.3f}ms, fault p50 "
            f"{lat['p50']:.2f}us p99 {lat['p99']:.2f}us, parked p50 {parked['p50']:.2f}us"
            + (f"; swap-in time {share:.0%} real device (not dilated)" if share is not None else ""))


def summary(report: dict[str, Any]) -> str:
    """A short human summary of a report."""
    f, lat, sw = report["faults"], report["fault_latency_us"], report["swap"]
    ws, tasks = report.get("workload_swap"), report["tasks"]
    lines = [
        f"mode {report['mode']}: wall {report['wall_s']:.3f}s, stall {report['vcpu_stall_s']:.3f}s, "
        f"idle {report['vcpu_idle_s']:.3f}s (summed over vCPUs; workload phase)",
        f"faults {f['total']}: {f['resolved_sync']} resolved synchronously, {f['async']} asynchronous; "
        f"latency p50 {lat['p50']:.0f}us p99 {lat['p99']:.0f}us max {lat['max']:.0f}us",
        *(([f"swap (whole run): {sw['reads']} reads, {sw['writes']} writes, {sw['evictions']} evictions"
             + (f" (I/O engine: {sw['io_engine']})" if sw.get("io_engine") else "")]
            + ([f"swap (workload phase): {ws['reads']} reads, {ws['writes']} writes, "
                f"{ws.get('clean_drops', 0)} clean drops, {ws.get('write_protect', 0)} write-protect faults, "
                f"readahead {ws.get('readahead', {}).get('pages', 0)} pages "
                f"({ws.get('readahead', {}).get('hits', 0)} hits)"] if ws else []))
          if report.get("host_figures", True) else ["swap: not known (the host's figures never came: it was gone)"]),
        (("pages not verified: the run was cut before its verify phase"
          if report.get("partial") and "verify" not in report.get("phases", {}) else
          f"pages verified {report['pages_verified']} in {report['verify_s']:.3f}s, corrupt {report['pages_corrupt']}")
         if report.get("config", {}).get("verify", True) else "pages not verified (--no-verify)"),
    ]
    if report.get("page_ready"):
        lines.insert(2, f"page-ready {report['page_ready']}, tasks parked p50 {report['parked_us']['p50']:.0f}us "
                        f"p99 {report['parked_us']['p99']:.0f}us")
    idle = report.get("idle") or {}
    if idle.get("polls"):
        lines.insert(2, f"halt polling: {idle['poll_hits']} of {idle['polls']} idle polls caught their interrupt "
                        f"({idle['poll_ns'] / 1e9:.3f}s polling), {idle['blocks']} blocked")
    if tasks.get("compute"):
        lines.insert(2, f"compute tasks {tasks['compute_done']}/{tasks['compute']} done, "
                        f"{tasks['compute_work_s']:.3f}s of CPU work")
    sched = report.get("scheduler") or {}
    if sched.get("policy"):
        pre, delay = sched["preemptions"], sched["run_delay_us"]["memory"]
        lines.insert(2, f"scheduler {sched['policy']}: {pre['wakeup']} wake-up and {pre['tick']} tick preemptions, "
                        f"{sched['migrations']} migrations; memory tasks' run delay p50 {delay['p50']:.0f}us "
                        f"p99 {delay['p99']:.0f}us")
    if report.get("real_equivalent"):
        lines[0] = lines[0].replace("mode ", "emulator clock, mode ", 1)
        lines.insert(1, _real_line(report))
    if report["tasks"]["failed"]:
        lines.append(f"tasks failed: {report['tasks']['failed']} ({report['tasks']['errors'][0]})")
    trace = (report.get("workload") or {}).get("trace")
    if trace:
        lines.insert(1, f"trace {os.path.basename(trace['path'])}: "
                        + ("every page written before the workload (its read-only pages hold data and swap)"
                           if trace.get("prefilled", False) else
                           "pages not written before the workload (--zero-fill: read-only pages map the zero "
                           "page and never swap)"))
    host_faults = report.get("host_faults", {})
    if not host_faults.get("major") and not sw["reads"] and not report.get("partial"):   # a cut-short run's zeros say nothing
        lines.append("no major fault: the working set never exceeded host memory (nothing was read back "
                     "from swap); make --host-mem smaller than the working set to exercise swapping")
    errors = {k: v for k, v in report.get("errors", {}).items() if v}
    if errors:
        lines.append("errors: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in errors.items()))
    if report.get("injected"):
        lines.append("injected: " + ", ".join(f"{k} x{v}" for k, v in sorted(report["injected"].items())))
    why = report.get("error") or (f"{report['tasks']['failed']} task(s) killed" if report["tasks"]["failed"]
                                  else f"{report['pages_corrupt']} corrupt page(s)")
    counted = " (errors were counted: see the errors line)" if errors else ""
    partial = " (partial report: the run was cut short)" if report.get("partial") else ""
    lines.append("result: " + ("OK" + counted if report["ok"] else f"FAILED - {why}") + partial)
    return "\n".join(lines)
