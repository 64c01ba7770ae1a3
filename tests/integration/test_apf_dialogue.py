"""The APF dialogue against a real host, driven message by message by a hand-made guest.

The host keeps 16 pages; the guest touches 64, so the first ones are swapped out. A slow
modelled swap device (--swap-latency) keeps swap-ins in flight long enough to observe.
"""
import pytest

from protocol.hypercalls import APF_FLAGS_MASK, APF_RESERVED_FLAGS, APF_VERSION, ApfFlags, FuncId, SmcccRet
from protocol.messages import Ctx, Error, Hvc, InjectExc, Kind, Resume, Stats, Vector
from shared.layout import WAKE_ALL_TOKEN, Perm, Reason, block_offset
from tests.helpers import RawGuest

BASE = ["--guest-mem", "1MiB", "--host-mem", "64KiB", "--vcpus", "2"]
DELIVERY = ApfFlags.ENABLED | ApfFlags.DELIVERY_AS_INT


@pytest.fixture
def guest(raw_guest):
    """start(*host_args) -> a RawGuest with 2 vCPUs attached to a fresh host, pages 0..63 touched."""
    return lambda *args: raw_guest(*BASE, *args, nr_vcpus=2)


def _swapped(g: RawGuest, n: int) -> list[int]:
    pages = [p for p in g.swapped_pages() if p < 64][:n]
    assert len(pages) == n
    return pages


def _stats(g: RawGuest) -> dict:
    return g.request(g.ctl, Stats(0)).stats


def test_not_present_writes_reason_and_token_then_page_ready_follows(guest):
    """A user-mode fault on a swapped page with APF on: PAGE_NOT_PRESENT with a fresh token, the
    reason and token in the control block; once the page is in, the token arrives in the slot
    with one interrupt, and the page is mapped."""
    g = guest("--swap-latency", "50ms")
    assert g.enable(0, take_wake_all=False).ret[0] == SmcccRet.SUCCESS
    g.pump_until(lambda: g.irqs, "the wake-all interrupt after APF_ENABLE")
    assert g.take_page_ready(0) == WAKE_ALL_TOKEN    # enabling wakes every sleeper
    g.irqs.clear()
    gfn = _swapped(g, 1)[0]
    reply = g.trap(0, gfn)
    assert isinstance(reply, InjectExc) and reply.vector == Vector.PAGE_NOT_PRESENT
    token = reply.token
    assert token not in (0, WAKE_ALL_TOKEN) and token & 0xFFF == 0
    assert g.control.read(0, "reason") == Reason.PAGE_NOT_PRESENT
    assert g.control.read(0, "np_token") == token
    g.pump_until(lambda: g.irqs, "the page-ready interrupt")
    g.pump(50)                                        # a second interrupt would show up here
    assert len(g.irqs) == 1 and g.irqs[0].vcpu == 0
    assert g.control.read(0, "ready_token") == token
    assert g.stage2.perm[gfn] == Perm.RW
    assert g.take_page_ready(0) == token


@pytest.mark.parametrize("ctx, flags, reason", [
    (Ctx.KERNEL, DELIVERY, "kernel_context"),
    (Ctx.IRQS_OFF, DELIVERY, "irqs_disabled"),
    (Ctx.IRQS_OFF | Ctx.KERNEL, DELIVERY | ApfFlags.SEND_ALWAYS, "irqs_disabled"),
])
def test_try_async_refuses_forbidden_contexts(guest, ctx, flags, reason):
    """Kernel mode without SEND_ALWAYS, and interrupts disabled, make the fault synchronous:
    the vCPU gets RESUME only once the page is in, and the reason is counted."""
    g = guest("--swap-latency", "20ms")
    assert g.enable(0, flags).ret[0] == SmcccRet.SUCCESS
    gfn = _swapped(g, 1)[0]
    reply = g.trap(0, gfn, ctx=ctx)
    assert isinstance(reply, Resume) and g.stage2.perm[gfn] == Perm.RW
    assert _stats(g)["faults"]["sync_reasons"].get(reason) == 1


