"""Asynchronous page faults, host side: per-vCPU enable state, tokens, the done queue and the
single page-ready slot.

`try_async()` answers "may this fault be asynchronous?" and returns a refusal reason when it
may not; the caller then resolves the fault synchronously. That is a normal outcome, counted
per reason, never an exception.

Page-ready delivery follows KVM: completed tokens wait in the vCPU's done queue; one is written
into the control block's `ready_token` slot only while the slot reads 0 (one atomic
compare-and-swap from 0), then the interrupt is injected; the guest takes the token with an
atomic exchange that leaves 0 and calls APF_ACK, which lets the next one through. So two
page-readies never share the slot and none is lost.
"""
from __future__ import annotations

import itertools
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Callable

from shared.chaos import Chaos
from protocol.hypercalls import DEFAULT_PAGE_READY_PPI, ApfFlags
from protocol.messages import Ctx
from shared.files import ControlFile
from shared.layout import WAKE_ALL_TOKEN, Reason

if TYPE_CHECKING:
    from host.policy import Policy

TOKEN_VCPU_BITS = 12
TOKEN_COUNTER_MASK = (1 << (32 - TOKEN_VCPU_BITS)) - 1
DEFAULT_MAX_OUTSTANDING = 64
RERAISE_NS = 500_000_000   # a slot left full this long after its interrupt: raise it again
TOKENS_SHOWN = 16     # per vCPU and list in STATS `apf.tokens`: bounded, so the reply fits a frame


class SyncReason(str, Enum):
    """Why a fault was resolved synchronously (the report's `faults.sync_reasons` keys)."""
    NOT_MAJOR = "not_major"               # page resident, never touched or being evicted: cheap
    APF_DISABLED = "apf_disabled"
    KERNEL_CONTEXT = "kernel_context"     # kernel mode without SEND_ALWAYS
    IRQS_DISABLED = "irqs_disabled"       # interrupts off / non-preemptible
    LIMIT = "outstanding_limit"
    REPEATED = "repeated_fault"           # the same page already in flight for this vCPU
    WAKE_ALL_PENDING = "wake_all_pending"  # a wake-all not yet taken would also wake this task
    POLICY = "policy"                     # the host's policy chose sync


@dataclass
class VcpuApf:
    vcpu: int
    flags: ApfFlags = ApfFlags(0)
    irq: int = 0
    counter: int = 0
    outstanding: dict[int, int] = field(default_factory=dict)   # token -> gfn, until delivered
    inflight_gfns: dict[int, int] = field(default_factory=dict)  # gfn -> token, until the page is in
    done: deque[int] = field(default_factory=deque)             # tokens waiting for the slot
    duplicates: set[int] = field(default_factory=set)           # injected second deliveries
    injected_ns: int = 0                                        # when the slot's interrupt went out
    raised_ns: int = 0                                          # when an interrupt for the slot was raised
    ppi_enabled: bool = True        # the page-ready PPI's enable bit in the guest's interrupt controller
    delivered: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=TOKENS_SHOWN))
    # ^ the last tokens put into the slot, with when (monotonic ns): what a stuck guest asks about

    @property
    def enabled(self) -> bool:
        return bool(self.flags & ApfFlags.ENABLED)


@dataclass
class ApfCounters:
    not_present: int = 0
    page_ready: int = 0
    wake_all: int = 0
    acks: int = 0
    duplicated: int = 0              # page-readies sent twice (fault injection)
    reordered: int = 0               # page-readies queued out of order (fault injection)
    reraised: int = 0                # interrupts raised again for a slot the guest left full
    # Page-readies dropped because their vCPU disabled APF: queued in its done queue at the
    # disable, or of a swap-in still running then (dropped when its page came in).
    dropped_queued: int = 0
    dropped_in_flight: int = 0
    sync_reasons: Counter = field(default_factory=Counter)

    @property
    def dropped_by_disable(self) -> int:
        """Every page-ready a disable dropped, queued or in flight."""
        return self.dropped_queued + self.dropped_in_flight


