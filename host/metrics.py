"""The host's Prometheus endpoint (`apf host --metrics [ADDR:]PORT`).

A scrape asks the poll loop for a snapshot of the STATS figures (host/stats.py) and waits for it
(bounded: a loop that does not answer within SNAPSHOT_BOUND_S, e.g. a muted host, serves the last
one); the loop answers between two polls, so the scrape never touches the loop's state. Counters
are made monotonic across the per-guest resets (the loop folds a leaving guest's final figures
in before the reset). The two histograms are observed on the loop as events happen.

    apf_faults_total, apf_faults_{async,major,minor,spurious}_total, apf_faults_sync_total{reason}
    apf_swap_{reads,writes,evictions,read_errors,write_errors}_total, apf_tlbi_batches_total
    apf_page_{not_present,ready}_total, apf_{wake_all,acks,reraised,dropped_by_disable}_total
    apf_bad_frames_total{code}, apf_injected_total{fault}, apf_sessions_total
    gauges: apf_resident_pages, apf_budget_pages, apf_free_pages, apf_evicting_pages,
            apf_over_budget_pages, apf_guest_attached, apf_outstanding_apfs{vcpu},
            apf_queued_page_ready{vcpu}
    a remote swap back-end only (STATS `swap.remote`):
            apf_swap_remote_{timeouts,errors}_total; gauges apf_swap_remote_keys,
            apf_swap_remote_bytes, apf_swap_remote_nodes, apf_swap_remote_rtt_seconds{quantile}
            (quantile "0.5" and "0.99" of the newest round trips, as STATS' rtt_us)
    histograms: apf_fault_latency_seconds{vcpu} (TRAP to its answer),
                apf_swap_in_latency_seconds (each page's swap-in in the engine, as STATS swap_in_us)
"""
from __future__ import annotations

import threading
from typing import Callable

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from host.stats import HostStats
from shared.prom import FAULT_BUCKETS, SWAP_IN_BUCKETS, Endpoint, Monotonic

SNAPSHOT_BOUND_S = 1.0

# (metric name without _total, help, section, field) of the plain counters
COUNTERS = (
    ("apf_faults", "TRAPs handled", "faults", "total"),
    ("apf_faults_async", "faults answered PAGE_NOT_PRESENT", "faults", "async_"),
    ("apf_faults_major", "faults that needed a swap read", "faults", "major"),
    ("apf_faults_minor", "faults that needed no swap read", "faults", "minor"),
    ("apf_faults_spurious", "TRAPs of pages already mapped", "faults", "spurious"),
    ("apf_swap_reads", "swap-ins", "swap", "reads"),
    ("apf_swap_writes", "write-backs", "swap", "writes"),
    ("apf_swap_evictions", "pages evicted", "swap", "evictions"),
    ("apf_swap_read_errors", "swap-ins that failed", "swap", "read_errors"),
    ("apf_swap_write_errors", "write-backs that failed", "swap", "write_errors"),
    ("apf_tlbi_batches", "TLB invalidation batches", "swap", "tlbi_batches"),
    ("apf_page_not_present", "PAGE_NOT_PRESENT notifications", "apf", "not_present"),
    ("apf_page_ready", "page-ready interrupts", "apf", "page_ready"),
    ("apf_wake_all", "wake-all tokens", "apf", "wake_all"),
    ("apf_acks", "APF_ACKs", "apf", "acks"),
    ("apf_reraised", "page-ready interrupts raised again", "apf", "reraised"),
    ("apf_dropped_by_disable", "page-readies dropped by APF_DISABLE", "apf", "dropped_by_disable"),
)
GAUGES = (
    ("apf_resident_pages", "guest pages charged to the budget: resident, being read in or being evicted",
     "resident_pages"),
    ("apf_budget_pages", "most pages resident (--host-mem)", "budget_pages"),
    ("apf_free_pages", "free pages", "free_pages"),
    ("apf_evicting_pages", "unmapped victims waiting for their TLBI ack or write-back", "evicting_pages"),
    ("apf_over_budget_pages", "pages resident beyond the budget (failed write-backs)", "over_budget_pages"),
)

# (metric name, help, key of STATS swap.remote) of a remote swap back-end
REMOTE_COUNTERS = (
    ("apf_swap_remote_timeouts", "pages whose remote swap I/O got no reply within --swap-timeout", "timeouts"),
    ("apf_swap_remote_errors", "pages whose remote swap I/O failed otherwise (connection, missing key, "
     "error reply)", "errors"),
)
REMOTE_GAUGES = (
    ("apf_swap_remote_keys", "swap keys this host may hold on the remote service", "keys"),
    ("apf_swap_remote_bytes", "bytes of pages this host may hold on the remote service", "bytes"),
    ("apf_swap_remote_nodes", "servers of the remote service (a cluster's primaries)", "nodes"),
)
RTT_QUANTILES = (("0.5", "p50"), ("0.99", "p99"))


