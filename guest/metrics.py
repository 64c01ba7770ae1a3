"""The guest's Prometheus endpoint (`apf guest --metrics [ADDR:]PORT`).

A scrape reads the vCPUs' counters (plain integers each vCPU thread adds to; a read is atomic in
CPython) summed over the run's phases, by vCPU:

    apf_guest_faults_total{vcpu}, apf_guest_faults_sync_total{vcpu},
    apf_guest_faults_async_total{vcpu}, apf_guest_memory_failures_total{vcpu},
    apf_guest_page_ready_total{vcpu}, apf_guest_wake_all_total{vcpu},
    apf_guest_stray_tokens_total{vcpu}, apf_guest_bad_notifications_total{vcpu},
    apf_guest_stall_seconds_total{vcpu}, apf_guest_idle_seconds_total{vcpu},
    apf_guest_halt_polls_total{vcpu}, apf_guest_halt_poll_hits_total{vcpu},
    apf_guest_halt_poll_seconds_total{vcpu},
    apf_guest_accesses_total, apf_guest_injected_total{fault}
    histogram: apf_guest_fault_latency_seconds{vcpu} (a trap as the vCPU waited for it)
"""
from __future__ import annotations

import threading
from typing import Callable

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily

from shared.prom import FAULT_BUCKETS, Endpoint, SampleHistogram

# (metric name without _total, help, VcpuStats field, scale)
COUNTERS = (
    ("apf_guest_faults", "traps to the host", "traps", 1),
    ("apf_guest_faults_sync", "traps answered by RESUME", "resolved_sync", 1),
    ("apf_guest_faults_async", "traps answered PAGE_NOT_PRESENT", "async_faults", 1),
    ("apf_guest_memory_failures", "traps answered MEMORY_FAILURE", "memory_failures", 1),
    ("apf_guest_page_ready", "page-ready interrupts taken", "page_ready", 1),
    ("apf_guest_wake_all", "wake-all tokens taken", "wake_all", 1),
    ("apf_guest_stray_tokens", "page-readies for tokens nobody slept on", "stray_tokens", 1),
    ("apf_guest_bad_notifications", "host notifications the guest could not take", "bad_notifications", 1),
    ("apf_guest_stall_seconds", "time vCPUs were blocked in traps", "stall_ns", 1e-9),
    ("apf_guest_idle_seconds", "time vCPUs had nothing to run", "idle_ns", 1e-9),
    ("apf_guest_halt_polls", "idle periods that polled before blocking (--halt-poll)", "halt_polls", 1),
    ("apf_guest_halt_poll_hits", "idle polls that caught their wake-up event", "halt_poll_hits", 1),
    ("apf_guest_halt_poll_seconds", "time idle vCPUs spent polling", "halt_poll_ns", 1e-9),
)


class GuestMetrics:
    def __init__(self, listen: str, vcpus: list, accesses: Callable[[], int], injected: Callable[[], dict]):
        """`vcpus`: the guest's Vcpu threads (their `phase_stats`); `accesses()` the accesses
        completed so far; `injected()` the guest's fault-injection summary."""
        self.vcpus, self.accesses, self.injected = vcpus, accesses, injected
        self.latency = SampleHistogram(FAULT_BUCKETS)
        self._lock = threading.Lock()       # scrapes may overlap; the histogram's cursors are shared
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.registry.register(self)
        self.endpoint = Endpoint(listen, self.registry)

    def describe(self) -> list:
        return []

    def collect(self):
        with self._lock:
            return self._families()

    def _families(self) -> list:
        out = []
        rows = [(str(v.index), list(v.phase_stats.items())) for v in self.vcpus]
        for name, doc, fld, scale in COUNTERS:
            family = CounterMetricFamily(name, doc, labels=["vcpu"])
            for vcpu, phases in rows:
                family.add_metric([vcpu], sum(getattr(s, fld) for _, s in phases) * scale)
            out.append(family)
        out.append(CounterMetricFamily("apf_guest_accesses", "memory accesses completed", value=self.accesses()))
        injected = CounterMetricFamily("apf_guest_injected", "injected faults that fired, by fault",
                                       labels=["fault"])
        for fault, count in sorted(self.injected().items()):
            injected.add_metric([fault], count)
        out.append(injected)
        for vcpu, phases in rows:
            for phase, s in phases:
                self.latency.update((vcpu,), (vcpu, phase), s.fault_latency_ns)
        out.append(self.latency.family("apf_guest_fault_latency_seconds", "a trap as its vCPU waited for it, "
                                       "by vCPU", ["vcpu"]))
        return out

    def close(self) -> None:
        self.endpoint.close()
