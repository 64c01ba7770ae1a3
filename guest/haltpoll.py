"""Halt polling: an idle vCPU polls for its wake-up event for a short window before it blocks.

Blocking costs a wake-up when the event comes (here: a thread asleep in `zmq_poll` woken by the
kernel, then taking the GIL back, tens of µs); a vCPU whose event comes within the window skips
that cost and pays in CPU instead. The window adapts per vCPU as KVM's does
(`kvm_vcpu_halt()` in Linux `virt/kvm/kvm_main.c`, the same rule as the guest's cpuidle
`haltpoll` governor, `drivers/cpuidle/governors/haltpoll.c` `adjust_poll_limit()`):

    halt over within the window (the poll caught it)      -> window unchanged
    halt longer than the window but shorter than the max  -> grow: window x GROW, at least
                                                             GROW_START_NS, at most the max
    halt longer than the max (polling would not have won) -> shrink: window / SHRINK (0: to 0)

So the window grows when a poll *would have* caught the event had it lasted longer (a short
halt it missed), and shrinks when the halt was too long for any poll up to the max to pay. A
vCPU starts with a window of 0 (KVM's `vcpu->halt_poll_ns` starts at 0): its first short halt
grows it to GROW_START_NS.

The constants are KVM's module parameters' defaults: `halt_poll_ns_grow` = 2,
`halt_poll_ns_grow_start` = 10000 (10 µs), `halt_poll_ns_shrink` = 2 (older kernels had 0,
which resets the window to 0; current ones halve it). The guest governor has the same factors
and starts growing at `guest_halt_poll_grow_start` = 50 µs. The max is `--halt-poll` (KVM's `halt_poll_ns`, whose default,
`KVM_HALT_POLL_NS_DEFAULT`, is 200 µs on x86 and 500 µs on arm64; the guest governor's
`guest_halt_poll_ns` is 200 µs).

`HaltPollWindow` is the rule alone (no clock, no I/O); the vCPU (guest/vcpu.py) does the polling.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

GROW = 2                   # halt_poll_ns_grow
GROW_START_NS = 10_000     # halt_poll_ns_grow_start (10 µs)
SHRINK = 2                 # halt_poll_ns_shrink (0 would reset the window to 0)


class Adjust(Enum):
    """What `HaltPollWindow.reflect()` did to the window."""
    KEPT = "kept"
    GREW = "grew"
    SHRANK = "shrank"


@dataclass
class HaltPollWindow:
    """One vCPU's poll window (ns), at most `max_ns` (0: polling off, the window stays 0).

    Raises ValueError for a negative `max_ns`, `grow` below 1, a negative `grow_start_ns` or
    `shrink`."""
    max_ns: int
    grow: int = GROW
    grow_start_ns: int = GROW_START_NS
    shrink: int = SHRINK
    window_ns: int = 0

    def __post_init__(self) -> None:
        if self.max_ns < 0 or self.grow < 1 or self.grow_start_ns < 0 or self.shrink < 0:
            raise ValueError(f"bad halt-poll parameters: max {self.max_ns} ns, grow {self.grow}, "
                             f"grow start {self.grow_start_ns} ns, shrink {self.shrink}")

    def poll_ns(self) -> int:
        """How long to poll before blocking at this halt (ns; 0: block at once). The window is
        first clamped to the max, as `kvm_vcpu_halt()` does when the max was lowered."""
        self.window_ns = min(self.window_ns, self.max_ns)
        return self.window_ns

    def reflect(self, halt_ns: int) -> Adjust:
        """After a halt that lasted `halt_ns` (poll and block together, ns, from idle entry to
        the wake-up): adjust the window (module docstring) and say how."""
        if not self.max_ns:
            self.window_ns = 0
            return Adjust.KEPT
        if halt_ns <= self.window_ns:
            return Adjust.KEPT
        if self.window_ns and halt_ns > self.max_ns:
            self.window_ns = 0 if self.shrink == 0 else self.window_ns // self.shrink
            return Adjust.SHRANK
        if self.window_ns < self.max_ns and halt_ns < self.max_ns:
            self.window_ns = min(max(self.window_ns * self.grow, self.grow_start_ns), self.max_ns)
            return Adjust.GREW
        return Adjust.KEPT


def poll(window_ns: int, ready, clock, relax) -> tuple[bool, int]:
    """Poll for `window_ns`: call `ready()` until it is true or the window is over, `relax()`
    between two calls (KVM's loop calls `cpu_relax()`; here a yield of the CPU that keeps the
    thread runnable). `clock()` is a monotonic ns clock. Returns (caught, ns polled): whether
    `ready()` turned true within the window, and how long the loop ran (at least one call to
    `ready()` is made, however short the window)."""
    start = now = clock()
    stop = start + window_ns
    while True:
        if ready():
            return True, clock() - start
        if now >= stop:
            return False, now - start
        relax()
        now = clock()
