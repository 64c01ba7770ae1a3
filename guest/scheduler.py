"""Guest tasks and the scheduler: the task states, the phases, and the locking and kicking around
a scheduling class (guest/schedclass.py: CFS by default, EEVDF, or round-robin) that holds the run
queues and decides what runs where and when the running task is preempted.

Preemption happens at instruction boundaries (between two accesses or compute steps): a vCPU asks
`preempt_due()` there, which is a flag and a clock read unless a wake-up asked for a reschedule
or the next scheduler tick is due. A page-ready that wakes a task onto another vCPU sets that
vCPU's flag, and kicks it if it is idle.

A vCPU with nothing to run waits for an interrupt (page-ready) or for a kick from another vCPU
that made a task runnable: the inter-processor interrupt is a byte on the idle vCPU's pipe,
which its poll includes. Nobody spins.

Every field that more than one thread reads to decide something (the run queues, the phase and
task counts, a task's state and token) is read and written under `_lock`; the vCPUs' single-word
peeks (`has_waiting`, `need_resched`, `aborted`, `suspended_until_ns`) are hints that the next
locked call re-checks.

Phases (prefill, workload, verify) run one after the other. When one ends, the next waits until
the daemon's main thread calls `advance()`: the boundary is a quiet point (no task runs) where it
reads the host's swap counters, so that each phase gets its own.

    RUNNABLE --picked--> RUNNING --not present--> PARKED --page ready--> RUNNABLE
                            |  \\--preempted (wake-up, tick)--> RUNNABLE
                            +--last access--> DONE   (or FAILED on a memory failure)

A compute task's items are CPU work steps instead of accesses: it never faults, never parks.
"""
from __future__ import annotations

import os
import threading
import time
from array import array
from collections import deque
from enum import Enum
from typing import Callable, Iterator

from guest.cfs import Cfs
from guest.eevdf import Eevdf
from guest.roundrobin import RoundRobin
from guest.schedclass import NICE_0_WEIGHT, Enqueue, Resched, SchedClass, Tunables, check_policy
from guest.workload import Access, Compute


def make_class(policy: str, nr_cpus: int, tunables: Tunables) -> SchedClass:
    """The scheduling class `policy` (guest/schedclass.py POLICIES) over `nr_cpus` run queues."""
    classes = {"cfs": Cfs, "eevdf": Eevdf, "rr": RoundRobin}
    return classes[check_policy(policy)](nr_cpus, tunables)


class TaskState(Enum):
    RUNNABLE = "runnable"
    RUNNING = "running"
    PARKED = "parked"
    DONE = "done"
    FAILED = "failed"


class Task:
    def __init__(self, tid: int, name: str, accesses: Iterator[Access] | Iterator[Compute],
                 phase: str = "workload", compute: bool = False):
        self.tid = tid
        self.name = name
        self.phase = phase
        self.compute = compute        # its items are Compute steps: it never touches guest memory
        self._accesses = accesses
        self.current: Access | Compute | None = next(accesses, None)
        self.thought = False          # the think before `current` is done (not redone on retry)
        self.state = TaskState.RUNNABLE
        self.completed = 0
        self.work_ns = 0              # CPU work of the Compute steps completed
        self.parked_at_ns = 0
        self.token = 0
        self.error: str | None = None
        # the scheduling entity (struct sched_entity), in ns of the guest's clock
        self.cpu = -1                 # the vCPU whose run queue it is on, or last ran on
        self.weight = NICE_0_WEIGHT
        self.vruntime = 0
        self.deadline = 0             # EEVDF's virtual deadline
        self.vlag = 0                 # EEVDF's lag, kept over a sleep
        self.slice_protected = False  # EEVDF RUN_TO_PARITY: picked, its deadline not moved since
        self.sum_exec_ns = 0
        self.prev_sum_exec_ns = 0
        self.rq_gen = 0               # bumped when it leaves a run queue's heap (guest/fairrq.py)
        self.runnable_since_ns = 0
        self.run_delays_ns = array("Q")   # each wait from runnable to running

    def advance(self) -> None:
        self.completed += 1
        if isinstance(self.current, Compute):
            self.work_ns += self.current.ns
        self.thought = False
        self.current = next(self._accesses, None)

    def __repr__(self) -> str:
        return f"<task {self.name} {self.state.value}>"


