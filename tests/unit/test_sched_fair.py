"""The guest's scheduling classes against schedules worked by hand from kernel/sched/fair.c.

Times are explicit (ns), with Linux's tunables for one CPU: sched_latency 6 ms, min_granularity
0.75 ms, wake-up granularity 1 ms, base slice 0.75 ms, a 4 ms tick. Each property is also checked
to fail on round-robin (`rr`), which the fair classes replace as the default.
"""
from __future__ import annotations

import select

import pytest

from guest.cfs import Cfs
from guest.eevdf import Eevdf
from guest.roundrobin import RoundRobin
from guest.schedclass import Enqueue, Tunables
from guest.scheduler import Scheduler, Task, TaskState, make_class
from guest.workload import Access
from protocol.errors import ConfigError
from protocol.messages import Ctx

MS = 1_000_000
ONE_CPU = Tunables.linux(1)


def task(tid: int, vruntime: int = 0, cpu: int = -1) -> Task:
    t = Task(tid, f"t{tid}", iter([Access(0, False, Ctx.USER)] * 1000))
    t.vruntime, t.cpu = vruntime, cpu
    return t


def running_hog(cls, now: int = 20 * MS) -> Task:
    """A CPU-bound task that has run alone on vCPU 0 from 0 to `now`."""
    hog = task(1)
    cls.enqueue(hog, 0, 0, Enqueue.NEW)
    assert cls.pick(0, 0) is hog
    cls.tick(0, now)
    return hog


def test_tunables_scale_with_the_cpu_count_as_linux_does():
    """sysctl_sched_latency and the granularities are multiplied by 1 + ilog2(min(CPUs, 8))."""
    assert (ONE_CPU.latency_ns, ONE_CPU.wakeup_granularity_ns, ONE_CPU.min_granularity_ns) == (6 * MS, MS, 750_000)
    four = Tunables.linux(4)
    assert (four.latency_ns, four.wakeup_granularity_ns) == (18 * MS, 3 * MS)
    assert Tunables.linux(64).latency_ns == 24 * MS
    assert Tunables.linux(1, dilation=50).latency_ns == 300 * MS


def test_cfs_places_a_long_sleeper_half_a_latency_back_and_it_preempts_at_wake_up():
    """GENTLE_FAIR_SLEEPERS: a task whose vruntime is far behind comes back at min_vruntime - 3 ms;
    3 ms ahead is more than the 1 ms wake-up granularity, so it preempts the CPU-bound task."""
    cls = Cfs(1, ONE_CPU)
    hog = running_hog(cls)
    sleeper = task(2, vruntime=0, cpu=0)
    cls.enqueue(sleeper, 0, 20 * MS, Enqueue.WAKEUP)
    assert sleeper.vruntime == hog.vruntime - 3 * MS == cls.rqs[0].min_vruntime - 3 * MS
    assert cls.wakeup_preempts(0, sleeper, 20 * MS)
    rr = RoundRobin(1, ONE_CPU)
    running_hog(rr)
    rr.enqueue(sleeper, 0, 20 * MS, Enqueue.WAKEUP)
    assert not rr.wakeup_preempts(0, sleeper, 20 * MS)     # rr: the property fails


def test_cfs_a_short_sleeper_keeps_its_vruntime_and_does_not_preempt():
    """A task that slept less than the wake-up granularity's worth keeps its own vruntime
    (max(vruntime, min_vruntime - latency/2)) and does not preempt."""
    cls = Cfs(1, ONE_CPU)
    hog = running_hog(cls)
    near = hog.vruntime - MS // 2
    sleeper = task(2, vruntime=near, cpu=0)
    cls.enqueue(sleeper, 0, 20 * MS, Enqueue.WAKEUP)
    assert sleeper.vruntime == near
    assert not cls.wakeup_preempts(0, sleeper, 20 * MS)


def test_cfs_tick_preempts_after_the_ideal_slice():
    """Two tasks: the period is 6 ms, each one's ideal slice 3 ms; the tick leaves the running task
    alone at 2 ms (its vruntime is still behind the other's) and preempts it after 3 ms."""
    cls = Cfs(1, ONE_CPU)
    a, b = task(1), task(2)
    cls.enqueue(a, 0, 0, Enqueue.NEW)      # START_DEBIT: min_vruntime + a 6 ms slice
    cls.enqueue(b, 0, 0, Enqueue.NEW)      # ... + a 3 ms slice (two tasks)
    assert (a.vruntime, b.vruntime) == (6 * MS, 3 * MS)
    assert cls.pick(0, 0) is b
    assert cls.sched_slice(cls.rqs[0], b) == 3 * MS
    assert not cls.tick(0, 2 * MS)
    assert cls.tick(0, 3 * MS + 1)
    rr = RoundRobin(1, ONE_CPU)
    for t in (task(1), task(2)):
        rr.enqueue(t, 0, 0, Enqueue.NEW)
    rr.pick(0, 0)
    assert rr.tick(0, 2 * MS)        # rr: its 2 ms slice preempts where CFS does not


