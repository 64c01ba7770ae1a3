"""The run report: the JSON users script against. Field names are an interface: extend, never rename.

Required fields: `mode`, `wall_s`, `vcpu_stall_s`, `vcpu_idle_s`, `faults` {`total`,
`resolved_sync`, `async`}, `fault_latency_us` {`p50`, `p99`, `max`}, `swap` {`reads`, `writes`,
`evictions`}, `pages_verified`, `pages_corrupt`, `host` and `guest` resources.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from apf.metrics import percentiles_us, process_resources
from guest.scheduler import TaskState

if TYPE_CHECKING:
    from guest.daemon import Guest

REPORT_VERSION = 1


def build_report(g: "Guest") -> dict[str, Any]:
    vstats = [v.stats for v in g.vcpus]
    latencies = [ns for s in vstats for ns in s.fault_latency_ns]
    ends = g.sched.phase_ends_ns
    workload_end = ends[0] if ends else g.end_ns
    verify_tasks = [t for t in g.sched.all_tasks if t.phase == "verify"]
    failed = [t for t in g.sched.all_tasks if t.state == TaskState.FAILED]
    host = g.host_stats
    host_swap = host.get("swap", {})
    host_faults = host.get("faults", {})
    stall = sum(s.stall_ns for s in vstats)
    idle = sum(s.idle_ns for s in vstats)
    busy_ns = sum(max(0, v.ended_ns - v.started_ns) for v in g.vcpus)
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "mode": g.cfg.mode,
        "ok": g.failure is None and g.mem.corrupt_count == 0 and not failed,
        "error": g.failure,
        "wall_s": (workload_end - g.start_ns) / 1e9,
        "verify_s": (ends[1] - ends[0]) / 1e9 if len(ends) > 1 else 0.0,
        "total_s": (g.end_ns - g.start_ns) / 1e9,
        "vcpu_stall_s": stall / 1e9,
        "vcpu_idle_s": idle / 1e9,
        "vcpu_hvc_s": sum(s.hvc_ns for s in vstats) / 1e9,
        "vcpu_run_s": max(0, busy_ns - stall - idle) / 1e9,
        "faults": {
            "total": sum(s.traps for s in vstats),
            "resolved_sync": sum(s.resolved_sync for s in vstats),
            "async": sum(s.async_faults for s in vstats),
            "memory_failures": sum(s.memory_failures for s in vstats),
            "sync_reasons": host_faults.get("sync_reasons", {}),
            "host": host_faults,
        },
        "fault_latency_us": percentiles_us(latencies),
        "parked_us": percentiles_us(g.sched.parked_ns),
        "page_ready": sum(s.page_ready for s in vstats),
        "apf": {
            "wake_all": sum(s.wake_all for s in vstats),
            "spurious_irqs": sum(s.spurious_irqs for s in vstats),
            "stray_tokens": sum(s.stray_tokens for s in vstats),
            "bad_exceptions": sum(s.bad_exceptions for s in vstats),
            "placeholders_consumed": g.waits.placeholders_consumed,
            "host": host.get("apf", {}),
        },
        "swap": {"reads": host_swap.get("reads", 0), "writes": host_swap.get("writes", 0),
                 "evictions": host_swap.get("evictions", 0), **{k: v for k, v in host_swap.items()
                                                               if k not in ("reads", "writes", "evictions")}},
        "tlbi_acks": g.tlbi_acks,
        "pages_verified": sum(t.completed for t in verify_tasks),
        "pages_written": g.pages_to_verify,
        "pages_corrupt": len(g.mem.corrupt),
        "corrupt_examples": {str(k): v for k, v in list(g.mem.corrupt.items())[:10]},
        "tasks": {"total": len([t for t in g.sched.all_tasks if t.phase == "workload"]),
                  "failed": len(failed), "errors": [t.error for t in failed][:20],
                  "accesses": sum(t.completed for t in g.sched.all_tasks if t.phase == "workload")},
        "per_vcpu": [_vcpu_row(s) for s in vstats],
        "messages": {"rejected": sum(s.rejected for s in vstats),
                     "unexpected": sum(s.unexpected for s in vstats)},
        "host": {**host.get("resources", {}), "memory": host.get("memory", {}),
                 "bad_frames": host.get("bad_frames", {})},
        "guest": process_resources(),
        "config": {k: v for k, v in asdict(g.cfg).items() if k not in ("report", "trace")},
    }
    return report


def _vcpu_row(s) -> dict[str, Any]:
    return {"stall_s": s.stall_ns / 1e9, "idle_s": s.idle_ns / 1e9, "hvc_s": s.hvc_ns / 1e9,
            "traps": s.traps, "resolved_sync": s.resolved_sync, "async": s.async_faults,
            "page_ready": s.page_ready, "fault_latency_us": percentiles_us(s.fault_latency_ns)}


def summary(report: dict[str, Any]) -> str:
    """A short human summary of a report."""
    f, lat, sw = report["faults"], report["fault_latency_us"], report["swap"]
    lines = [
        f"mode {report['mode']}: wall {report['wall_s']:.3f}s "
        f"(verify {report.get('verify_s', 0):.3f}s), stall {report['vcpu_stall_s']:.3f}s, "
        f"idle {report['vcpu_idle_s']:.3f}s summed over vCPUs",
        f"faults {f['total']}: {f['resolved_sync']} resolved synchronously, {f['async']} asynchronous; "
        f"latency p50 {lat['p50']:.0f}us p99 {lat['p99']:.0f}us max {lat['max']:.0f}us",
        f"swap: {sw['reads']} reads, {sw['writes']} writes, {sw['evictions']} evictions",
        f"pages verified {report['pages_verified']}, corrupt {report['pages_corrupt']}",
    ]
    if report.get("page_ready"):
        lines.insert(2, f"page-ready {report['page_ready']}, parked p50 {report['parked_us']['p50']:.0f}us "
                        f"p99 {report['parked_us']['p99']:.0f}us")
    if report["tasks"]["failed"]:
        lines.append(f"tasks failed: {report['tasks']['failed']} ({report['tasks']['errors'][0]})")
    lines.append("result: " + ("OK" if report["ok"] else f"FAILED - {report.get('error') or 'see report'}"))
    return "\n".join(lines)