class Scheduler:
    def __init__(self, nr_vcpus: int, phases: list[tuple[str, Callable[[], list[Task]]]],
                 policy: str = "cfs", tunables: Tunables | None = None):
        """`phases` run one after the other; each makes its tasks when the previous one ends.
        `policy`: the scheduling class (guest/schedclass.py POLICIES); `tunables`: its tunables
        (default: Linux's for `nr_vcpus` CPUs, undilated)."""
        self._lock = threading.Lock()
        self.policy = policy
        self.tunables = self.given_tunables = tunables or Tunables.linux(nr_vcpus)
        self.cls: SchedClass = make_class(policy, nr_vcpus, self.tunables)
        self.nr_queued = 0            # runnable, not running, over every run queue
        self.need_resched: list[Resched | None] = [None] * nr_vcpus
        self._next_check_ns = [0] * nr_vcpus
        self.preemptions = {r.value: 0 for r in Resched}
        self.migrations = 0
        self.phase_limits_ns: dict[str, int] = {}   # phase -> how long it may run (--duration)
        self.deadline_ns = 0          # the current phase ends at its tasks' next boundary after this (0: none)
        self.remaining = 0
        self.all_tasks: list[Task] = []
        self._phases = deque(phases)
        self.phase_ns: dict[str, list[int]] = {}    # phase -> [start, end]
        self.phase_cpu_ns: dict[str, list[int]] = {}   # phase -> the guest process's CPU time at [start, end]
        self.current_phase = phases[0][0] if phases else ""   # between phases: the one that ended
        self.phase_over: str | None = None   # the phase that ended; the next waits for advance()
        self._boundary = os.pipe()    # tells the main thread that a phase ended
        os.set_blocking(self._boundary[0], False)
        os.set_blocking(self._boundary[1], False)
        self.idle: set[int] = set()
        self._pipes = [os.pipe() for _ in range(nr_vcpus)]
        for r, w in self._pipes:
            os.set_blocking(r, False)
            os.set_blocking(w, False)
        self.aborted: str | None = None
        self.suspended_until_ns = 0   # while in the future, every vCPU is offline (suspend)
        self.parked_ns: list[tuple[str, int]] = []   # (phase, how long a task slept)

    def figures(self) -> dict:
        """The report's `scheduler` (its tunables as given, before any dilation: real-equivalent)."""
        t = self.given_tunables
        return {"policy": self.policy, "latency_ns": t.latency_ns, "min_granularity_ns": t.min_granularity_ns,
                "wakeup_granularity_ns": t.wakeup_granularity_ns, "base_slice_ns": t.base_slice_ns,
                "tick_ns": t.tick_ns, "timeslice_ns": t.timeslice_ns, "preemptions": dict(self.preemptions),
                "migrations": self.migrations, "window_ns": self.phase_limits_ns.get("workload", 0)}

    def retune(self, tunables: Tunables) -> None:
        """New tunables (with --dilation, once D is known), before the first phase starts."""
        with self._lock:
            self.tunables = self.cls.tunables = tunables

    def advance(self) -> None:
        """Start the next phase (the first, or the one after `phase_over`) and wake the vCPUs."""
        with self._lock:
            self.phase_over = None
            self._next_phase()
        self._kick_all()

    @property
    def boundary_fd(self) -> int:
        return self._boundary[0]

    def drain_boundary(self) -> None:
        try:
            os.read(self._boundary[0], 4096)
        except BlockingIOError:
            pass

    def _next_phase(self) -> None:
        """Start phases until one has tasks (lock held); phases without tasks pass no boundary."""
        now, cpu = time.monotonic_ns(), time.process_time_ns()
        while self._phases and not self.remaining:
            name, make = self._phases.popleft()
            tasks = make()
            self.phase_ns[name] = [now, now]
            self.phase_cpu_ns[name] = [cpu, cpu]
            self.current_phase = name
            limit = self.phase_limits_ns.get(name, 0)
            self.deadline_ns = now + limit if limit else 0
            for i, task in enumerate(tasks):
                self._enqueue(task, self.cls.fork_cpu(i), now, Enqueue.NEW)
            self.all_tasks.extend(tasks)
            self.remaining = len(tasks)

    def kick_fd(self, vcpu: int) -> int:
        return self._pipes[vcpu][0]

    def drain_kicks(self, vcpu: int) -> None:
        try:
            os.read(self._pipes[vcpu][0], 4096)
        except BlockingIOError:
            pass

    def _kick(self, vcpu: int) -> None:
        try:
            os.write(self._pipes[vcpu][1], b"!")
        except BlockingIOError:
            pass  # the pipe is full of kicks already: the vCPU will wake

    def _kick_all(self) -> None:
        for vcpu in range(len(self._pipes)):
            self._kick(vcpu)

    # -- picking ------------------------------------------------------------------------------
    def _enqueue(self, task: Task, cpu: int, now: int, how: int) -> None:
        self.cls.enqueue(task, cpu, now, how)
        task.runnable_since_ns = now
        self.nr_queued += 1

    def pick(self, vcpu: int) -> Task | None:
        """The task `vcpu` runs next (RUNNABLE --picked--> RUNNING): its own queue's choice, else
        one pulled from the busiest queue (newidle balance); None: the vCPU idles."""
        with self._lock:
            now = time.monotonic_ns()
            task = self.cls.pick(vcpu, now) or self._pull(vcpu, now)
            if task is None:
                self.idle.add(vcpu)
                return None
            self.idle.discard(vcpu)
            self.nr_queued -= 1
            task.state = TaskState.RUNNING
            task.cpu = vcpu
            task.run_delays_ns.append(max(0, now - task.runnable_since_ns))
            self.need_resched[vcpu] = None
            self._next_check_ns[vcpu] = self.cls.next_check(vcpu, now)
            return task

    def _pull(self, vcpu: int, now: int) -> Task | None:
        """Newidle balance: move one waiting task from the vCPU with the most waiting to `vcpu`."""
        busiest = max(range(len(self._pipes)), key=self.cls.queued)
        if busiest == vcpu or not self.cls.queued(busiest) or not self.cls.steal(busiest, vcpu, now):
            return None
        self.migrations += 1
        return self.cls.pick(vcpu, now)

    @property
    def finished(self) -> bool:
        """Every phase is over (or the run aborted). Read under the lock: `advance()` pops the last
        phase before it sets the phase's task count, and in between the counts alone read as done."""
        with self._lock:
            return self.aborted is not None or (self.remaining == 0 and not self._phases
                                                 and self.phase_over is None)

    def has_waiting(self) -> bool:
        """Some task is runnable and not running (an idle vCPU would run or pull it)."""
        return self.nr_queued > 0

    def past_deadline(self) -> bool:
        """The phase has run for its --duration: a task ends at its next boundary."""
        return 0 < self.deadline_ns <= time.monotonic_ns()

    def preempt_due(self, vcpu: int, task: Task) -> bool:
        """At an instruction boundary of `task` on `vcpu`: whether it must give the vCPU up (a
        wake-up asked for it, or the tick says so); if so it is requeued (RUNNING --preempted-->
        RUNNABLE) and the preemption counted by reason. A flag and a clock read between ticks."""
        if self.need_resched[vcpu] is None and time.monotonic_ns() < self._next_check_ns[vcpu]:
            return False
        with self._lock:
            now = time.monotonic_ns()
            reason = self.need_resched[vcpu]
            if reason is None:
                self._next_check_ns[vcpu] = self.cls.next_check(vcpu, now)
                if not self.cls.tick(vcpu, now):
                    return False
                reason = Resched.TICK
            self.need_resched[vcpu] = None
            self.preemptions[reason.value] += 1
            self._requeue(task, now)
            return True

    # -- transitions ---------------------------------------------------------------------------
    def requeue(self, task: Task) -> None:
        """RUNNING --stop running here (hotplug, suspend)--> RUNNABLE; an idle vCPU is kicked to pull it."""
        with self._lock:
            self._requeue(task, time.monotonic_ns())
            idle = next((v for v in self.idle if v != task.cpu), None)
        if idle is not None:
            self._kick(idle)

    def _requeue(self, task: Task, now: int) -> None:
        self.cls.put_prev(task.cpu, now, sleeping=False)
        task.state = TaskState.RUNNABLE
        task.runnable_since_ns = now
        self.nr_queued += 1

    def park(self, task: Task, token: int) -> None:
        """RUNNING --not present--> PARKED (before the task enters the wait table, so that a wake
        from another vCPU finds it parked); it leaves its run queue to sleep."""
        with self._lock:
            now = time.monotonic_ns()
            self.cls.put_prev(task.cpu, now, sleeping=True)
            task.state = TaskState.PARKED
            task.token = token
            task.parked_at_ns = now

    def unpark(self, task: Task) -> None:
        """The wake came before the wait: the task goes on running."""
        with self._lock:
            self.cls.resume(task, task.cpu, time.monotonic_ns())
            task.state = TaskState.RUNNING
            task.parked_at_ns = 0
            task.token = 0

    def wake(self, task: Task, by_vcpu: int) -> None:
        """PARKED --page ready--> RUNNABLE, on the vCPU `select_cpu` chooses; that vCPU is kicked
        if idle (and not the waker), or told to reschedule if the woken task preempts its own."""
        kick = None
        with self._lock:
            now = time.monotonic_ns()
            if task.parked_at_ns:
                self.parked_ns.append((task.phase, now - task.parked_at_ns))
                task.parked_at_ns = 0
            task.state = TaskState.RUNNABLE
            task.token = 0
            cpu = self.cls.select_cpu(task, by_vcpu, self.idle)
            migrated = 0 <= task.cpu != cpu
            self.migrations += migrated
            self._enqueue(task, cpu, now, Enqueue.WAKEUP | (Enqueue.MIGRATED if migrated else 0))
            if cpu in self.idle:
                kick = cpu if cpu != by_vcpu else None
            elif self.need_resched[cpu] is None and self.cls.wakeup_preempts(cpu, task, now):
                self.need_resched[cpu] = Resched.WAKEUP
        if kick is not None:
            self._kick(kick)

    def finish(self, task: Task, error: str | None = None) -> None:
        """RUNNING --last access--> DONE (or FAILED); at the end of a phase, tell the main thread."""
        with self._lock:
            self.cls.put_prev(task.cpu, time.monotonic_ns(), sleeping=True)
            task.state = TaskState.FAILED if error else TaskState.DONE
            task.error = error
            self.remaining -= 1
            if self.remaining:
                return
            self.phase_ns[task.phase][1] = time.monotonic_ns()
            self.phase_cpu_ns[task.phase][1] = time.process_time_ns()
            self.phase_over = task.phase
        try:
            os.write(self._boundary[1], b"!")
        except BlockingIOError:
            pass  # the main thread has a wake-up pending already

    def suspend(self, until_ns: int) -> None:
        """Suspend the guest: every vCPU goes offline at its next instruction boundary and comes
        back online at `until_ns` (monotonic ns). Idle vCPUs are kicked to notice."""
        with self._lock:
            self.suspended_until_ns = max(self.suspended_until_ns, until_ns)
        self._kick_all()

    def abort(self, why: str) -> None:
        with self._lock:
            if self.aborted is None:
                self.aborted = why
        self._kick_all()

    def parked(self) -> list[Task]:
        with self._lock:
            return [t for t in self.all_tasks if t.state == TaskState.PARKED]

    def close(self) -> None:
        for r, w in [*self._pipes, self._boundary]:
            os.close(r)
            os.close(w)
