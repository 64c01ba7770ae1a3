"""host/apf.py AsyncPf together with the guest's real handlers (guest/apf.py GuestApf over a
guest/waittable.py WaitTable): the page-not-present / page-ready protocol as a Hypothesis state
machine over a real control file, plus plain tests of try_async()'s refusal reasons and of the
token formula."""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections import Counter
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                 run_state_machine_as_test)

from guest.apf import GuestApf
from guest.waittable import WaitTable
from host.apf import RERAISE_NS, TOKEN_COUNTER_MASK, TOKEN_VCPU_BITS, AsyncPf, SyncReason
from protocol.hypercalls import DEFAULT_PAGE_READY_PPI, ApfFlags
from protocol.messages import Ctx
from shared.files import ControlFile
from shared.layout import WAKE_ALL_TOKEN, Reason

NR_VCPUS = 2
CAP = 3
GFNS = 5
GUEST_PAGES = 64
FLAGS = ApfFlags.ENABLED | ApfFlags.DELIVERY_AS_INT


class Task(NamedTuple):
    name: str
    vcpu: int
    gfn: int
    token: int


# -- the guest side: the real handlers of guest/apf.py ----------------------------------------------------------

class SchedulerLog:
    """The scheduler calls the guest's handlers make, recorded (guest/scheduler.py has its own tests)."""

    def __init__(self) -> None:
        self.state: dict[Task, str] = {}

    def park(self, task: Task, token: int) -> None:
        self.state[task] = "parked"

    def unpark(self, task: Task) -> None:
        self.state[task] = "running"

    def wake(self, task: Task, by_vcpu: int) -> None:
        assert self.state.get(task) == "parked", f"{task} woken while {self.state.get(task)}"
        self.state[task] = "runnable"


def guest_page_not_present(guest: GuestApf, vcpu: int, token: int, task: Task) -> bool:
    """The guest's PAGE_NOT_PRESENT handler; the block must have agreed with the exception."""
    result = guest.page_not_present(vcpu, token, task)
    assert result.consistent, f"control block of vCPU {vcpu} disagreed with token {token:#x}"
    return result.parked


def guest_page_ready(guest: GuestApf, apf: AsyncPf, vcpu: int) -> tuple[int, list]:
    """The guest's page-ready handler, then APF_ACK as the vCPU sends it. Returns (token, woken
    tasks); token 0 is a spurious interrupt (no ACK)."""
    result = guest.page_ready(vcpu)
    if result.needs_ack:
        apf.ack(vcpu)
    assert all(token == task.token for token, task in result.woken)
    return result.token, [task for _, task in result.woken]


class Rig:
    """AsyncPf over a real control file, recording injected page-ready interrupts per vCPU."""

    def __init__(self, d: str, nr_vcpus: int = NR_VCPUS, cap: int = CAP):
        self.control = ControlFile.create(os.path.join(d, "control"), nr_vcpus, GUEST_PAGES)
        self.injected: list[list[int]] = [[] for _ in range(nr_vcpus)]   # slot token at each injection
        self.apf = AsyncPf(self.control, nr_vcpus, cap, self._inject)
        self.waits: WaitTable[Task] = WaitTable()
        self.guest = GuestApf(self.control, self.waits, SchedulerLog())

    def _inject(self, vcpu: int) -> None:
        self.injected[vcpu].append(self.control.read(vcpu, "ready_token"))

    def take_all(self, vcpu: int) -> list[tuple[int, list]]:
        """The guest takes interrupts until the slot stays empty."""
        taken = []
        while self.control.read(vcpu, "ready_token"):
            taken.append(guest_page_ready(self.guest, self.apf, vcpu))
        return taken

    def close(self) -> None:
        self.control.close()


@pytest.fixture
def rig(shm_dir):
    r = Rig(shm_dir)
    yield r
    r.close()


def enabled_rig(rig: Rig, flags: ApfFlags = FLAGS) -> Rig:
    for v in range(NR_VCPUS):
        rig.apf.enable(v, flags, DEFAULT_PAGE_READY_PPI)
        assert rig.take_all(v) == [(WAKE_ALL_TOKEN, [])]
    return rig


