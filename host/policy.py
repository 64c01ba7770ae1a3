"""Which faults the host makes asynchronous: `--policy sync | async | adaptive`.

A synchronous fault costs its vCPU the whole swap-in: the vCPU is stalled in the host until the
page is in. An asynchronous fault costs it the notifications (the exception, the page-ready
interrupt and the ACK) plus the time it then spends idle for want of anything else to run. The
adaptive policy measures these per vCPU as it goes and takes the cheaper:

- swap-in: moving average of the time from a swap-in's request to its completion reaching the
  poll loop (queueing, the I/O and the wake-up: what a sync fault stalls for beyond its trap),
  one sample per request, however many pages it reads ahead;
- idle per async fault: the time from a WFI message to the vCPU's next message, counted when the
  WFI began with async faults in flight or a page-ready on its way, divided by the async faults
  taken, per WINDOW faults. With one task that is the whole swap-in plus the interrupt's round
  trip; with tasks enough to cover the I/O it is near zero. It already holds the notification
  cost of an idle vCPU;
- notification cost on a busy vCPU: the page-ready-interrupt-to-APF_ACK round trip, sampled when
  the interrupt found the vCPU idle (a busy vCPU takes it at its next interrupt window, which
  would time the guest's work). The vCPU's own part of it (taking the interrupt, waking the
  task, posting the ACK) is counted as NOTIFY_SHARE of the round trip; the rest is transit
  the vCPU does not wait for.

A fault is taken asynchronously when the swap-in exceeds idle-per-fault + NOTIFY_SHARE x
notification by at least MIN_GAIN of the swap-in. Without that margin, one task on its vCPU is a
tie (it idles for the whole swap-in either way) that scheduling noise decides, flipping back and
forth; a saving smaller than the moving averages' noise pays for nothing that async costs the
guest beyond what the host sees (a task switch, cold caches). One fault in PROBE_EVERY of those refused still goes asynchronous, so that the
figures stay current when the workload changes. Each window of probes that again finds async
the loser doubles that interval, up to PROBE_MAX (probes are what adaptive pays where sync
wins); a window whose own sample finds async paying brings it straight back to PROBE_EVERY.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

POLICIES = ("sync", "async", "adaptive")
EWMA_WEIGHT = 0.1          # weight of a new sample in the moving averages
PROBE_EVERY = 16
PROBE_MAX = 128
WINDOW = 8                 # async faults per idle-per-fault sample
NOTIFY_SHARE = 0.25        # the vCPU's part of an interrupt-to-ACK round trip (see above)
MIN_GAIN = 0.1             # async must save this share of a swap-in to be taken (see above)


def _ewma(old: float | None, sample: float) -> float:
    return sample if old is None else old + EWMA_WEIGHT * (sample - old)


@dataclass
class VcpuFigures:
    idle_since_ns: int = 0                     # in WFI since then; 0 while running
    idle_charged: bool = False                 # this WFI began with async faults in flight
    idle_ns: int = 0                           # idle time charged to async faults, this window
    faults: int = 0                            # async faults, this window
    woken: int = 0                             # page-readies delivered that the vCPU has not run after
    idle_per_fault_ns: float | None = None
    refused: int = 0                           # faults refused since the last probe
    probe_every: int = PROBE_EVERY

    @property
    def idle(self) -> bool:
        return self.idle_since_ns != 0


@dataclass
class Policy:
    name: str
    nr_vcpus: int
    swap_in_ns: float | None = None
    swap_in_samples: int = 0   # swap-in requests that fed swap_in_ns
    notify_ns: float | None = None
    chosen_async: int = 0
    chosen_sync: int = 0

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise ValueError(f"unknown policy {self.name!r}; one of {', '.join(POLICIES)}")
        self.vcpus = [VcpuFigures() for _ in range(self.nr_vcpus)]

    # -- the decision ----------------------------------------------------------------------------
    def allows_async(self, vcpu: int) -> bool:
        allowed = self._decide(vcpu)
        if allowed:
            self.chosen_async += 1
        else:
            self.chosen_sync += 1
        return allowed

    def _decide(self, vcpu: int) -> bool:
        if self.name != "adaptive":
            return self.name == "async"
        figures = self.vcpus[vcpu]
        if self._worth_it(figures):
            return True
        figures.refused += 1
        if figures.refused < figures.probe_every:
            return False
        figures.refused = 0
        return True

    def _worth_it(self, figures: VcpuFigures) -> bool:
        return self._async_pays(figures.idle_per_fault_ns)

    def _async_pays(self, idle_per_fault_ns: float | None) -> bool:
        if self.swap_in_ns is None:
            return True                                  # nothing measured yet: try async
        return (1 - MIN_GAIN) * self.swap_in_ns > self._cost_ns(idle_per_fault_ns)

    def async_cost_ns(self, figures: VcpuFigures) -> float:
        """What an asynchronous fault is expected to cost its vCPU (unmeasured parts count 0)."""
        return self._cost_ns(figures.idle_per_fault_ns)

    def _cost_ns(self, idle_per_fault_ns: float | None) -> float:
        return (idle_per_fault_ns or 0.0) + NOTIFY_SHARE * (self.notify_ns or 0.0)

    # -- what the host observes ------------------------------------------------------------------
    def swap_in_done(self, latency_ns: int) -> None:
        """One swap-in request took `latency_ns` from its submission to its completion reaching
        the poll loop."""
        self.swap_in_ns = _ewma(self.swap_in_ns, latency_ns)
        self.swap_in_samples += 1

    def not_present(self, vcpu: int, token: int) -> None:
        self.vcpus[vcpu].faults += 1

    def vcpu_active(self, vcpu: int, now_ns: int | None = None) -> None:
        """The vCPU sent a trap or a hypercall: it is running again."""
        figures = self.vcpus[vcpu]
        if figures.idle and figures.idle_charged:
            now_ns = time.monotonic_ns() if now_ns is None else now_ns
            figures.idle_ns += now_ns - figures.idle_since_ns
        figures.idle_since_ns = 0
        figures.woken = 0
        if figures.faults >= WINDOW:     # the idle after the window's last fault is in
            sample = figures.idle_ns / figures.faults
            figures.idle_per_fault_ns = _ewma(figures.idle_per_fault_ns, sample)
            figures.idle_ns = figures.faults = 0
            figures.probe_every = (PROBE_EVERY if self._async_pays(sample)
                                   else min(2 * figures.probe_every, PROBE_MAX))

    def is_idle(self, vcpu: int) -> bool:
        return self.vcpus[vcpu].idle

    def vcpu_idle(self, vcpu: int, outstanding: int, now_ns: int | None = None) -> None:
        """WFI with `outstanding` asynchronous faults in flight. The idle time is charged to async
        if any is in flight or has its page-ready on the way (the vCPU waits for that interrupt)."""
        figures = self.vcpus[vcpu]
        if not figures.idle:
            figures.idle_since_ns = time.monotonic_ns() if now_ns is None else now_ns
            figures.idle_charged = outstanding + figures.woken > 0

    def page_ready(self, vcpu: int, token: int) -> None:
        self.vcpus[vcpu].woken += 1

    def notified(self, round_trip_ns: int) -> None:
        # A sample is capped at twice the estimate: on a loaded machine a few wake-ups take
        # milliseconds, which says more about the machine than about what a notification costs.
        if self.notify_ns is not None:
            round_trip_ns = min(round_trip_ns, 2 * self.notify_ns)
        self.notify_ns = _ewma(self.notify_ns, round_trip_ns)

    def figures(self) -> dict:
        us = lambda ns: None if ns is None else round(ns / 1000, 1)  # noqa: E731
        return {"name": self.name, "async": self.chosen_async, "sync": self.chosen_sync,
                "swap_in_us": us(self.swap_in_ns), "swap_in_samples": self.swap_in_samples,
                "notify_us": us(self.notify_ns),
                "idle_per_fault_us": [us(v.idle_per_fault_ns) for v in self.vcpus],
                "async_cost_us": [us(self.async_cost_ns(v)) for v in self.vcpus],
                "idle_ratio": [self._idle_ratio(v) for v in self.vcpus],
                "probe_every": [v.probe_every for v in self.vcpus]}

    def _idle_ratio(self, figures: VcpuFigures) -> float:
        """The share of an async fault's swap-in its vCPU spent idle, 0 to 1 (1: async left it
        nothing to run); 0 until measured."""
        if figures.idle_per_fault_ns is None or not self.swap_in_ns:
            return 0.0
        return round(min(1.0, figures.idle_per_fault_ns / self.swap_in_ns), 3)