def test_eevdf_picks_the_eligible_task_with_the_earliest_deadline():
    """avg_vruntime of vruntimes 0, 5 and 19 ms is 8 ms: the task at 19 ms is not eligible though
    its deadline is the earliest; of the eligible two, the one with the earlier deadline runs."""
    cls = Eevdf(1, ONE_CPU)
    rq = cls.rqs[0]
    behind, middle, ahead = task(1, vruntime=0), task(2, vruntime=5 * MS), task(3, vruntime=19 * MS)
    for t, deadline in ((behind, 10 * MS), (middle, 6 * MS), (ahead, 1 * MS)):
        t.deadline = deadline
        cls._account(rq, t, +1)
        cls._push(rq, t)
    assert rq.avg_vruntime() == 8 * MS
    assert not cls.eligible(rq, ahead) and cls.eligible(rq, middle)
    assert cls.pick(0, 0) is middle
    cfs = Cfs(1, ONE_CPU)
    for t in (task(1, vruntime=0), task(2, vruntime=5 * MS)):
        cfs._account(cfs.rqs[0], t, +1)
        cfs._push(cfs.rqs[0], t)
    assert cfs.pick(0, 0).tid == 1     # CFS: the leftmost vruntime
    rr = RoundRobin(1, ONE_CPU)
    for t in (task(1), task(2)):
        rr.enqueue(t, 0, 0, Enqueue.NEW)
    assert rr.pick(0, 0).tid == 1      # rr: first come


def test_eevdf_keeps_a_sleepers_lag_and_a_lagging_waker_preempts():
    """PLACE_LAG: a task that left with positive lag comes back that far behind the average
    (scaled by (W + w) / W) and, eligible with an earlier deadline, preempts at wake-up once the
    running task's first slice is over (RUN_TO_PARITY protects the slice before that)."""
    cls = Eevdf(1, ONE_CPU)
    hog = running_hog(cls)
    sleeper = task(2, cpu=0)
    sleeper.vlag = MS
    cls.enqueue(sleeper, 0, 20 * MS, Enqueue.WAKEUP)
    assert sleeper.vruntime == hog.vruntime - 2 * MS           # lag x (1024 + 1024) / 1024
    assert cls.wakeup_preempts(0, sleeper, 20 * MS)


def test_a_woken_task_goes_to_an_idle_vcpu_and_kicks_it():
    """select_idle_sibling: the task's previous vCPU is busy and another is idle: it is queued on
    the idle one (a migration), which is kicked out of its idle wait."""
    tasks = [task(i) for i in range(3)]
    sched = Scheduler(2, [("workload", lambda: tasks)], "cfs", ONE_CPU)
    try:
        sched.advance()
        first = sched.pick(0)
        assert first.cpu == 0 and sched.pick(1).cpu == 1
        sched.park(first, token=7)
        second = sched.pick(0)                     # vCPU 0 runs its other task
        assert second is not first and second.cpu == 0
        other = next(t for t in tasks if t.cpu == 1)
        sched.park(other, token=8)
        assert sched.pick(1) is None and sched.idle == {1}
        sched.drain_kicks(1)
        sched.wake(first, by_vcpu=0)
        assert first.cpu == 1 and sched.cls.queued(1) == 1 and sched.cls.queued(0) == 0
        assert sched.migrations == 1 and select.select([sched.kick_fd(1)], [], [], 0)[0]
        assert sched.pick(1) is first and first.state == TaskState.RUNNING
    finally:
        sched.close()
    rr = RoundRobin(2, ONE_CPU)
    t = task(9, cpu=0)
    rr.enqueue(t, rr.select_cpu(t, 0, {1}), 0, Enqueue.WAKEUP)
    assert rr.queued(0) == 1       # rr: one queue for all, nothing is on vCPU 1's own


@pytest.mark.parametrize("policy", ["cfs", "eevdf"])
def test_newidle_pulls_a_waiting_task_from_the_busiest_vcpu(policy):
    """Three new tasks spread over two vCPUs (two on vCPU 0); when vCPU 1's task ends, its queue is
    empty and it takes the task waiting on vCPU 0 (a migration)."""
    sched = Scheduler(2, [("workload", lambda: [task(i) for i in range(3)])], policy, ONE_CPU)
    try:
        sched.advance()
        assert sched.pick(0).cpu == 0 and sched.cls.queued(0) == 1
        only = sched.pick(1)
        sched.finish(only)
        pulled = sched.pick(1)
        assert pulled is not None and pulled.cpu == 1 and sched.migrations == 1
        assert sched.cls.queued(0) == 0
    finally:
        sched.close()


@pytest.mark.parametrize("policy", ["cfs", "eevdf", "rr"])
def test_every_class_runs_a_phase_to_its_end(policy):
    """Picking, preempting by tick and finishing drain every task, whatever the class."""
    tasks = [task(i) for i in range(5)]
    sched = Scheduler(1, [("workload", lambda: tasks)], policy, Tunables.linux(1, timeslice_ns=1))
    try:
        sched.advance()
        for _ in range(100):
            t = sched.pick(0)
            if t is None:
                break
            if t.tid % 2 and not t.completed:
                t.completed = 1
                sched.requeue(t)
            else:
                sched.finish(t)
        assert all(t.state == TaskState.DONE for t in tasks) and sched.phase_over == "workload"
    finally:
        sched.close()


def test_unknown_scheduler_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="cfs, eevdf, rr"):
        make_class("bfs", 1, ONE_CPU)