# -- try_async refusal reasons -------------------------------------------------------------------------------

def test_not_major_is_refused_first(rig):
    """A fault that needs no swap read is NOT_MAJOR, whatever else holds (APF off, kernel, irqs off)."""
    assert rig.apf.try_async(0, 1, Ctx.KERNEL | Ctx.IRQS_OFF, major=False) == SyncReason.NOT_MAJOR
    enabled_rig(rig)
    assert rig.apf.try_async(0, 1, Ctx.USER, major=False) == SyncReason.NOT_MAJOR
    assert rig.apf.counters.sync_reasons == Counter({"not_major": 2})


def test_apf_disabled_is_refused(rig):
    """Major faults on a vCPU that never enabled APF, or disabled it, are APF_DISABLED."""
    assert rig.apf.try_async(1, 1, Ctx.USER, major=True) == SyncReason.APF_DISABLED
    enabled_rig(rig)
    assert rig.apf.try_async(1, 1, Ctx.USER, major=True) is None
    rig.apf.disable(1)
    assert rig.apf.try_async(1, 1, Ctx.USER, major=True) == SyncReason.APF_DISABLED
    assert rig.apf.counters.sync_reasons == Counter({"apf_disabled": 2})


def test_kernel_context_is_refused_unless_send_always(shm_dir):
    """A kernel-mode major fault is KERNEL_CONTEXT without SEND_ALWAYS and allowed with it."""
    rig = enabled_rig(Rig(shm_dir))
    try:
        assert rig.apf.try_async(0, 1, Ctx.KERNEL, major=True) == SyncReason.KERNEL_CONTEXT
        assert rig.apf.disable(0)
        assert rig.apf.enable(0, FLAGS | ApfFlags.SEND_ALWAYS, DEFAULT_PAGE_READY_PPI)
        rig.take_all(0)
        assert rig.apf.try_async(0, 1, Ctx.KERNEL, major=True) is None
        assert rig.apf.try_async(1, 1, Ctx.KERNEL, major=True) == SyncReason.KERNEL_CONTEXT
        assert rig.apf.counters.sync_reasons == Counter({"kernel_context": 2})
    finally:
        rig.close()


def test_irqs_disabled_is_refused_even_with_send_always(rig):
    """A major fault with interrupts off is IRQS_DISABLED, in user or kernel mode, SEND_ALWAYS or not."""
    enabled_rig(rig, FLAGS | ApfFlags.SEND_ALWAYS)
    assert rig.apf.try_async(0, 1, Ctx.IRQS_OFF, major=True) == SyncReason.IRQS_DISABLED
    assert rig.apf.try_async(0, 1, Ctx.IRQS_OFF | Ctx.KERNEL, major=True) == SyncReason.IRQS_DISABLED
    assert rig.apf.counters.sync_reasons == Counter({"irqs_disabled": 2})


def test_repeated_fault_on_an_in_flight_page_is_refused(rig):
    """A second fault on a page already in flight for this vCPU is REPEATED until the page is in;
    the same page on another vCPU may go async."""
    enabled_rig(rig)
    token = rig.apf.not_present(0, 3)
    assert rig.apf.try_async(0, 3, Ctx.USER, major=True) == SyncReason.REPEATED
    assert rig.apf.try_async(1, 3, Ctx.USER, major=True) is None
    assert rig.apf.page_in(0, 3, token) is True
    assert rig.apf.try_async(0, 3, Ctx.USER, major=True) is None
    assert rig.apf.counters.sync_reasons == Counter({"repeated_fault": 1})


