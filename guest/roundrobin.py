"""`--sched rr`: round-robin with a fixed time slice over one run queue that every vCPU shares.

apf-emu's scheduler before the fair classes, kept for comparison: a task runs until it parks,
ends, or its slice (`--timeslice`) is over while another task waits. A woken task joins the tail
and preempts nobody; any vCPU may take any task. Not a Linux scheduling class (SCHED_RR's slice
is per priority level and it preempts lower priorities, neither of which applies here).
"""
from __future__ import annotations

from collections import deque
from guest.schedclass import Tunables



class RoundRobin:
    name = "rr"

    def __init__(self, nr_cpus: int, tunables: Tunables):
        self.tunables = tunables
        self.runq: deque[Task] = deque()
        self.curr: list[Task | None] = [None] * nr_cpus
        self.started = [0] * nr_cpus          # when each vCPU's current task was picked

    def enqueue(self, task: "Task", cpu: int, now: int, how: int) -> None:
        self.runq.append(task)

    def pick(self, cpu: int, now: int) -> "Task | None":
        task = self.runq.popleft() if self.runq else None
        self.curr[cpu] = task
        self.started[cpu] = now
        return task

    def put_prev(self, cpu: int, now: int, sleeping: bool) -> None:
        task, self.curr[cpu] = self.curr[cpu], None
        if task is not None and not sleeping:
            self.runq.append(task)

    def resume(self, task: "Task", cpu: int, now: int) -> None:
        self.curr[cpu] = task

    def wakeup_preempts(self, cpu: int, task: "Task", now: int) -> bool:
        return False

    def tick(self, cpu: int, now: int) -> bool:
        return now - self.started[cpu] >= self.tunables.timeslice_ns and bool(self.runq)

    def next_check(self, cpu: int, now: int) -> int:
        """The slice's end; once it is over, every boundary looks for a waiting task."""
        return max(now, self.started[cpu] + self.tunables.timeslice_ns)

    def queued(self, cpu: int) -> int:
        return len(self.runq)

    def steal(self, src: int, dst: int, now: int) -> "Task | None":
        return None       # one queue: nothing to move

    def select_cpu(self, task: "Task", waker: int, idle: set[int]) -> int:
        """An idle vCPU other than the waker, to be kicked; else the waker (any vCPU takes it)."""
        return next((v for v in sorted(idle) if v != waker), waker)

    def fork_cpu(self, index: int) -> int:
        return 0