def test_send_always_allows_kernel_faults(guest):
    """With SEND_ALWAYS, a kernel-mode fault may be asynchronous."""
    g = guest("--swap-latency", "20ms")
    g.enable(0, DELIVERY | ApfFlags.SEND_ALWAYS)
    assert isinstance(g.trap(0, _swapped(g, 1)[0], ctx=Ctx.KERNEL), InjectExc)


def test_apf_disabled_faults_are_synchronous(guest):
    """Without APF_ENABLE every major fault is synchronous (reason apf_disabled)."""
    g = guest()
    assert isinstance(g.trap(0, _swapped(g, 1)[0]), Resume)
    assert _stats(g)["faults"]["sync_reasons"].get("apf_disabled") == 1


def test_repeated_fault_waits_synchronously(guest):
    """A second fault on a page already in flight for the same vCPU does not get a second token:
    the vCPU waits (repeated_fault), and the first token's page-ready still comes once."""
    g = guest("--swap-latency", "100ms")
    g.enable(0)
    gfn = _swapped(g, 1)[0]
    first = g.trap(0, gfn)
    assert isinstance(first, InjectExc)
    assert isinstance(g.trap(0, gfn), Resume)
    assert _stats(g)["faults"]["sync_reasons"].get("repeated_fault") == 1
    g.pump_until(lambda: g.irqs, "the first token's page-ready")
    assert g.take_page_ready(0) == first.token
    assert _stats(g)["apf"]["queued"] == [0, 0]       # nothing else is waiting for the slot
    g.pump(100)
    assert len(g.irqs) == 1


def test_outstanding_limit_makes_the_next_fault_synchronous(guest):
    """With --max-outstanding 2, the third concurrent fault of a vCPU is synchronous."""
    g = guest("--swap-latency", "100ms", "--max-outstanding", "2")
    g.enable(0)
    pages = _swapped(g, 3)
    assert isinstance(g.trap(0, pages[0]), InjectExc)
    assert isinstance(g.trap(0, pages[1]), InjectExc)
    assert isinstance(g.trap(0, pages[2]), Resume)
    stats = _stats(g)
    assert stats["faults"]["sync_reasons"].get("outstanding_limit") == 1


def test_one_slot_two_completions_never_share_it(guest):
    """Two faults complete together: the first token is in the slot with one interrupt; the
    second waits until the guest clears the slot and ACKs, then comes with its own interrupt."""
    g = guest("--swap-latency", "30ms")
    g.enable(0)
    a, b = _swapped(g, 2)
    ta, tb = g.trap(0, a).token, g.trap(0, b).token
    assert ta != tb
    g.pump_until(lambda: g.irqs and _stats(g)["apf"]["queued"][0] == 1,
                 "one token in the slot, the other queued behind it")
    assert len(g.irqs) == 1
    first = g.control.read(0, "ready_token")
    assert first in (ta, tb)
    assert g.take_page_ready(0) == first
    g.pump_until(lambda: len(g.irqs) == 2, "the second page-ready after the ACK")
    assert g.take_page_ready(0) == ({ta, tb} - {first}).pop()


def test_fault_while_wake_all_pending_is_synchronous(guest):
    """A fault taken while the enable's wake-all still sits in the slot is synchronous
    (wake_all_pending): that wake-all would otherwise also wake the task parked on the new token."""
    g = guest("--swap-latency", "20ms")
    g.enable(0, take_wake_all=False)
    g.pump_until(lambda: g.control.read(0, "ready_token") == WAKE_ALL_TOKEN, "the wake-all in the slot")
    assert isinstance(g.trap(0, _swapped(g, 1)[0]), Resume)
    assert _stats(g)["faults"]["sync_reasons"].get("wake_all_pending") == 1