def test_outstanding_limit_is_refused_until_a_page_ready_is_delivered(rig):
    """With `cap` tokens outstanding on a vCPU, the next major fault is LIMIT (other vCPUs are not
    affected); once one page-ready has been written into the slot, a new fault may go async."""
    enabled_rig(rig)
    tokens = [rig.apf.not_present(0, gfn) for gfn in range(CAP)]
    assert rig.apf.outstanding() == [CAP, 0]
    assert rig.apf.try_async(0, CAP, Ctx.USER, major=True) == SyncReason.LIMIT
    assert rig.apf.try_async(1, CAP, Ctx.USER, major=True) is None
    rig.apf.page_in(0, 0, tokens[0])
    assert rig.control.read(0, "ready_token") == tokens[0]
    assert rig.apf.outstanding() == [CAP - 1, 0]
    assert rig.apf.try_async(0, CAP, Ctx.USER, major=True) is None
    assert rig.apf.counters.sync_reasons == Counter({"outstanding_limit": 1})


def test_allowed_faults_are_not_counted_as_refusals(rig):
    """try_async returning None leaves sync_reasons empty; a policy refusal is counted as POLICY."""
    enabled_rig(rig)
    assert rig.apf.try_async(0, 1, Ctx.USER, major=True) is None
    assert rig.apf.counters.sync_reasons == Counter()
    rig.apf.count_policy_refusal()
    assert rig.apf.counters.sync_reasons == Counter({SyncReason.POLICY.value: 1})


# -- tokens and the slot -------------------------------------------------------------------------------------

def test_not_present_writes_reason_and_token_into_the_control_block(rig):
    """not_present() issues (counter << 12) | vcpu, writes it with PAGE_NOT_PRESENT into the vCPU's
    block and no other, and counts it."""
    enabled_rig(rig)
    token = rig.apf.not_present(1, 4)
    assert token & ((1 << TOKEN_VCPU_BITS) - 1) == 1 and token >> TOKEN_VCPU_BITS == 1
    assert (rig.control.read(1, "reason"), rig.control.read(1, "np_token")) == (Reason.PAGE_NOT_PRESENT, token)
    assert (rig.control.read(0, "reason"), rig.control.read(0, "np_token")) == (Reason.NONE, 0)
    assert rig.apf.counters.not_present == 1


def test_token_counter_wrap_never_yields_zero_or_wake_all(shm_dir):
    """When the 20-bit counter wraps, vCPU 0 never gets token 0 and vCPU 4095 never gets ~0."""
    rig = Rig(shm_dir, nr_vcpus=4096, cap=CAP)
    try:
        for v in (0, 4095):
            rig.apf.enable(v, FLAGS, DEFAULT_PAGE_READY_PPI)
        rig.apf.vcpus[0].counter = TOKEN_COUNTER_MASK
        t0 = rig.apf.not_present(0, 1)
        rig.apf.vcpus[4095].counter = TOKEN_COUNTER_MASK - 1
        t1 = rig.apf.not_present(4095, 1)
        assert t0 not in (0, WAKE_ALL_TOKEN) and t0 & 0xFFF == 0
        assert t1 not in (0, WAKE_ALL_TOKEN) and t1 & 0xFFF == 4095
    finally:
        rig.close()


def test_page_ready_is_injected_only_into_an_empty_slot(rig):
    """Two completions: the second waits in the done queue until the guest has cleared the slot AND
    acked; an ack without clearing delivers nothing; none is lost."""
    enabled_rig(rig)
    a = rig.apf.not_present(0, 1)
    b = rig.apf.not_present(0, 2)
    rig.apf.page_in(0, 1, a)
    rig.apf.page_in(0, 2, b)
    assert rig.injected[0][1:] == [a]
    assert rig.apf.queued() == [1, 0]
    rig.apf.ack(0)                                   # slot not cleared: nothing moves
    assert rig.injected[0][1:] == [a] and rig.control.read(0, "ready_token") == a
    rig.control.write(0, "ready_token", 0)
    assert rig.injected[0][1:] == [a]                # clearing alone does not inject either
    rig.apf.ack(0)
    assert rig.injected[0][1:] == [a, b]
    assert rig.apf.queued() == [0, 0] and rig.apf.counters.page_ready == 2


