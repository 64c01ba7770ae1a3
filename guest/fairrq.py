"""What CFS and EEVDF share (kernel/sched/fair.c): per-vCPU run queues of weighted entities with
virtual runtimes, the running entity's accounting (`update_curr()`), the queue's load and average
vruntime, migration between queues and newidle balance. The classes (guest/cfs.py,
guest/eevdf.py) differ in where a task is placed, which one is picked and when the running one is
preempted.

A run queue keeps its waiting tasks in a binary heap ordered by the class's key (vruntime for CFS,
virtual deadline for EEVDF) with lazy deletion: a task's `rq_gen` is bumped whenever it leaves the
heap, so entries that outlive it are skipped. The running task (`curr`) is not in the heap but
counts in the queue's load, as in Linux.
"""
from __future__ import annotations

import heapq
import itertools
from guest.schedclass import NICE_0_WEIGHT, Enqueue, Tunables, select_idle_sibling



class FairRq:
    """One vCPU's `struct cfs_rq`: waiting tasks (heap), the running one, and the sums over both:
    `load` (weights) and `vsum` (weight x vruntime: avg_vruntime = vsum / load)."""
    __slots__ = ("heap", "curr", "nr_queued", "load", "vsum", "min_vruntime", "exec_start")

    def __init__(self) -> None:
        self.heap: list[tuple[int, int, int, Task]] = []
        self.curr: Task | None = None
        self.nr_queued = 0          # in the heap (waiting), not counting curr
        self.load = 0
        self.vsum = 0
        self.min_vruntime = 0
        self.exec_start = 0

    @property
    def nr_running(self) -> int:
        return self.nr_queued + (self.curr is not None)

    def avg_vruntime(self) -> int:
        """The load-weighted average vruntime of the queue and its running task (`avg_vruntime()`),
        or min_vruntime when the queue is empty."""
        return self.vsum // self.load if self.load else self.min_vruntime


def calc_delta_fair(delta_ns: int, task: "Task") -> int:
    """Runtime `delta_ns` as virtual time for `task`'s weight (`calc_delta_fair()`)."""
    return delta_ns if task.weight == NICE_0_WEIGHT else delta_ns * NICE_0_WEIGHT // task.weight


