"""Which faults the host makes asynchronous: `--policy sync | async | adaptive`.

APF pays when the swap-in is long compared with what the notifications cost, *and* the vCPU
has something else to run meanwhile. The adaptive policy measures both as it goes:

- the swap-in time a fault would wait (moving average of the swap-in service time);
- the cost of one asynchronous fault's extra messages: the page-ready-interrupt-to-APF_ACK
  round trip the host sees, sampled only when the interrupt found the vCPU idle (otherwise it
  measures how long the guest kept interrupts waiting, not what a notification costs);
- whether async helped: after PAGE_NOT_PRESENT, did the vCPU go idle (WFI) with only that one
  fault in flight (nothing else ran, no other I/O overlapped: async only added cost), or did it
  keep working, or at least start other faults whose I/O overlaps?

A fault is taken asynchronously when the expected swap-in exceeds COST_FACTOR x the notification
cost and the vCPU was idle after fewer than IDLE_LIMIT of its recent asynchronous faults. One
fault in PROBE_EVERY of those refused still goes asynchronous, so that the figures stay current.
"""
from __future__ import annotations

from dataclasses import dataclass, field

POLICIES = ("sync", "async", "adaptive")
EWMA_WEIGHT = 0.1          # weight of a new sample in the moving averages
COST_FACTOR = 1.5          # async must expect to save this many times what it costs
IDLE_LIMIT = 0.5           # above this idle ratio, async leaves the vCPU with nothing to run
PROBE_EVERY = 16


def _ewma(old: float | None, sample: float) -> float:
    return sample if old is None else old + EWMA_WEIGHT * (sample - old)


@dataclass
class VcpuFigures:
    idle_ratio: float = 0.0                    # optimistic until measured
    idle: bool = False                         # in WFI now (since its last trap or hypercall)
    watching: set[int] = field(default_factory=set)   # tokens whose outcome is not known yet
    refused: int = 0


@dataclass
class Policy:
    name: str
    nr_vcpus: int
    swap_in_ns: float | None = None
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
        return figures.refused % PROBE_EVERY == 0

    def _worth_it(self, figures: VcpuFigures) -> bool:
        if figures.idle_ratio > IDLE_LIMIT:
            return False
        if self.swap_in_ns is None or self.notify_ns is None:
            return True                                  # nothing measured yet: try async
        return self.swap_in_ns > COST_FACTOR * self.notify_ns

    # -- what the host observes ------------------------------------------------------------------
    def swap_in_done(self, latency_ns: int) -> None:
        self.swap_in_ns = _ewma(self.swap_in_ns, latency_ns)

    def not_present(self, vcpu: int, token: int) -> None:
        self.vcpus[vcpu].watching.add(token)

    def vcpu_active(self, vcpu: int) -> None:
        self.vcpus[vcpu].idle = False

    def is_idle(self, vcpu: int) -> bool:
        return self.vcpus[vcpu].idle

    def vcpu_idle(self, vcpu: int, outstanding: int) -> None:
        """WFI with `outstanding` asynchronous faults in flight: with one, async gained nothing;
        with more, their I/O at least overlaps."""
        figures = self.vcpus[vcpu]
        figures.idle = True
        sample = 1.0 if outstanding <= 1 else 0.0
        for _ in figures.watching:
            figures.idle_ratio = _ewma(figures.idle_ratio, sample)
        figures.watching.clear()

    def page_ready(self, vcpu: int, token: int) -> None:
        """The page came in while the vCPU kept working: async overlapped."""
        figures = self.vcpus[vcpu]
        if token in figures.watching:
            figures.watching.discard(token)
            figures.idle_ratio = _ewma(figures.idle_ratio, 0.0)

    def notified(self, round_trip_ns: int) -> None:
        self.notify_ns = _ewma(self.notify_ns, round_trip_ns)

    def figures(self) -> dict:
        us = lambda ns: None if ns is None else round(ns / 1000, 1)  # noqa: E731
        return {"name": self.name, "async": self.chosen_async, "sync": self.chosen_sync,
                "swap_in_us": us(self.swap_in_ns), "notify_us": us(self.notify_ns),
                "idle_ratio": [round(v.idle_ratio, 3) for v in self.vcpus]}
