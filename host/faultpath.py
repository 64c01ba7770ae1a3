"""The host's stage-2 fault path: trap -> refusal -> synchronous or asynchronous -> page-in -> notify.

A TRAP for a page whose stage-2 entry allows the access by now is spurious (another vCPU faulted
it in): RESUME. A write to a read-only entry is a permission fault, resolved by the memory
manager at once (it makes the page dirty and maps it read-write). Else
the memory manager says whether the page is major (a swap read is needed); `AsyncPf.try_async()`
and then the policy say whether the fault may be asynchronous (KVM: `kvm_arch_setup_async_pf`
refusing is a normal outcome). An asynchronous fault is answered at once with PAGE_NOT_PRESENT
and its token; a synchronous one is answered when the page is in (the vCPU stays blocked in its
TRAP, as a vCPU halted in the host). When the memory manager settles a page, `page_in()` answers
every synchronous waiter and queues the page-ready of every asynchronous one (KVM:
`kvm_check_async_pf_completion`). Tracepoints carry KVM's names.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, NamedTuple

from host.apf import AsyncPf, SyncReason
from host.memory import MemoryManager, Outcome
from host.policy import Policy
from protocol.errors import ErrorCode
from protocol.messages import PAGE_SIZE, Access, Error, InjectExc, Message, Resume, Trap, Vector
from shared.chaos import Chaos
from shared.layout import Perm
from shared.timeline import Tracer


class SyncWaiter(NamedTuple):
    """A vCPU blocked in its TRAP until the page is in: answered on `route` with `seq`."""
    route: bytes
    seq: int
    vcpu: int


class AsyncWaiter(NamedTuple):
    """A task parked on `token`: its page-ready is queued when the page is in."""
    vcpu: int
    token: int


_RW = int(Perm.RW)


def memory_failure(seq: int, gfn: int) -> Error:
    """The answer to a TRAP on a poisoned page (the guest ends only the faulting task)."""
    return Error(seq, int(ErrorCode.MEMORY_FAILURE),
                 f"memory failure: page {gfn} (IPA {gfn * PAGE_SIZE:#x}) could not be read from swap")


class FaultPath:
    """One session's fault handling. `send(route, msg)` answers a vCPU; `after(ns, action)` runs an
    action later on the host's loop (a chaos delay). `counts` has `total`, `spurious`, `async`,
    `sync` (the STATS `faults` figures this path owns)."""

    def __init__(self, perm: memoryview, mm: MemoryManager, apf: AsyncPf, policy: Policy, chaos: Chaos,
                 tracer: Tracer, send: Callable[[bytes, Message], None],
                 after: Callable[[int, Callable[[], None]], None]):
        self.perm = perm
        self.mm = mm
        self.apf = apf
        self.policy = policy
        self.chaos = chaos
        self.tracer = tracer
        self.send = send
        self.after = after
        self.counts: Counter = Counter()

    def on_trap(self, route: bytes, msg: Trap) -> None:
        """A stage-2 fault of vCPU `msg.vcpu` at `msg.ipa` (bytes)."""
        self.policy.vcpu_active(msg.vcpu)
        gfn = msg.ipa // PAGE_SIZE
        self.counts["total"] += 1
        perm = self.perm[gfn]
        if perm == _RW or (perm and msg.access != Access.WRITE):
            self.counts["spurious"] += 1
            self.send(route, Resume(msg.seq, msg.vcpu))
            return
        major = self.mm.is_major(gfn)
        if major:
            self.tracer.instant("kvm_try_async_get_page", msg.vcpu, gfn=gfn, vcpu=msg.vcpu, token=0)
        refusal = self._refusal(msg, gfn, major)
        if refusal is None:
            self._fault_async(route, msg, gfn)
        else:
            self._fault_sync(route, msg, gfn, refusal)

    def _refusal(self, msg: Trap, gfn: int, major: bool) -> SyncReason | None:
        refusal = self.apf.try_async(msg.vcpu, gfn, msg.ctx, major)
        if refusal is None and not self.policy.allows_async(msg.vcpu):
            self.apf.count_policy_refusal()
            return SyncReason.POLICY
        return refusal

    def _fault_async(self, route: bytes, msg: Trap, gfn: int) -> None:
        token = self.apf.not_present(msg.vcpu, gfn)
        self.policy.not_present(msg.vcpu, token)
        self.counts["async"] += 1
        self.tracer.instant("kvm_async_pf_not_present", msg.vcpu, token=token, gfn=gfn, vcpu=msg.vcpu)
        self.send(route, InjectExc(msg.seq, msg.vcpu, Vector.PAGE_NOT_PRESENT, token))
        self.mm.request(gfn, AsyncWaiter(msg.vcpu, token), msg.access == Access.WRITE)

    def _fault_sync(self, route: bytes, msg: Trap, gfn: int, refusal: SyncReason) -> None:
        self.counts["sync"] += 1
        if refusal == SyncReason.REPEATED:
            self.tracer.instant("kvm_async_pf_repeated_fault", msg.vcpu, gfn=gfn, vcpu=msg.vcpu, token=0)
        outcome = self.mm.request(gfn, SyncWaiter(route, msg.seq, msg.vcpu), msg.access == Access.WRITE)
        if outcome == Outcome.MAPPED:
            self.send(route, Resume(msg.seq, msg.vcpu))
        elif outcome == Outcome.POISONED:
            self.send(route, memory_failure(msg.seq, gfn))

    def page_in(self, gfn: int, waiters: list, err: int) -> None:
        """A pending page is settled (mapped, or poisoned if `err`): answer everyone waiting on it."""
        for waiter in waiters:
            if isinstance(waiter, SyncWaiter):
                reply = memory_failure(waiter.seq, gfn) if err else Resume(waiter.seq, waiter.vcpu)
                self.send(waiter.route, reply)
                continue
            # A poisoned page still gets its page-ready: the task retries, faults synchronously
            # and receives the memory failure then, as KVM does.
            self.tracer.instant("kvm_async_pf_completed", waiter.vcpu, token=waiter.token, gfn=gfn,
                                vcpu=waiter.vcpu)
            delay = self.chaos.fires("page-ready", "delay")
            if delay:
                self.after(delay.delay_ns, lambda w=waiter: self.apf.page_in(w.vcpu, gfn, w.token))
            else:
                self.apf.page_in(waiter.vcpu, gfn, waiter.token)