class FairClass:
    """The machinery CFS and EEVDF share; subclasses give `_key`, `_place`, `_pick_queued`, and
    may hook `_dequeued` (a task leaves its queue to sleep or migrate) and `_migrate`."""
    name = ""

    def __init__(self, nr_cpus: int, tunables: Tunables):
        self.tunables = tunables
        self.rqs = [FairRq() for _ in range(nr_cpus)]
        self._seq = itertools.count()

    # -- subclass hooks -------------------------------------------------------------------------
    def _key(self, task: "Task") -> int:
        raise NotImplementedError

    def _place(self, rq: FairRq, task: "Task", how: int) -> None:
        raise NotImplementedError

    def _pick_queued(self, rq: FairRq) -> "Task | None":
        raise NotImplementedError

    def _dequeued(self, rq: FairRq, task: "Task") -> None:
        """`task` (still counted in rq's load) leaves the queue to sleep, end, or migrate."""

    def _migrate(self, task: "Task", src: FairRq, dst: FairRq) -> None:
        """`task` moves from `src` to `dst` (its vruntime may need renormalizing)."""

    def _curr_advanced(self, rq: FairRq, task: "Task") -> bool:
        """After `update_curr()`; True asks for a reschedule (EEVDF: the slice is used up)."""
        return False

    # -- the heap ---------------------------------------------------------------------------------
    def _push(self, rq: FairRq, task: "Task") -> None:
        task.rq_gen += 1
        heapq.heappush(rq.heap, (self._key(task), next(self._seq), task.rq_gen, task))
        rq.nr_queued += 1

    def _pop(self, rq: FairRq) -> "Task | None":
        """The valid entry with the smallest key, out of the heap."""
        while rq.heap:
            _, _, gen, task = heapq.heappop(rq.heap)
            if gen == task.rq_gen:
                task.rq_gen += 1
                rq.nr_queued -= 1
                return task
        return None

    def _peek(self, rq: FairRq) -> "Task | None":
        """The valid entry with the smallest key, left in the heap."""
        while rq.heap and rq.heap[0][2] != rq.heap[0][3].rq_gen:
            heapq.heappop(rq.heap)
        return rq.heap[0][3] if rq.heap else None

    def _account(self, rq: FairRq, task: "Task", sign: int) -> None:
        rq.load += sign * task.weight
        rq.vsum += sign * task.weight * task.vruntime

    # -- accounting -------------------------------------------------------------------------------
    def update_curr(self, rq: FairRq, now: int) -> bool:
        """Charge the running task for the time since it was last charged (`update_curr()`); True
        if the class asks for a reschedule."""
        curr = rq.curr
        if curr is None:
            return False
        delta = now - rq.exec_start
        if delta <= 0:
            return False
        rq.exec_start = now
        curr.sum_exec_ns += delta
        dv = calc_delta_fair(delta, curr)
        curr.vruntime += dv
        rq.vsum += curr.weight * dv
        self._update_min_vruntime(rq)
        return self._curr_advanced(rq, curr)

    def _update_min_vruntime(self, rq: FairRq) -> None:
        """min_vruntime only moves forward, to the smaller of the running and the leftmost task's
        vruntime (`update_min_vruntime()`); the leftmost is the heap's head only for CFS, so
        EEVDF follows the running task alone (its placement uses the average, not this)."""
        candidates = [rq.curr.vruntime] if rq.curr is not None else []
        if self._key_is_vruntime:
            head = self._peek(rq)
            if head is not None:
                candidates.append(head.vruntime)
        if candidates:
            rq.min_vruntime = max(rq.min_vruntime, min(candidates))

    _key_is_vruntime = False

    # -- the SchedClass interface -----------------------------------------------------------------
    def enqueue(self, task: "Task", cpu: int, now: int, how: int) -> None:
        rq = self.rqs[cpu]
        self.update_curr(rq, now)
        if how & Enqueue.MIGRATED and 0 <= task.cpu != cpu:
            self._migrate(task, self.rqs[task.cpu], rq)
        task.cpu = cpu
        if not how & Enqueue.PREEMPTED:
            self._place(rq, task, how)
            self._account(rq, task, +1)
        self._push(rq, task)

    def pick(self, cpu: int, now: int) -> "Task | None":
        rq = self.rqs[cpu]
        task = self._pick_queued(rq)
        if task is None:
            return None
        rq.curr = task
        rq.exec_start = now
        task.prev_sum_exec_ns = task.sum_exec_ns
        self._set_next(rq, task)
        return task

    def _set_next(self, rq: FairRq, task: "Task") -> None:
        """`set_next_entity()`: the picked task starts its turn."""

    def put_prev(self, cpu: int, now: int, sleeping: bool) -> None:
        rq = self.rqs[cpu]
        self.update_curr(rq, now)
        task, rq.curr = rq.curr, None
        if task is None:
            return
        if sleeping:
            self._dequeued(rq, task)
            self._account(rq, task, -1)
            self._update_min_vruntime(rq)
            if not rq.load:
                rq.min_vruntime = max(rq.min_vruntime, task.vruntime)
        else:
            self._push(rq, task)

    def resume(self, task: "Task", cpu: int, now: int) -> None:
        """The task that `put_prev(sleeping=True)` took off runs on: back as the running task, its
        vruntime as it was (in Linux it never left: the wake came before the wait)."""
        rq = self.rqs[cpu]
        self.update_curr(rq, now)
        rq.curr = task
        rq.exec_start = now
        self._account(rq, task, +1)

    def next_check(self, cpu: int, now: int) -> int:
        return now + self.tunables.tick_ns

    def queued(self, cpu: int) -> int:
        return self.rqs[cpu].nr_queued

    def steal(self, src: int, dst: int, now: int) -> "Task | None":
        """Newidle balance (`newidle_balance()` -> `load_balance()`): one waiting task of `src`,
        the one its class would pick next, moves to the idle `dst`."""
        rq = self.rqs[src]
        self.update_curr(rq, now)
        task = self._pick_queued(rq)
        if task is None:
            return None
        self._dequeued(rq, task)
        self._account(rq, task, -1)
        self.enqueue(task, dst, now, Enqueue.MIGRATED)
        return task

    def select_cpu(self, task: "Task", waker: int, idle: set[int]) -> int:
        prev = task.cpu if task.cpu >= 0 else waker
        return select_idle_sibling(prev, waker, idle)

    def fork_cpu(self, index: int) -> int:
        """New tasks spread over the vCPUs in turn (fork balancing picks the idlest CPU)."""
        return index % len(self.rqs)