def test_tokens_are_per_vcpu_and_unique(guest):
    """Two vCPUs fault concurrently: tokens carry their vCPU id and never collide."""
    g = guest("--swap-latency", "50ms")
    g.enable(0)
    g.enable(1)
    pages = _swapped(g, 6)
    tokens = [g.trap(i % 2, p).token for i, p in enumerate(pages)]
    assert len(set(tokens)) == 6
    assert [t & 0xFFF for t in tokens] == [0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize("mutate, expected", [
    (lambda ipa, flags: (ipa + 64 | flags, 30), SmcccRet.INVALID_PARAMETER),       # another vCPU's block
    (lambda ipa, flags: (0x1000 | flags, 30), SmcccRet.INVALID_PARAMETER),         # inside RAM, not the window
    (lambda ipa, flags: (ipa | flags | 0x4, 30), SmcccRet.INVALID_PARAMETER),      # reserved flag bit
    (lambda ipa, flags: (ipa | ApfFlags.ENABLED, 30), SmcccRet.INVALID_PARAMETER), # no DELIVERY_AS_INT
    (lambda ipa, flags: (ipa | flags | 0x10, 30), SmcccRet.INVALID_PARAMETER),     # reserved flag bit 4
    (lambda ipa, flags: (ipa | flags | 0x20, 30), SmcccRet.INVALID_PARAMETER),     # reserved flag bit 5
    (lambda ipa, flags: (ipa | flags, 99), SmcccRet.INVALID_PARAMETER),            # not a PPI
    (lambda ipa, flags: (ipa | flags, 15), SmcccRet.INVALID_PARAMETER),            # an SGI, below the PPIs
    (lambda ipa, flags: (ipa | flags, 32), SmcccRet.INVALID_PARAMETER),            # an SPI, above them
    (lambda ipa, flags: (ipa | flags,), SmcccRet.INVALID_PARAMETER),               # no PPI argument
    (lambda ipa, flags: (), SmcccRet.INVALID_PARAMETER),                           # no argument at all
    (lambda ipa, flags: (ipa | flags, 30, 1), SmcccRet.INVALID_PARAMETER),         # x3 not 0
    (lambda ipa, flags: (ipa | flags, 30, 0, 1), SmcccRet.INVALID_PARAMETER),      # x4 not 0
    (lambda ipa, flags: (ipa | flags, 16, 0, 0), SmcccRet.SUCCESS),                # lowest PPI; x3, x4 zero
    (lambda ipa, flags: (ipa | flags, 31), SmcccRet.SUCCESS),                      # highest PPI
    (lambda ipa, flags: (ipa | flags, 30), SmcccRet.SUCCESS),
])
def test_enable_is_validated_like_kvm(guest, mutate, expected):
    """APF_ENABLE (SPEC §5) answers INVALID_PARAMETER to fewer than 2 arguments, a reserved flag
    (bits 2, 4, 5), no DELIVERY_AS_INT, a block that is not the caller's own, a PPI outside
    16..31 and a non-zero x3 or x4; it enables with anything else."""
    g = guest()
    ipa = g.info["control_ipa"] + block_offset(0)
    args = mutate(ipa, int(DELIVERY))
    assert g.hvc(0, FuncId.APF_ENABLE, *args).ret[0] == expected


def test_enable_with_enabled_clear_is_a_disable(guest):
    """APF_ENABLE with ENABLED clear acts as APF_DISABLE and answers as it does (SPEC §5), its
    other arguments unchecked: NOT_REQUIRED on a disabled vCPU; on an enabled one SUCCESS, the
    block's `enabled` word cleared, so that a second disable is NOT_REQUIRED and a real enable
    succeeds again."""
    g = guest()
    ipa = g.info["control_ipa"] + block_offset(0)
    not_enabled = (ipa | ApfFlags.DELIVERY_AS_INT | 0x4, 99, 7, 7)      # reserved bit, bad PPI, x3, x4
    assert g.hvc(0, FuncId.APF_ENABLE, *not_enabled).ret[0] == SmcccRet.NOT_REQUIRED
    assert g.enable(0).ret[0] == SmcccRet.SUCCESS
    assert g.control.read(0, "enabled") == DELIVERY
    assert g.hvc(0, FuncId.APF_ENABLE, *not_enabled).ret[0] == SmcccRet.SUCCESS
    assert g.control.read(0, "enabled") == 0
    assert g.hvc(0, FuncId.APF_DISABLE).ret[0] == SmcccRet.NOT_REQUIRED
    assert g.enable(0).ret[0] == SmcccRet.SUCCESS


def test_smccc_version_is_1_1(guest):
    """SMCCC_VERSION (owner 0, function 0) answers [0x10001, 0, 0, 0]: SMCCC v1.1 (SPEC §5)."""
    g = guest()
    assert g.hvc(0, FuncId.SMCCC_VERSION).ret == (0x10001, 0, 0, 0)


@pytest.mark.parametrize("host_args, asked, answer", [
    ((), 20_000, (SmcccRet.NOT_SUPPORTED, 0, 0, 0)),                            # no --dilation
    (("--dilation", "20", "--swap-latency", "50us"), 20_000, (SmcccRet.SUCCESS, 20_000, 0, 0)),
    (("--dilation", "20", "--swap-latency", "50us"), 10_000, (SmcccRet.INVALID_PARAMETER, 20_000, 0, 0)),
    (("--dilation", "auto", "--swap-latency", "50us"), 4_500, (SmcccRet.SUCCESS, 4_500, 0, 0)),
    (("--dilation", "auto", "--swap-latency", "50us"), 999, (SmcccRet.INVALID_PARAMETER, 1_000, 0, 0)),
], ids=["no-dilation", "fixed-same", "fixed-other", "auto", "auto-below-1"])
def test_emu_dilation_answers(guest, host_args, asked, answer):
    """EMU_DILATION on the ctl socket (SPEC §5): NOT_SUPPORTED without --dilation; a fixed factor
    accepts only itself ([0, x1]) and answers any other with INVALID_PARAMETER and its own factor;
    with `auto` any D >= 1 is taken and a D below 1 refused with the factor in force (1). The
    modelled swap latency the host applies is then the given one times the factor in force."""
    g = guest(*host_args)
    assert g.request(g.ctl, Hvc(0, 0, int(FuncId.EMU_DILATION), (asked,))).ret == answer
    applied = _stats(g)["dilation"]["swap_latency_ns"]
    assert applied == (50_000 * answer[1] // 1000 if host_args else 0)


def test_features_and_unknown_function(guest):
    """FEATURES reports APF version 1, the --max-outstanding cap and exactly the flags APF_ENABLE
    accepts (ENABLED, SEND_ALWAYS, DELIVERY_AS_INT); an unknown function ID is NOT_SUPPORTED."""
    g = guest("--max-outstanding", "7")
    ret = g.hvc(0, FuncId.APF_FEATURES).ret
    assert (ret[0], ret[1], ret[2]) == (SmcccRet.SUCCESS, APF_VERSION, 7) and APF_VERSION == 1
    assert ret[3] == ApfFlags.ENABLED | ApfFlags.SEND_ALWAYS | ApfFlags.DELIVERY_AS_INT
    assert ret[3] == APF_FLAGS_MASK & ~APF_RESERVED_FLAGS
    assert g.hvc(0, 0xC600FFFF).ret[0] == SmcccRet.NOT_SUPPORTED


def test_teardown_with_faults_in_flight_then_a_new_guest(host):
    """The guest powers off with swap-ins in flight: the host finishes or cancels the I/O, forgets
    the guest's memory, and welcomes the next guest with empty stage 2."""
    h = host(*BASE, "--swap-latency", "200ms", "--io-depth", "2", "--page-cluster", "0")
    g = RawGuest(h.info, nr_vcpus=2)
    try:
        g.hello()
        g.fill(range(64))
        g.wait_reclaim_done()
        g.enable(0)
        for p in _swapped(g, 5):
            assert isinstance(g.trap(0, p), InjectExc)
        assert g.hvc(0, FuncId.PSCI_SYSTEM_OFF).ret[0] == SmcccRet.SUCCESS
    finally:
        g.close()
    g2 = RawGuest(h.info, name="second")
    try:
        assert g2.hello().KIND == Kind.WELCOME
        assert not any(g2.stage2.valid)
        assert g2.control.read(0, "ready_token") == 0 and g2.control.read(0, "enabled") == 0
        stats = g2.request(g2.ctl, Stats(0)).stats
        assert stats["memory"]["resident_pages"] == 0 and stats["apf"]["outstanding"] == [0, 0]
        assert stats["swap"]["file_bytes"] == 0
        assert g2.trap(0, 3).KIND == Kind.RESUME
    finally:
        g2.close()
    assert h.stop() == 0
