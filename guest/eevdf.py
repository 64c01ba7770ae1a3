"""`--sched eevdf`: Earliest Eligible Virtual Deadline First, Linux's fair class since 6.6 (a guest
on a current kernel runs this).

Modelled from kernel/sched/fair.c (Linux 6.6), features at their defaults (PLACE_LAG,
PLACE_DEADLINE_INITIAL, RUN_TO_PARITY on):
- A task's lag is avg_vruntime - vruntime; it is eligible when its lag is not negative
  (`entity_eligible()`); its virtual deadline is vruntime + base_slice / weight.
- `update_deadline()`: once the running task's vruntime passes its deadline, the deadline moves
  one slice on and, with others waiting, the task is rescheduled.
- `pick_eevdf()`: the eligible task with the earliest deadline; the running task, while eligible,
  keeps the vCPU until its deadline moves (RUN_TO_PARITY).
- `update_entity_lag()` on dequeue keeps the lag, clamped to max(2 x slice, a tick) of virtual
  time; `place_entity()` puts the task back at avg_vruntime - lag x (W + w) / W (PLACE_LAG), a new
  task with half a slice to its deadline (PLACE_DEADLINE_INITIAL).
- `check_preempt_wakeup()`: the woken task preempts when `pick_eevdf()` would pick it.
"""
from __future__ import annotations

import heapq
from guest.fairrq import FairClass, FairRq, calc_delta_fair
from guest.schedclass import Enqueue



class Eevdf(FairClass):
    name = "eevdf"

    def _key(self, task: "Task") -> int:
        return task.deadline

    def _vslice(self, task: "Task") -> int:
        return calc_delta_fair(self.tunables.base_slice_ns, task)

    @staticmethod
    def eligible(rq: FairRq, task: "Task") -> bool:
        """avg_vruntime >= vruntime, without the division (`entity_eligible()`)."""
        return rq.vsum >= task.vruntime * rq.load

    def _place(self, rq: FairRq, task: "Task", how: int) -> None:
        vslice = self._vslice(task)
        lag = task.vlag if rq.load else 0
        if lag:
            lag = int(lag * (rq.load + task.weight) / rq.load)   # div_s64: truncates toward zero
        task.vruntime = rq.avg_vruntime() - lag
        if how & Enqueue.NEW:
            vslice //= 2
        task.deadline = task.vruntime + vslice

    def _dequeued(self, rq: FairRq, task: "Task") -> None:
        limit = calc_delta_fair(max(2 * self.tunables.base_slice_ns, self.tunables.tick_ns), task)
        task.vlag = max(-limit, min(limit, rq.avg_vruntime() - task.vruntime))

    def _curr_advanced(self, rq: FairRq, task: "Task") -> bool:
        if task.vruntime < task.deadline:
            return False
        task.deadline = task.vruntime + self._vslice(task)
        task.slice_protected = False
        return rq.nr_queued > 0

    def _set_next(self, rq: FairRq, task: "Task") -> None:
        task.slice_protected = True        # RUN_TO_PARITY: until its deadline moves

    def pick_eevdf(self, rq: FairRq, curr: "Task | None", take: bool = False) -> "Task | None":
        """The task `pick_eevdf()` chooses among the waiting ones and `curr` (the running one, or
        None); `take`: a waiting task chosen leaves the heap."""
        if curr is not None and not self.eligible(rq, curr):
            curr = None
        if curr is not None and curr.slice_protected:
            return curr
        skipped: list[tuple[int, int, int, Task]] = []
        best_entry = None
        while rq.heap:
            entry = heapq.heappop(rq.heap)
            if entry[2] != entry[3].rq_gen:
                continue                      # stale
            if self.eligible(rq, entry[3]):
                best_entry = entry
                break
            skipped.append(entry)
        best = best_entry[3] if best_entry else None
        if curr is not None and (best is None or curr.deadline < best.deadline):
            best = curr
        if best is None and skipped:          # rounding left nobody eligible: the leftmost
            best_entry = skipped.pop(0)
            best = best_entry[3]
        if best_entry is not None and not (take and best is best_entry[3]):
            skipped.append(best_entry)
        for entry in skipped:
            heapq.heappush(rq.heap, entry)
        if take and best_entry is not None and best is best_entry[3]:
            best.rq_gen += 1
            rq.nr_queued -= 1
        return best

    def _pick_queued(self, rq: FairRq) -> "Task | None":
        return self.pick_eevdf(rq, None, take=True)

    def wakeup_preempts(self, cpu: int, task: "Task", now: int) -> bool:
        rq = self.rqs[cpu]
        curr = rq.curr
        if curr is None or curr is task:
            return False
        if self.update_curr(rq, now):
            return True                        # update_deadline() rescheduled it already
        return self.pick_eevdf(rq, curr) is task

    def tick(self, cpu: int, now: int) -> bool:
        return self.update_curr(self.rqs[cpu], now)