def test_enable_on_an_enabled_vcpu_is_refused_and_changes_nothing(rig):
    """Each token resolves exactly once: APF_ENABLE on a vCPU that has APF enabled is refused (the
    SMCCC NOT_REQUIRED of the hypercall) and neither flushes nor wakes: the task parked on the
    in-flight token is woken by that token's own page-ready, once."""
    enabled_rig(rig)
    token = rig.apf.not_present(0, 7)
    task = Task("t", 0, 7, token)
    assert guest_page_not_present(rig.guest, 0, token, task) is True
    assert rig.apf.enable(0, FLAGS | ApfFlags.SEND_ALWAYS, DEFAULT_PAGE_READY_PPI) is False
    assert rig.take_all(0) == []
    rig.apf.page_in(0, 7, token)
    assert rig.take_all(0) == [(token, [task])]
    assert len(rig.waits) == 0, "a stray wake-before-wait placeholder was left in the guest"


def test_disable_writes_nothing_more_and_enable_starts_from_a_clean_block(rig):
    """APF_DISABLE drops the vCPU's queued and in-flight page-readies without a wake-all and the
    host writes its block no more, even when a page comes in; APF_ENABLE afterwards clears the
    block (a token left in the slot cannot hold back the new wake-all) and sends the wake-all."""
    enabled_rig(rig)
    a, b = rig.apf.not_present(0, 1), rig.apf.not_present(0, 2)
    rig.apf.page_in(0, 1, a)                          # a in the slot, not taken
    before = bytes(rig.control.mm[:])
    injected = list(rig.injected[0])
    assert rig.apf.disable(0) is True
    assert rig.apf.disable(0) is False                # twice: NOT_REQUIRED
    after_disable = bytes(rig.control.mm[:])
    assert rig.apf.page_in(0, 2, b) is False          # b's page comes in: dropped
    rig.apf.deliver_all()
    assert bytes(rig.control.mm[:]) == after_disable and rig.injected[0] == injected
    assert rig.control.read(0, "ready_token") == a    # left as it was
    assert before != after_disable                    # only the `enabled` word changed
    assert rig.apf.counters.dropped_by_disable == 1 and rig.apf.counters.wake_all == NR_VCPUS
    assert rig.apf.enable(0, FLAGS, DEFAULT_PAGE_READY_PPI) is True
    assert rig.take_all(0) == [(WAKE_ALL_TOKEN, [])]
    assert rig.apf.try_async(0, 3, Ctx.USER, major=True) is None


def test_a_masked_page_ready_ppi_holds_completions_until_unmasked(rig):
    """While the guest has the page-ready PPI disabled no completion moves into the slot and no
    interrupt is raised; enabling it delivers them in order. Another PPI is unknown: refused."""
    enabled_rig(rig)
    assert rig.apf.set_ppi(0, DEFAULT_PAGE_READY_PPI - 1, False) is False
    assert rig.apf.set_ppi(0, DEFAULT_PAGE_READY_PPI, False) is True
    tokens = [rig.apf.not_present(0, gfn) for gfn in (1, 2)]
    for gfn, token in zip((1, 2), tokens):
        rig.apf.page_in(0, gfn, token)
    rig.apf.deliver_all()
    assert rig.control.read(0, "ready_token") == 0 and rig.injected[0] == [WAKE_ALL_TOKEN]
    assert rig.apf.queued()[0] == 2
    assert rig.apf.set_ppi(0, DEFAULT_PAGE_READY_PPI, True) is True
    assert [token for token, _ in rig.take_all(0)] == tokens


def test_an_interrupt_left_untaken_is_raised_again(rig):
    """A slot still full RERAISE_NS after its interrupt was raised gets the interrupt again on the
    periodic re-check (counted `reraised`); a slot taken in time does not."""
    enabled_rig(rig)
    token = rig.apf.not_present(0, 1)
    rig.apf.page_in(0, 1, token)
    raised = rig.apf.vcpus[0].raised_ns
    rig.apf.deliver_all(now_ns=raised + RERAISE_NS - 1)
    assert rig.injected[0][1:] == [token] and rig.apf.counters.reraised == 0
    rig.apf.deliver_all(now_ns=raised + RERAISE_NS)
    assert rig.injected[0][1:] == [token, token] and rig.apf.counters.reraised == 1


