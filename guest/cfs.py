"""`--sched cfs` (the default): the Completely Fair Scheduler of Linux 2.6.32 to 6.5, the kernels
behind the published APF runs (the arm64 series ran 5.x guests; the x86 2010 series 2.6.3x).

Modelled from kernel/sched/fair.c (Linux 5.15), features at their defaults (START_DEBIT,
GENTLE_FAIR_SLEEPERS, WAKEUP_PREEMPTION on; the buddies left out):
- `sched_slice()`: period `__sched_period(nr)` = sched_latency, or nr x min_granularity beyond
  sched_nr_latency (8) tasks; a task's slice is its weight's share of the period.
- `place_entity()`: a new task starts at min_vruntime + its vslice (START_DEBIT); a woken one at
  max(its vruntime, min_vruntime - sched_latency / 2) (GENTLE_FAIR_SLEEPERS): a task that mostly
  sleeps comes back up to half a latency behind the running one.
- `check_preempt_wakeup()` -> `wakeup_preempt_entity()`: the woken task preempts the running one
  when the running one's vruntime is ahead by more than the wake-up granularity.
- `check_preempt_tick()` (each tick): preempt when the running task has had its ideal slice, or,
  past min_granularity, when it is ahead of the leftmost waiting task by more than that slice.
- Migration keeps a task's vruntime relative to its queue's min_vruntime
  (`migrate_task_rq_fair()`, `enqueue_entity()` with ENQUEUE_MIGRATED).
"""
from __future__ import annotations

from guest.fairrq import FairClass, FairRq, calc_delta_fair
from guest.schedclass import SCHED_NR_LATENCY, Enqueue



class Cfs(FairClass):
    name = "cfs"
    _key_is_vruntime = True

    def _key(self, task: "Task") -> int:
        return task.vruntime

    def sched_slice(self, rq: FairRq, task: "Task", queued: bool = True) -> int:
        """The wall-clock slice (ns) of `task` on `rq` (`sched_slice()`); `queued`: whether the
        task already counts in the queue's load and nr_running."""
        nr = rq.nr_running + (not queued)
        t = self.tunables
        period = t.latency_ns if nr <= SCHED_NR_LATENCY else nr * t.min_granularity_ns
        load = rq.load + (0 if queued else task.weight)
        return period * task.weight // max(load, 1)

    def _place(self, rq: FairRq, task: "Task", how: int) -> None:
        if how & Enqueue.NEW:
            start = rq.min_vruntime + calc_delta_fair(self.sched_slice(rq, task, queued=False), task)
            task.vruntime = max(task.vruntime, start)
        elif how & Enqueue.WAKEUP:
            task.vruntime = max(task.vruntime, rq.min_vruntime - self.tunables.latency_ns // 2)

    def _migrate(self, task: "Task", src: FairRq, dst: FairRq) -> None:
        task.vruntime += dst.min_vruntime - src.min_vruntime

    def _pick_queued(self, rq: FairRq) -> "Task | None":
        return self._pop(rq)

    def wakeup_preempts(self, cpu: int, task: "Task", now: int) -> bool:
        rq = self.rqs[cpu]
        curr = rq.curr
        if curr is None or curr is task:
            return False
        self.update_curr(rq, now)
        vdiff = curr.vruntime - task.vruntime
        return vdiff > calc_delta_fair(self.tunables.wakeup_granularity_ns, task)

    def tick(self, cpu: int, now: int) -> bool:
        rq = self.rqs[cpu]
        self.update_curr(rq, now)
        curr = rq.curr
        if curr is None or rq.nr_queued == 0:
            return False
        ideal = self.sched_slice(rq, curr)
        ran = curr.sum_exec_ns - curr.prev_sum_exec_ns
        if ran > ideal:
            return True
        if ran < self.tunables.min_granularity_ns:
            return False
        left = self._peek(rq)
        return left is not None and curr.vruntime - left.vruntime > ideal
