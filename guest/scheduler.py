"""Guest tasks and the run queue shared by all vCPUs (a woken task may resume on any vCPU).

A vCPU with nothing to run waits for an interrupt (page-ready) or for a kick from another vCPU
that made a task runnable: the inter-processor interrupt is a byte on the idle vCPU's pipe,
which its poll includes. Nobody spins.

Every field that more than one thread reads to decide something (the run queue, the phase and
task counts, a task's state and token) is read and written under `_lock`; the vCPUs' single-word
peeks (`has_waiting`, `aborted`, `suspended_until_ns`) are hints that the next locked call re-checks.

Phases (prefill, workload, verify) run one after the other. When one ends, the next waits until
the daemon's main thread calls `advance()`: the boundary is a quiet point (no task runs) where it
reads the host's swap counters, so that each phase gets its own.

    RUNNABLE --picked--> RUNNING --not present--> PARKED --page ready--> RUNNABLE
                            |  \\--slice over--> RUNNABLE
                            +--last access--> DONE   (or FAILED on a memory failure)

A compute task's items are CPU work steps instead of accesses: it never faults, never parks.
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from enum import Enum
from typing import Callable, Iterator

from guest.workload import Access, Compute


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

    def advance(self) -> None:
        self.completed += 1
        if isinstance(self.current, Compute):
            self.work_ns += self.current.ns
        self.thought = False
        self.current = next(self._accesses, None)

    def __repr__(self) -> str:
        return f"<task {self.name} {self.state.value}>"


class Scheduler:
    def __init__(self, nr_vcpus: int, phases: list[tuple[str, Callable[[], list[Task]]]]):
        """`phases` run one after the other; each makes its tasks when the previous one ends."""
        self._lock = threading.Lock()
        self.runq: deque[Task] = deque()
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
            self.runq.extend(tasks)
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

    # -- picking -------------------------------------------------------------------------------
    def pick(self, vcpu: int) -> Task | None:
        with self._lock:
            if self.runq:
                self.idle.discard(vcpu)
                task = self.runq.popleft()
                task.state = TaskState.RUNNING
                return task
            self.idle.add(vcpu)
            return None

    @property
    def finished(self) -> bool:
        """Every phase is over (or the run aborted). Read under the lock: `advance()` pops the last
        phase before it sets the phase's task count, and in between the counts alone read as done."""
        with self._lock:
            return self.aborted is not None or (self.remaining == 0 and not self._phases
                                                 and self.phase_over is None)

    def has_waiting(self) -> bool:
        return bool(self.runq)

    # -- transitions ---------------------------------------------------------------------------
    def requeue(self, task: Task) -> None:
        """RUNNING --slice over--> RUNNABLE."""
        with self._lock:
            task.state = TaskState.RUNNABLE
            self.runq.append(task)

    def park(self, task: Task, token: int) -> None:
        """RUNNING --not present--> PARKED (before the task enters the wait table, so that a wake
        from another vCPU finds it parked)."""
        with self._lock:
            task.state = TaskState.PARKED
            task.token = token
            task.parked_at_ns = time.monotonic_ns()

    def unpark(self, task: Task) -> None:
        """The wake came before the wait: the task goes on running."""
        with self._lock:
            task.state = TaskState.RUNNING
            task.parked_at_ns = 0
            task.token = 0

    def wake(self, task: Task, by_vcpu: int) -> None:
        """PARKED --page ready--> RUNNABLE; kick an idle vCPU other than the waker."""
        with self._lock:
            if task.parked_at_ns:
                self.parked_ns.append((task.phase, time.monotonic_ns() - task.parked_at_ns))
                task.parked_at_ns = 0
            task.state = TaskState.RUNNABLE
            task.token = 0
            self.runq.append(task)
            idle = next((v for v in self.idle if v != by_vcpu), None)
        if idle is not None:
            self._kick(idle)

    def finish(self, task: Task, error: str | None = None) -> None:
        """RUNNING --last access--> DONE (or FAILED); at the end of a phase, tell the main thread."""
        with self._lock:
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