def test_wake_all_pending_at_a_fault_does_not_resolve_the_new_token(rig):
    """Each token resolves exactly once: while the wake-all queued by APF_ENABLE is still pending (in
    the slot, not yet taken), a new fault is refused (WAKE_ALL_PENDING), because that wake-all would
    also wake the task parked on the new token and its page-ready would then find no sleeper. Once
    the guest has taken the wake-all, the fault is asynchronous and its token resolves once."""
    rig.apf.enable(1, FLAGS, DEFAULT_PAGE_READY_PPI)        # wake-all now in vCPU 1's slot, not taken
    assert rig.injected[1] == [WAKE_ALL_TOKEN]
    assert rig.apf.try_async(1, 0, Ctx.USER, major=True) == SyncReason.WAKE_ALL_PENDING
    assert rig.take_all(1) == [(WAKE_ALL_TOKEN, [])]
    assert rig.apf.try_async(1, 0, Ctx.USER, major=True) is None
    token = rig.apf.not_present(1, 0)
    task = Task("t", 1, 0, token)
    assert guest_page_not_present(rig.guest, 1, token, task) is True
    rig.apf.page_in(1, 0, token)
    resolved: dict[int, str] = {}
    for slot, woken in rig.take_all(1):
        if slot not in (0, WAKE_ALL_TOKEN):
            assert slot not in resolved, (
                f"page-ready for token {slot:#x} after the wake-all sent before its fault resolved it")
        for t in woken:
            how = "wake_all" if slot == WAKE_ALL_TOKEN else "page_ready"
            assert t.token not in resolved, f"token {t.token:#x} resolved twice"
            resolved[t.token] = how
    assert resolved == {token: "page_ready"}
    assert len(rig.waits) == 0, "a stray wake-before-wait placeholder was left in the guest"


# -- the protocol as a state machine ---------------------------------------------------------------------------

def step(fn):
    """Mark a rule or invariant as finished, so teardown's drain only runs after a clean run."""
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        self.clean = False
        result = fn(self, *args, **kwargs)
        self.clean = True
        return result
    return wrapper