class HostMetrics:
    def __init__(self, listen: str, vcpus: int):
        self.registry = CollectorRegistry(auto_describe=True)
        self.fault_latency = Histogram("apf_fault_latency_seconds", "time from a TRAP to its answer, by vCPU",
                                       ["vcpu"], buckets=FAULT_BUCKETS, registry=self.registry)
        self.swap_in = Histogram("apf_swap_in_latency_seconds", "each page's swap-in in the engine, modelled latency included",
                                 buckets=SWAP_IN_BUCKETS, registry=self.registry)
        self._by_vcpu = [self.fault_latency.labels(vcpu=str(v)) for v in range(vcpus)]
        self._want = threading.Event()
        self._ready = threading.Event()
        self._lock = threading.Lock()       # one scrape at a time asks the loop
        self._totals = Monotonic()
        self._families: list = []
        ProcessCollector(registry=self.registry)
        self.registry.register(_Snapshot(self))
        self.endpoint = Endpoint(listen, self.registry)

    # -- on the poll loop ------------------------------------------------------------------------
    def observe_fault(self, vcpu: int, seconds: float) -> None:
        if 0 <= vcpu < len(self._by_vcpu):
            self._by_vcpu[vcpu].observe(seconds)

    def observe_swap_in(self, seconds: float) -> None:
        self.swap_in.observe(seconds)

    def service(self, statistics: Callable[[], HostStats]) -> None:
        """Answer a waiting scrape with a fresh snapshot (cheap when none waits)."""
        if self._want.is_set():
            self._want.clear()
            self._families = self._build(statistics())
            self._ready.set()

    def session_ended(self, final: HostStats) -> None:
        """Fold a leaving guest's last figures in, before the host resets its counters."""
        self._families = self._build(final)
        self._totals.reset()

    # -- on the scrape thread --------------------------------------------------------------------
    def snapshot(self) -> list:
        with self._lock:
            self._ready.clear()
            self._want.set()
            self._ready.wait(SNAPSHOT_BOUND_S)
            return self._families

    def close(self) -> None:
        self.endpoint.close()

    def _build(self, s: HostStats) -> list:
        up = self._totals.update
        families = []
        for name, doc, section, fld in COUNTERS:
            family = CounterMetricFamily(name, doc)
            family.add_metric([], up((name,), getattr(getattr(s, section), fld)))
            families.append(family)
        for name, doc, label, values in (
                ("apf_faults_sync", "faults resolved synchronously, by why", "reason", s.faults.sync_reasons),
                ("apf_bad_frames", "frames the host rejected, by error", "code", s.bad_frames),
                ("apf_injected", "injected faults that fired, by fault", "fault", s.injected)):
            family = CounterMetricFamily(name, doc, labels=[label])
            for key, value in sorted(values.items()):
                family.add_metric([str(key)], up((name, key), value))
            families.append(family)
        sessions = CounterMetricFamily("apf_sessions", "guests served to their end")
        sessions.add_metric([], s.session.sessions_served)
        families.append(sessions)
        for name, doc, fld in GAUGES:
            families.append(GaugeMetricFamily(name, doc, value=getattr(s.memory, fld)))
        families.append(GaugeMetricFamily("apf_guest_attached", "1 while a guest is attached",
                                          value=int(s.session.attached)))
        for name, doc, values in (("apf_outstanding_apfs", "asynchronous faults in flight, by vCPU", s.apf.outstanding),
                                  ("apf_queued_page_ready", "page-readies waiting for the slot, by vCPU",
                                   s.apf.queued)):
            family = GaugeMetricFamily(name, doc, labels=["vcpu"])
            for vcpu, value in enumerate(values):
                family.add_metric([str(vcpu)], value)
            families.append(family)
        if s.swap.remote:
            families.extend(self._remote(s.swap.remote))
        return families

    def _remote(self, remote: dict) -> list:
        """The families of a remote swap back-end, from STATS `swap.remote` {keys, bytes, timeouts,
        errors, rtt_us {p50, p99, ...} in µs, nodes}."""
        families = []
        for name, doc, key in REMOTE_COUNTERS:     # the device's own: counted since the host started
            family = CounterMetricFamily(name, doc)
            family.add_metric([], remote.get(key, 0))
            families.append(family)
        for name, doc, key in REMOTE_GAUGES:
            families.append(GaugeMetricFamily(name, doc, value=remote.get(key, 0)))
        rtt = GaugeMetricFamily("apf_swap_remote_rtt_seconds", "round trip of a remote swap request, by "
                                "quantile of the newest ones", labels=["quantile"])
        for quantile, key in RTT_QUANTILES:
            rtt.add_metric([quantile], (remote.get("rtt_us") or {}).get(key, 0) / 1e6)
        families.append(rtt)
        return families


class _Snapshot:
    """The registry's view of the loop's last snapshot."""

    def __init__(self, metrics: HostMetrics):
        self.metrics = metrics

    def describe(self) -> list:
        return []          # not known before the first snapshot; registered without names

    def collect(self):
        yield from self.metrics.snapshot()
