"""The guest's scheduling classes: which task a vCPU runs next, where a woken task goes, and when
the running task is preempted.

`--sched cfs|eevdf|rr` picks one. `cfs` (guest/cfs.py) and `eevdf` (guest/eevdf.py) model Linux's
fair class as kernel/sched/fair.c has it before and since Linux 6.6; `rr` is round-robin with a
fixed time slice over one run queue that all vCPUs share, kept for comparison (apf-emu's scheduler
before the fair classes). A class holds per-vCPU run queues of `Task`s (guest/scheduler.py) and
is driven by `Scheduler` under its lock: nothing here locks, sleeps or reads a clock. Every time is
in ns of the guest's monotonic clock; with `--dilation` the tunables are multiplied by D like
every modelled cost, so they are real-equivalent.

What every class answers (`SchedClass`):
- `enqueue(task, cpu, now, how)`: a task becomes runnable on `cpu` (new, woken, preempted,
  migrated); `pick(cpu, now)`: the task `cpu` runs next (it becomes the queue's current);
- `put_prev(cpu, now, sleeping)`: the current task stops (preempted: it stays queued; sleeping,
  parked or done: it leaves the queue); `resume(task, cpu, now)`: a task that was leaving to sleep
  runs on (the page-ready came before the wait);
- `wakeup_preempts(cpu, task, now)`: Linux's `check_preempt_wakeup()`; `tick(cpu, now)`: the
  scheduler tick's verdict on the current task (`check_preempt_tick()`, or EEVDF's slice end);
- `steal(src, dst, now)`: newidle balance moves one queued task from `src` to an idle `dst`.

The placement of a woken task (`select_cpu`) is common: its previous vCPU unless that one is busy
and another is idle, as `select_idle_sibling()` prefers an idle CPU sharing the cache (every vCPU
here shares one).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Iterable, Protocol

from protocol.errors import ConfigError


POLICIES = ("cfs", "eevdf", "rr")
DEFAULT_POLICY = "cfs"
NICE_0_WEIGHT = 1024              # sched_prio_to_weight[20]: every task here is nice 0
SCHED_NR_LATENCY = 8              # sched_nr_latency: more runnable tasks than this stretch the period
LINUX_LATENCY_NS = 6_000_000      # sysctl_sched_latency, before scaling by the CPU count
LINUX_MIN_GRANULARITY_NS = 750_000    # sysctl_sched_min_granularity (CFS) = sysctl_sched_base_slice (EEVDF)
LINUX_WAKEUP_GRANULARITY_NS = 1_000_000   # sysctl_sched_wakeup_granularity (CFS)
DEFAULT_HZ = 250                  # arm64 defconfig CONFIG_HZ: the tick is 4 ms


class Enqueue:
    """Why a task enters a run queue (ENQUEUE_* in kernel/sched/sched.h): bits of a plain int,
    as IntFlag arithmetic costs a microsecond on this path."""
    NEW = 1          # a task that never ran (fork: place_entity(initial))
    WAKEUP = 2       # it slept (parked on a token) and was woken
    PREEMPTED = 4    # it was running and stays runnable (put_prev_entity)
    MIGRATED = 8     # it comes from another vCPU's queue


class Resched(Enum):
    """Why a vCPU must switch tasks at its next instruction boundary (the report's `preemptions`)."""
    WAKEUP = "wakeup"
    TICK = "tick"


@dataclass(frozen=True)
class Tunables:
    """The scheduler's tunables, in ns on the emulator's clock (real-equivalent x D).

    `latency_ns`, `min_granularity_ns` and `wakeup_granularity_ns` are Linux's sysctls after
    `update_sysctl()` scales them by 1 + ilog2(min(CPUs, 8)) (SCHED_TUNABLESCALING_LOG, the
    default); `base_slice_ns` is EEVDF's sysctl_sched_base_slice (the same 0.75 ms, scaled alike);
    `tick_ns` is 1 / HZ; `timeslice_ns` is round-robin's fixed slice (--timeslice)."""
    latency_ns: int = LINUX_LATENCY_NS
    min_granularity_ns: int = LINUX_MIN_GRANULARITY_NS
    wakeup_granularity_ns: int = LINUX_WAKEUP_GRANULARITY_NS
    base_slice_ns: int = LINUX_MIN_GRANULARITY_NS
    tick_ns: int = 1_000_000_000 // DEFAULT_HZ
    timeslice_ns: int = 2_000_000

    @classmethod
    def linux(cls, nr_cpus: int, timeslice_ns: int = 2_000_000, dilation: float = 1.0,
              hz: int = DEFAULT_HZ) -> "Tunables":
        """Linux's defaults for `nr_cpus` CPUs (kernel/sched/fair.c `get_update_sysctl_factor()`),
        every duration multiplied by `dilation`; `timeslice_ns` is taken as already dilated."""
        factor = 1 + int(math.log2(min(max(nr_cpus, 1), 8)))
        scale = factor * dilation
        return cls(latency_ns=round(LINUX_LATENCY_NS * scale),
                   min_granularity_ns=round(LINUX_MIN_GRANULARITY_NS * scale),
                   wakeup_granularity_ns=round(LINUX_WAKEUP_GRANULARITY_NS * scale),
                   base_slice_ns=round(LINUX_MIN_GRANULARITY_NS * scale),
                   tick_ns=round(1_000_000_000 / hz * dilation), timeslice_ns=timeslice_ns)


class SchedClass(Protocol):
    """What `Scheduler` asks of a scheduling class (see the module docstring)."""
    name: str
    tunables: Tunables

    def enqueue(self, task: "Task", cpu: int, now: int, how: int) -> None: ...
    def pick(self, cpu: int, now: int) -> "Task | None": ...
    def put_prev(self, cpu: int, now: int, sleeping: bool) -> None: ...
    def resume(self, task: "Task", cpu: int, now: int) -> None: ...
    def wakeup_preempts(self, cpu: int, task: "Task", now: int) -> bool: ...
    def tick(self, cpu: int, now: int) -> bool: ...
    def next_check(self, cpu: int, now: int) -> int: ...
    def queued(self, cpu: int) -> int: ...
    def steal(self, src: int, dst: int, now: int) -> "Task | None": ...
    def select_cpu(self, task: "Task", waker: int, idle: set[int]) -> int: ...
    def fork_cpu(self, index: int) -> int: ...


def select_idle_sibling(prev: int, waker: int, idle: Iterable[int]) -> int:
    """Where a woken task runs: its previous vCPU if idle, else an idle one (the waker first: it
    took the interrupt in idle), else its previous one (kernel/sched/fair.c `select_idle_sibling()`;
    every vCPU here shares one cache, so any idle one will do)."""
    idle = set(idle)
    if prev in idle or not idle:
        return prev
    return waker if waker in idle else min(idle)


def check_policy(name: str) -> str:
    """`name` if it is a scheduling class; ConfigError naming the choices otherwise."""
    if name not in POLICIES:
        raise ConfigError(f"--sched must be one of {', '.join(POLICIES)}, not {name!r}")
    return name