class ApfProtocol(RuleBasedStateMachine):
    """The host's AsyncPf and the guest's real handlers (GuestApf), with a model of what each
    token should do.

    Faults come in every context (user, kernel, interrupts off, both), major or not, on vCPUs that
    enabled APF with or without SEND_ALWAYS, so that each of the seven refusal reasons of SPEC §8
    is reached and checked in the SPEC's order. One order is kept out of the machine, covered by
    its own test above: enable() is only used on a disabled vCPU (as the guest does)."""
    shm_root = "/dev/shm"
    refusals_seen: Counter = Counter()      # over every example: which reasons the model expected

    def __init__(self):
        super().__init__()
        self.clean = True
        self.dir = tempfile.mkdtemp(prefix="apf-unit-apf-", dir=self.shm_root)
        self.control = ControlFile.create(os.path.join(self.dir, "control"), NR_VCPUS, GUEST_PAGES)
        self.apf = AsyncPf(self.control, NR_VCPUS, CAP, self._inject)
        self.waits: WaitTable[Task] = WaitTable()
        self.guest = GuestApf(self.control, self.waits, SchedulerLog())
        self.enabled = [False] * NR_VCPUS
        self.send_always = [False] * NR_VCPUS
        self.wake_all_due = [False] * NR_VCPUS   # from APF_ENABLE until the guest takes its wake-all
        self.ppi_enabled = [True] * NR_VCPUS
        self.block_at_disable: list[bytes | None] = [None] * NR_VCPUS   # what the block held then
        self.pending_irqs = [0] * NR_VCPUS
        self.in_slot: list[int | None] = [None] * NR_VCPUS    # injected, not yet taken by the guest
        self.outstanding = [set() for _ in range(NR_VCPUS)]     # issued, not yet in the slot, not flushed
        self.inflight_gfns: list[dict[int, int]] = [{} for _ in range(NR_VCPUS)]
        self.io: dict[int, tuple[int, int]] = {}                # token -> (vcpu, gfn): page not in yet
        self.completed: set[int] = set()                        # page_in accepted
        self.flushed: set[int] = set()                          # dropped by disable
        self.issued: set[int] = set()
        self.sleeping: dict[int, Task] = {}
        self.resolved: dict[int, str] = {}                      # token -> "page_ready" | "wake_all"
        self.tasks = 0

    # -- host callback ----------------------------------------------------------------------------
    def _inject(self, vcpu: int) -> None:
        token = self.control.read(vcpu, "ready_token")
        assert token != 0, "interrupt injected with an empty slot"
        assert self.enabled[vcpu], f"vCPU {vcpu}: interrupt raised while APF is disabled"
        assert self.ppi_enabled[vcpu], f"vCPU {vcpu}: interrupt raised while its page-ready PPI is masked"
        assert self.in_slot[vcpu] is None, (
            f"vCPU {vcpu}: token {token:#x} injected while {self.in_slot[vcpu]:#x} was not yet cleared")
        if token != WAKE_ALL_TOKEN:
            assert token in self.completed, f"page-ready for token {token:#x} whose page is not in"
            assert token not in self.flushed, f"page-ready for token {token:#x} flushed by disable"
            assert token in self.outstanding[vcpu]
            self.outstanding[vcpu].discard(token)
        self.in_slot[vcpu] = token
        self.pending_irqs[vcpu] += 1

    def _resolve(self, task: Task, how: str) -> None:
        assert task.token not in self.resolved, (
            f"token {task.token:#x} resolved twice ({self.resolved[task.token]}, then {how})")
        assert self.sleeping.pop(task.token) == task
        self.resolved[task.token] = how

    def _expected_refusal(self, vcpu: int, gfn: int, ctx: Ctx, major: bool) -> SyncReason | None:
        """SPEC §8's table, in its order."""
        if not major:
            return SyncReason.NOT_MAJOR
        if not self.enabled[vcpu]:
            return SyncReason.APF_DISABLED
        if ctx & Ctx.IRQS_OFF:
            return SyncReason.IRQS_DISABLED
        if ctx & Ctx.KERNEL and not self.send_always[vcpu]:
            return SyncReason.KERNEL_CONTEXT
        if gfn in self.inflight_gfns[vcpu]:
            return SyncReason.REPEATED
        if self.wake_all_due[vcpu]:
            return SyncReason.WAKE_ALL_PENDING
        if len(self.outstanding[vcpu]) >= CAP:
            return SyncReason.LIMIT
        return None

    # -- rules --------------------------------------------------------------------------------------
    @initialize()
    @step
    def boot(self):
        """As the guest boots: every vCPU enables APF and takes the wake-all that follows."""
        for v in range(NR_VCPUS):
            self.enabled[v] = self.wake_all_due[v] = True
            self.apf.enable(v, FLAGS, DEFAULT_PAGE_READY_PPI)
            self._take(v)

    @rule(vcpu=st.integers(0, NR_VCPUS - 1), gfn=st.integers(0, GFNS - 1),
          ctx=st.sampled_from([Ctx.USER, Ctx.USER, Ctx.KERNEL, Ctx.IRQS_OFF, Ctx.KERNEL | Ctx.IRQS_OFF]),
          major=st.sampled_from([True, True, True, False]))
    @step
    def fault(self, vcpu, gfn, ctx, major):
        expected = self._expected_refusal(vcpu, gfn, ctx, major)
        assert self.apf.try_async(vcpu, gfn, ctx, major=major) == expected
        type(self).refusals_seen[expected] += 1
        if expected is not None:
            return                       # resolved synchronously: nothing to track
        token = self.apf.not_present(vcpu, gfn)
        assert token not in (0, WAKE_ALL_TOKEN)
        assert token & 0xFFF == vcpu
        assert token not in self.issued, f"token {token:#x} issued twice"
        self.issued.add(token)
        self.outstanding[vcpu].add(token)
        self.inflight_gfns[vcpu][gfn] = token
        self.io[token] = (vcpu, gfn)
        self.tasks += 1
        task = Task(f"task{self.tasks}", vcpu, gfn, token)
        assert guest_page_not_present(self.guest, vcpu, token, task) is True
        self.sleeping[token] = task

    @precondition(lambda self: self.io)
    @rule(data=st.data())
    @step
    def complete(self, data):
        self._complete(data.draw(st.sampled_from(sorted(self.io))))

    def _complete(self, token):
        vcpu, gfn = self.io.pop(token)
        if self.inflight_gfns[vcpu].get(gfn) == token:
            del self.inflight_gfns[vcpu][gfn]
        accepted = token not in self.flushed
        if accepted:
            self.completed.add(token)
        assert self.apf.page_in(vcpu, gfn, token) is accepted

    @precondition(lambda self: any(self.pending_irqs))
    @rule(data=st.data())
    @step
    def guest_takes_irq(self, data):
        vcpu = data.draw(st.sampled_from([v for v in range(NR_VCPUS) if self.pending_irqs[v]]))
        self._take(vcpu)

    def _take(self, vcpu: int) -> None:
        self.pending_irqs[vcpu] -= 1
        expected_all = sorted(t for t, task in self.sleeping.items() if task.vcpu == vcpu)
        slot = self.in_slot[vcpu]
        self.in_slot[vcpu] = None
        token, woken = guest_page_ready(self.guest, self.apf, vcpu)
        assert token != 0, f"vCPU {vcpu} took a spurious page-ready interrupt"
        assert token == slot
        if token == WAKE_ALL_TOKEN:
            self.wake_all_due[vcpu] = False
            assert sorted(t.token for t in woken) == expected_all
            for task in woken:
                self._resolve(task, "wake_all")
        else:
            assert token not in self.resolved, (
                f"page-ready for token {token:#x} after it was resolved by {self.resolved.get(token)}")
            assert len(woken) == 1, f"page-ready for token {token:#x} found no sleeper"
            assert woken[0].token == token
            self._resolve(woken[0], "page_ready")

    @precondition(lambda self: not all(self.enabled))
    @rule(data=st.data(), send_always=st.booleans())
    @step
    def enable(self, data, send_always):
        vcpu = data.draw(st.sampled_from([v for v in range(NR_VCPUS) if not self.enabled[v]]))
        self.enabled[vcpu] = self.wake_all_due[vcpu] = True
        self.send_always[vcpu] = send_always
        self.block_at_disable[vcpu] = None
        self.in_slot[vcpu] = None            # the host starts from a clean block
        assert self.apf.enable(vcpu, self._flags(vcpu), DEFAULT_PAGE_READY_PPI) is True

    def _flags(self, vcpu: int) -> ApfFlags:
        return FLAGS | ApfFlags.SEND_ALWAYS if self.send_always[vcpu] else FLAGS

    @rule(vcpu=st.integers(0, NR_VCPUS - 1), coin=st.integers(0, 2))
    @step
    def disable(self, vcpu, coin):
        """As the guest's CPU-offline path: APF_DISABLE, then it wakes its own sleepers and drops
        the interrupts it had not taken."""
        if coin or not self.enabled[vcpu]:
            assert coin or self.apf.disable(vcpu) is False     # twice: refused, nothing changes
            return                       # disabling is rarer than the other events
        self.enabled[vcpu] = self.wake_all_due[vcpu] = False   # a queued wake-all is dropped too
        self.flushed |= self.outstanding[vcpu]
        self.outstanding[vcpu].clear()
        self.inflight_gfns[vcpu].clear()
        assert self.apf.disable(vcpu) is True
        self.block_at_disable[vcpu] = self._block(vcpu)
        self.pending_irqs[vcpu] = 0
        self.in_slot[vcpu] = None
        expected = sorted(t for t, task in self.sleeping.items() if task.vcpu == vcpu)
        woken = self.guest.wake_all(vcpu)
        assert sorted(token for token, _ in woken) == expected
        for _, task in woken:
            self._resolve(task, "wake_all")

    @rule(vcpu=st.integers(0, NR_VCPUS - 1), enabled=st.booleans())
    @step
    def set_ppi(self, vcpu, enabled):
        self.ppi_enabled[vcpu] = enabled
        assert self.apf.set_ppi(vcpu, DEFAULT_PAGE_READY_PPI, enabled) is True

    def _block(self, vcpu: int) -> bytes:
        start = 64 * (1 + vcpu)
        return bytes(self.control.mm[start:start + 64])

    # -- invariants ------------------------------------------------------------------------------------
    @invariant()
    @step
    def outstanding_within_cap(self):
        assert self.apf.outstanding() == [len(s) for s in self.outstanding]
        assert all(n <= CAP for n in self.apf.outstanding())

    @invariant()
    @step
    def a_disabled_vcpus_block_is_never_written(self):
        for v in range(NR_VCPUS):
            if self.block_at_disable[v] is not None:
                assert self._block(v) == self.block_at_disable[v], f"vCPU {v}'s block written after disable"

    @invariant()
    @step
    def no_token_waits_while_it_could_be_delivered(self):
        for v in range(NR_VCPUS):
            if self.enabled[v] and self.ppi_enabled[v] and self.in_slot[v] is None:
                assert self.apf.queued()[v] == 0, f"vCPU {v}: tokens queued behind a free slot"

    @invariant()
    @step
    def control_block_matches(self):
        for v in range(NR_VCPUS):
            if not self.enabled[v]:
                continue                     # left as it was at disable (checked above)
            assert self.control.read(v, "ready_token") == (self.in_slot[v] or 0)
            assert self.control.read(v, "enabled") == int(self._flags(v))
            assert self.control.read(v, "reason") == Reason.NONE
            self.control.check_block(v)          # magic, version, owner, reserved bytes intact

    @invariant()
    @step
    def sleepers_match(self):
        assert self.waits.sleepers() == self.sleeping
        assert len(self.waits) == len(self.sleeping), "a stray wake-before-wait placeholder exists"
        assert not set(self.sleeping) & set(self.resolved)

    # -- the end: no task sleeps forever ---------------------------------------------------------------
    def teardown(self):
        try:
            if self.clean:
                self._drain()
        finally:
            self.control.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _drain(self) -> None:
        """Unmask every page-ready PPI, complete every in-flight page and let the guest take every
        interrupt; nobody may stay parked."""
        for v in range(NR_VCPUS):
            self.set_ppi(v, True)
        for _ in range(1000):
            if self.io:
                self._complete(min(self.io))
            elif any(self.pending_irqs):
                self._take(next(v for v in range(NR_VCPUS) if self.pending_irqs[v]))
            else:
                break
        assert not self.io and not any(self.pending_irqs), "the drain did not settle"
        assert self.waits.sleepers() == {}, f"tasks sleep forever: {sorted(self.waits.sleepers().values())}"
        assert len(self.waits) == 0, "stray wake-before-wait placeholders remain"
        assert self.apf.queued() == [0] * NR_VCPUS
        assert set(self.resolved) == self.issued, "a token was never resolved"