class AsyncPf:
    def __init__(self, control: ControlFile, nr_vcpus: int, max_outstanding: int,
                 inject_page_ready: Callable[[int], None], chaos: Chaos | None = None,
                 policy: "Policy | None" = None):
        self.control = control
        self.policy = policy
        self.chaos = chaos or Chaos()
        self.max_outstanding = max_outstanding
        self.vcpus = [VcpuApf(v) for v in range(nr_vcpus)]
        self._inject = inject_page_ready
        self.counters = ApfCounters()

    # -- control path (hypercalls) ---------------------------------------------------------------
    # DISABLED --APF_ENABLE--> ENABLED (block cleared, wake-all queued)
    # ENABLED --APF_DISABLE--> DISABLED (work dropped; the block is never written again)
    def enable(self, vcpu: int, flags: ApfFlags, irq: int) -> bool:
        """Enable APF on a vCPU that has it disabled: start from a clean block (every word 0, so
        a token left in the slot before a disable cannot hold back the new wake-all), then queue
        the wake-all. False (nothing changes) if APF is enabled already."""
        st = self.vcpus[vcpu]
        if st.enabled:
            return False
        for word in ("reason", "np_token", "ready_token"):
            self.control.write(vcpu, word, 0)
        self.control.write(vcpu, "enabled", int(flags))
        st.flags, st.irq = flags, irq
        st.injected_ns = st.raised_ns = 0
        self.wake_all(vcpu)
        return True

    def disable(self, vcpu: int) -> bool:
        """Disable APF: outstanding tokens are forgotten and queued page-readies dropped (their pages
        stay mapped, so a retried access just succeeds); no wake-all is sent, because the guest
        wakes its own sleepers (Linux: `apf_task_wake_all()` on the CPU-offline path). After the
        `enabled` word goes to 0 the host never writes this vCPU's block again (msr.rst: after
        disable, outstanding async faults are not delivered). False if APF is disabled already."""
        st = self.vcpus[vcpu]
        if not st.enabled:
            return False
        dropped = sum(1 for t in st.done if t != WAKE_ALL_TOKEN and t not in st.duplicates)
        self.counters.dropped_queued += dropped     # in-flight ones count when their page is in
        st.flags = ApfFlags(0)
        st.outstanding.clear()
        st.inflight_gfns.clear()
        st.done.clear()
        st.duplicates.clear()
        st.injected_ns = st.raised_ns = 0
        self.control.write(vcpu, "enabled", 0)
        if self.chaos.fires("host", "ready-after-disable"):
            st.done.append(WAKE_ALL_TOKEN)   # chaos: the old bug; the next re-check delivers it
        return True

    def set_ppi(self, vcpu: int, irq: int, enabled: bool) -> bool:
        """The guest set (GICR_ISENABLER0) or cleared (GICR_ICENABLER0) the enable bit of PPI `irq`.
        Only the page-ready PPI (the one given at APF_ENABLE; 30 before any) is modelled: False
        for any other. While it is disabled no completion moves into the slot (a KVM fix: only
        dequeue when the guest can take the interrupt); enabling it lets them flow. (An interrupt
        raised before the mask stays pending in the guest, as in a GIC.)"""
        st = self.vcpus[vcpu]
        if irq != (st.irq or DEFAULT_PAGE_READY_PPI):
            return False
        st.ppi_enabled = enabled
        if enabled:
            self.deliver(vcpu)
        return True

    def wake_all(self, vcpu: int) -> None:
        """Queue the wake-all token ahead of everything else for this vCPU."""
        self.vcpus[vcpu].done.appendleft(WAKE_ALL_TOKEN)
        self.counters.wake_all += 1
        self.deliver(vcpu)

    def ack(self, vcpu: int) -> None:
        self.counters.acks += 1
        st = self.vcpus[vcpu]
        if st.injected_ns and self.policy is not None:
            self.policy.notified(time.monotonic_ns() - st.injected_ns)
        st.injected_ns = 0
        self.deliver(vcpu)

    # -- faults ----------------------------------------------------------------------------------
    def try_async(self, vcpu: int, gfn: int, ctx: Ctx, major: bool) -> SyncReason | None:
        """None if this fault may be asynchronous, else why it must be synchronous (counted)."""
        reason = self._refusal(self.vcpus[vcpu], gfn, ctx, major)
        if reason is not None:
            self.counters.sync_reasons[reason.value] += 1
        return reason

    def _refusal(self, st: VcpuApf, gfn: int, ctx: Ctx, major: bool) -> SyncReason | None:
        if not major:
            return SyncReason.NOT_MAJOR
        if not st.enabled:
            return SyncReason.APF_DISABLED
        context = self._context_refusal(st, ctx)
        if context is not None and not self.chaos.fires("host", "async-anywhere"):
            return context      # (chaos: a buggy host ignores the context and goes async anyway)
        if gfn in st.inflight_gfns:
            return SyncReason.REPEATED
        if WAKE_ALL_TOKEN in st.done or self.control.read(st.vcpu, "ready_token") == WAKE_ALL_TOKEN:
            return SyncReason.WAKE_ALL_PENDING
        if len(st.outstanding) >= self.max_outstanding:
            return SyncReason.LIMIT
        return None

    @staticmethod
    def _context_refusal(st: VcpuApf, ctx: Ctx) -> SyncReason | None:
        """A context that may not sleep: interrupts off, or kernel mode without SEND_ALWAYS."""
        if ctx & Ctx.IRQS_OFF:
            return SyncReason.IRQS_DISABLED
        if ctx & Ctx.KERNEL and not st.flags & ApfFlags.SEND_ALWAYS:
            return SyncReason.KERNEL_CONTEXT
        return None

    def count_policy_refusal(self) -> None:
        self.counters.sync_reasons[SyncReason.POLICY.value] += 1

    def not_present(self, vcpu: int, gfn: int) -> int:
        """Issue a token for `gfn` and write the reason into the control block; return the token."""
        st = self.vcpus[vcpu]
        token = self._new_token(st)
        st.outstanding[token] = gfn
        st.inflight_gfns[gfn] = token
        self.control.write(vcpu, "np_token", token)
        self.control.write(vcpu, "reason", Reason.PAGE_NOT_PRESENT)
        self.counters.not_present += 1
        return token

    def _new_token(self, st: VcpuApf) -> int:
        while True:
            st.counter = (st.counter + 1) & TOKEN_COUNTER_MASK
            token = (st.counter << TOKEN_VCPU_BITS) | st.vcpu
            if token not in (0, WAKE_ALL_TOKEN) and token not in st.outstanding:
                return token

    def page_in(self, vcpu: int, gfn: int, token: int) -> bool:
        """The page behind `token` is mapped: queue its page-ready. False if the token was flushed."""
        st = self.vcpus[vcpu]
        if st.inflight_gfns.get(gfn) == token:
            del st.inflight_gfns[gfn]
        if token not in st.outstanding:
            self.counters.dropped_in_flight += 1    # only a disable forgets outstanding tokens
            return False
        if len(st.done) > 1 and self.chaos.fires("page-ready", "reorder"):
            st.done.insert(int(self.chaos.random() * len(st.done)), token)
            self.counters.reordered += 1
        else:
            st.done.append(token)
        self.deliver(vcpu)
        return True

    def deliver(self, vcpu: int) -> None:
        """Put the next done token into the slot if the guest can take its interrupt (APF enabled,
        page-ready PPI enabled) and has freed the slot, and interrupt."""
        st = self.vcpus[vcpu]
        if st.enabled and st.ppi_enabled:
            self._publish(st)

    def _publish(self, st: VcpuApf) -> None:
        vcpu = st.vcpu
        if not st.done or not self.control.publish(vcpu, "ready_token", st.done[0]):
            return      # nothing to deliver, or the guest has not taken the last one yet
        token = st.done.popleft()
        if token in st.duplicates:
            st.duplicates.discard(token)
        elif token != WAKE_ALL_TOKEN:
            st.outstanding.pop(token, None)
            self.counters.page_ready += 1
            if self.policy is not None:
                self.policy.page_ready(vcpu, token)
            if self.chaos.fires("page-ready", "duplicate"):
                st.done.append(token)            # injected: the same token will come again
                st.duplicates.add(token)
                self.counters.duplicated += 1
        now = time.monotonic_ns()
        st.delivered.append((token, now))
        st.raised_ns = now
        # Time the interrupt-to-ACK round trip only when the vCPU is idle and takes it at once.
        st.injected_ns = now if self.policy is not None and self.policy.is_idle(vcpu) else 0
        self._inject(vcpu)

    def _raise_again(self, st: VcpuApf) -> None:
        st.raised_ns = time.monotonic_ns()
        st.injected_ns = 0
        self.counters.reraised += 1
        self._inject(st.vcpu)

    def deliver_all(self, now_ns: int | None = None) -> None:
        """The periodic re-check (every heartbeat): a guest that took the slot but never ACKed
        still gets its page-readies (late), and an interrupt the guest did not take (the slot
        still full RERAISE_NS after it was raised) is raised again, instead of either hanging."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        for st in self.vcpus:
            if not st.enabled and st.done:
                self._publish(st)        # only chaos (ready-after-disable) leaves work here
            if not (st.enabled and st.ppi_enabled):
                continue
            if self.control.read(st.vcpu, "ready_token"):
                if st.raised_ns and now - st.raised_ns >= RERAISE_NS:
                    self._raise_again(st)
            elif st.done:
                self._publish(st)

    def outstanding(self) -> list[int]:
        return [len(st.outstanding) for st in self.vcpus]

    def queued(self) -> list[int]:
        return [len(st.done) for st in self.vcpus]

    def tokens(self) -> list[dict[str, object]]:
        """What the host knows of each vCPU's tokens, for a guest that finds a task stuck: the
        slot's content, the done queue's head, the outstanding tokens with their gfn, and the
        last tokens delivered into the slot with their monotonic time (ns). Each list holds at
        most TOKENS_SHOWN entries."""
        return [{"slot": self.control.read(st.vcpu, "ready_token"),
                 "done": list(itertools.islice(st.done, TOKENS_SHOWN)),
                 "outstanding": [[t, g] for t, g in itertools.islice(st.outstanding.items(), TOKENS_SHOWN)],
                 "delivered": [[t, ns] for t, ns in st.delivered]}
                for st in self.vcpus]
