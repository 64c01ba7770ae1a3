"""The guest's side of asynchronous page faults: parking on PAGE_NOT_PRESENT, the page-ready
interrupt handler, and wake-all.

Shaped after Linux's guest API in `arch/x86/kernel/kvm.c`: `kvm_async_pf_task_wait_schedule`
(park the task on its token), `kvm_async_pf_task_wake` (wake it, or leave a placeholder when the
wake comes first) and `apf_task_wake_all`, with the interrupt handler
(`sysvec_kvm_asyncpf_interrupt`) a few lines that take the token from the slot and wake. Each
handler is a function of the control block, the wait table and the scheduler that returns what
happened; the vCPU counts and traces it, and sends APF_ACK when the result asks for one.

The slot handshake (protocol/SPEC.md §6.1, §9): the host fills `ready_token` only while it reads
0 (compare-and-swap); the guest takes it with one atomic exchange that leaves 0. Taking and
clearing are one instruction, so a token the host publishes right after it lands in a free slot
and is taken by the next interrupt; it can never be overwritten by the guest's clear.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable, Generic, Protocol, TypeVar

from guest.waittable import WaitTable, Wake
from shared.files import ControlFile
from shared.layout import WAKE_ALL_TOKEN, Reason

T = TypeVar("T")


class Ready(Enum):
    """What one page-ready interrupt did."""
    WOKEN = "woken"            # the token's sleeper woke
    EARLY = "early"            # nobody slept on the token yet: a placeholder waits (wake before wait)
    DUPLICATE = "duplicate"    # the token was resolved already: nothing woke
    WAKE_ALL = "wake_all"      # the wake-all token: every sleeper of this vCPU woke
    SPURIOUS = "spurious"      # the slot was empty: nothing to do, and no APF_ACK


@dataclass(frozen=True)
class PageReady(Generic[T]):
    outcome: Ready
    token: int                              # what the slot held (0 for SPURIOUS)
    woken: tuple[tuple[int, T], ...] = ()   # (token, task) of every task made runnable

    @property
    def needs_ack(self) -> bool:
        """A taken slot is acknowledged (APF_ACK lets the host deliver the next); an empty one is not."""
        return self.outcome is not Ready.SPURIOUS


@dataclass(frozen=True)
class NotPresent:
    parked: bool        # False: the page-ready came first (a placeholder): retry the access now
    consistent: bool    # the block said PAGE_NOT_PRESENT with the injected token


class TaskScheduler(Protocol[T]):
    """What the handlers need of the scheduler (guest/scheduler.py `Scheduler`)."""

    def park(self, task: T, token: int) -> None: ...
    def unpark(self, task: T) -> None: ...
    def wake(self, task: T, by_vcpu: int) -> None: ...


_READY_OF_WAKE = {Wake.WOKEN: Ready.WOKEN, Wake.EARLY: Ready.EARLY, Wake.DUPLICATE: Ready.DUPLICATE}


class GuestApf(Generic[T]):
    """The guest's APF handlers over one control file, one wait table and one scheduler, shared
    by every vCPU thread (the wait table and scheduler lock themselves; each vCPU touches only
    its own control block).

    `on_slot_taken(vcpu)`, if given, runs right after the page-ready handler has taken a token
    from the slot and before it wakes anyone: the moment at which the host may already publish
    the next token. Only tests set it, to hold that window open.
    """

    def __init__(self, control: ControlFile, waits: WaitTable[T], sched: TaskScheduler[T],
                 on_slot_taken: Callable[[int], None] | None = None):
        self.control = control
        self.waits = waits
        self.sched = sched
        self.on_slot_taken = on_slot_taken

    def page_not_present(self, vcpu: int, token: int, task: T) -> NotPresent:
        """The injected PAGE_NOT_PRESENT exception for `token`: take `reason` and `np_token` from
        the block (each an atomic exchange with 0) and park `task` on the token, unless its
        page-ready already came (then the task retries at once)."""
        reason = self.control.take(vcpu, "reason")
        np_token = self.control.take(vcpu, "np_token")
        consistent = reason == Reason.PAGE_NOT_PRESENT and np_token == token
        # The scheduler's state first: once the wait table holds the task, another vCPU may wake it.
        self.sched.park(task, token)
        if self.waits.park(token, task):
            return NotPresent(True, consistent)
        self.sched.unpark(task)
        return NotPresent(False, consistent)

    def page_ready(self, vcpu: int) -> PageReady[T]:
        """The page-ready interrupt on `vcpu`: take the token from the slot (leaving it free) and
        wake its task, or every task of this vCPU for the wake-all token. The caller sends
        APF_ACK if `needs_ack`."""
        token = self.control.take(vcpu, "ready_token")
        if token == 0:
            return PageReady(Ready.SPURIOUS, 0)
        if self.on_slot_taken is not None:
            self.on_slot_taken(vcpu)
        if token == WAKE_ALL_TOKEN:
            return PageReady(Ready.WAKE_ALL, token, self.wake_all(vcpu))
        wake, task = self.waits.wake(token)
        woken = ((token, task),) if task is not None else ()
        self._make_runnable(woken, vcpu)
        return PageReady(_READY_OF_WAKE[wake], token, woken)

    def wake_all(self, vcpu: int) -> tuple[tuple[int, T], ...]:
        """Wake every task parked on one of `vcpu`'s tokens and drop its placeholders, as on the
        wake-all token (Linux `apf_task_wake_all`); return the (token, task) pairs woken."""
        woken = tuple(self.waits.wake_all(vcpu))
        self._make_runnable(woken, vcpu)
        return woken

    def _make_runnable(self, woken: tuple[tuple[int, T], ...], vcpu: int) -> None:
        for _, task in woken:
            self.sched.wake(task, vcpu)