def test_apf_protocol_state_machine(shm_dir):
    """Random faults, completions, guest interrupts, enable/disable (the guest waking its own sleepers
    at disable) and masking/unmasking of the page-ready PPI keep the APF invariants: each token
    resolves exactly once (never woken twice, never page-ready after wake-all resolved it); a
    completion is delivered once or dropped by a disable, never both; a disabled vCPU's block is never
    written and it gets no interrupt, nor does a vCPU with the PPI masked; no token waits while the
    PPI is enabled and the slot is free; at most `cap` outstanding per vCPU; an interrupt is injected
    only into a slot the guest has cleared;
    tokens are never 0 or ~0, carry their vCPU and are unique; try_async refuses for exactly the
    modelled reason, each of SPEC §8's seven in user, kernel and interrupts-off contexts (every one
    is reached); and after completing everything in flight and taking every interrupt no task is
    left asleep."""
    class Machine(ApfProtocol):
        shm_root = shm_dir
        refusals_seen: Counter = Counter()

    run_state_machine_as_test(Machine, settings=settings(
        max_examples=300, stateful_step_count=50, deadline=None, database=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow]))
    assert set(Machine.refusals_seen) == {None, *(r for r in SyncReason if r is not SyncReason.POLICY)}, \
        Machine.refusals_seen
