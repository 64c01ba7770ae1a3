"""The host's explicit refusals on the wire (SPEC §4.1, §4.4, §7): each valid but unacceptable
frame gets an ERROR with its code, the frame's seq and a reason a user can act on; it is counted in
STATS `bad_frames`, and the host keeps serving."""
import pytest

from protocol import ErrorCode, decode, encode
from protocol.messages import (Error, Hello, HvcRet, InjectExc, InjectIrq, Irq, Kind, Resume, Stats,
                               StatsReply, Tlbi, TlbiAck, Vector, Welcome)
from protocol.hypercalls import DEFAULT_PAGE_READY_PPI, ApfFlags, FuncId
from protocol.messages import PAGE_SIZE, Access, Ctx, Hvc, Trap
from shared.layout import block_offset
from tests.helpers import RECV_BOUND_S, RawGuest, apf, wait_until

SMALL = ["--guest-mem", "1MiB", "--host-mem", "256KiB"]


def _refused(reply, code: ErrorCode, seq: int) -> str:
    """Check the reply is an ERROR with `code` echoing `seq`; return its reason."""
    assert isinstance(reply, Error), reply
    assert (ErrorCode(reply.code), reply.seq) == (code, seq)
    return reply.reason


def test_hello_for_more_vcpus_than_the_host_has_is_out_of_range(host):
    """HELLO asking for 3 vCPUs from a 2-vCPU host: ERROR OUT_OF_RANGE naming both counts; no
    session is made, so a guest that asks for 2 is welcomed next."""
    h = host(*SMALL, "--vcpus", "2")
    big = RawGuest(h.info, nr_vcpus=3, name="big")
    try:
        reason = _refused(big.hello(), ErrorCode.OUT_OF_RANGE, big.seq)
        assert reason == "guest wants 3 vCPUs; this host has 2"
        stats = big.stats()
        assert stats["bad_frames"] == {"out_of_range": 1} and not stats["session"]["attached"]
    finally:
        big.close()
    fits = RawGuest(h.info, nr_vcpus=2, name="fits")
    try:
        assert isinstance(fits.hello(), Welcome)
    finally:
        fits.close()


def test_hello_not_from_a_ctl_id_is_not_allowed(host):
    """HELLO sent from a `NAME/vcpu0` socket: ERROR NOT_ALLOWED; the same guest's ctl socket is
    then welcomed."""
    h = host(*SMALL)
    g = RawGuest(h.info, name="g")
    try:
        reply = g.request(g.vcpu_socks[0], Hello(0, 1, 1234, "g"))
        assert _refused(reply, ErrorCode.NOT_ALLOWED, g.seq) == "HELLO must come from the guest's ctl socket"
        assert not g.stats()["session"]["attached"]
        assert isinstance(g.hello(), Welcome)
        assert g.stats()["bad_frames"] == {"not_allowed": 1}
    finally:
        g.close()


def test_tlbi_ack_of_a_batch_not_waiting_is_not_allowed(host):
    """A TLBI_ACK of a batch never sent, and a second TLBI_ACK of a batch already acknowledged,
    each get ERROR NOT_ALLOWED naming the batch; the first, valid, ack gets no answer."""
    h = host(*SMALL)
    g = RawGuest(h.info, ack_tlbi=False)
    try:
        assert isinstance(g.hello(), Welcome)
        never = _refused(g.request(g.ctl, TlbiAck(0, 77)), ErrorCode.NOT_ALLOWED, g.seq)
        assert never == "no TLBI batch 77 is waiting for an ack"
        for gfn in range(64):                      # first-touch writes past the watermark: reclaim starts
            g.send_trap(0, gfn)
        tlbi = g.pump_until(lambda: g.tlbis, "a TLBI")[0]
        g.ctl.send(encode(TlbiAck(tlbi.seq, tlbi.batch)))      # valid: no answer
        g.seq += 1
        g.ctl.send(encode(TlbiAck(g.seq, tlbi.batch)))         # same socket: handled after the first
        answers = []
        while not answers or answers[-1].seq != g.seq:
            answers.append(g.recv_any(g.ctl))
        errors = [a for a in answers if isinstance(a, Error)]
        assert len(errors) == 1, errors                        # none for the valid ack
        again = _refused(errors[0], ErrorCode.NOT_ALLOWED, g.seq)
        assert again == f"no TLBI batch {tlbi.batch} is waiting for an ack"
        assert g.stats()["bad_frames"] == {"not_allowed": 2}
    finally:
        g.close()


H2G = [Welcome(41, {"kind": "x"}), Resume(41, 0), InjectExc(41, 0, Vector.PAGE_NOT_PRESENT, 5),
       InjectIrq(41, 0, Irq.PAGE_READY), HvcRet(41, 0, (0, 0, 0, 0)), Tlbi(41, 1, 1),
       StatsReply(41, {}), Error(41, 1, "x")]


@pytest.mark.parametrize("msg", H2G, ids=[m.KIND.name for m in H2G])
def test_a_host_to_guest_kind_sent_to_the_host_is_not_allowed(host, msg):
    """Every h→g kind, well formed, sent to the host by an attached guest: ERROR NOT_ALLOWED with
    its seq, naming the kind; the guest's session goes on."""
    assert msg.KIND >= Kind.WELCOME
    h = host(*SMALL)
    g = RawGuest(h.info)
    try:
        assert isinstance(g.hello(), Welcome)
        g.vcpu_socks[0].send(encode(msg))
        reason = _refused(g.wait_reply(g.vcpu_socks[0], 41), ErrorCode.NOT_ALLOWED, 41)
        assert reason == f"{msg.KIND.name} is a host-to-guest message"
        assert g.stats()["session"]["attached"] and g.trap(0, 1).KIND == Kind.RESUME
    finally:
        g.close()


def test_a_multi_part_frame_is_malformed(host):
    """A message of two ZeroMQ parts: ERROR MALFORMED with seq 0 (the host does not decode either
    part), saying how many parts came; the next single-part STATS is answered."""
    h = host(*SMALL)
    g = RawGuest(h.info)
    try:
        g.ctl.send_multipart([encode(Stats(9)), encode(Stats(10))])
        reason = _refused(g.recv_any(g.ctl), ErrorCode.MALFORMED, 0)
        assert reason == "expected one payload frame, got 2"
        assert g.stats()["bad_frames"] == {"malformed": 1}
    finally:
        g.close()


def test_a_peer_named_like_the_guest_but_not_one_of_its_sockets_is_not_the_guest(host):
    """Guest `g` attached with one vCPU: a peer whose identity merely starts with `g/`
    (`g/intruder`, `g/vcpu1` past its vCPUs) is not taken for it: its TRAP gets ERROR NOT_ALLOWED,
    counted, and the host keeps serving the guest."""
    h = host(*SMALL)
    g = RawGuest(h.info, name="g")
    try:
        assert isinstance(g.hello(), Welcome)
        for role in ("intruder", "vcpu1"):
            other = g._socket(role)
            try:
                other.send(encode(Trap(7, 0, 0, Access.WRITE, Ctx.USER)))
                assert other.poll(int(RECV_BOUND_S * 1000)), f"no reply to {role}'s TRAP"
                assert _refused(decode(other.recv()), ErrorCode.NOT_ALLOWED, 7) == \
                    "guest 'g' is attached; this peer is not part of it"
            finally:
                other.close(linger=0)
        assert g.stats()["bad_frames"] == {"not_allowed": 2}
        assert isinstance(g.trap(0, 0), Resume)
    finally:
        g.close()


def test_a_guest_name_with_a_slash_is_refused(host):
    """HELLO from guest `a/b` (identity `a/b/ctl`, which a guest `a` would take for its own):
    ERROR NOT_ALLOWED naming the '/', counted; no session is made."""
    h = host(*SMALL)
    g = RawGuest(h.info, name="a/b")
    try:
        reason = _refused(g.hello(), ErrorCode.NOT_ALLOWED, g.seq)
        assert reason == "guest name 'a/b' contains '/', which ends the name in a socket identity"
        stats = g.stats()
        assert stats["bad_frames"] == {"not_allowed": 1} and not stats["session"]["attached"]
    finally:
        g.close()


def test_a_trap_for_another_vcpu_cannot_take_its_interrupt_route(host):
    """Guest with two vCPUs: vCPU 1's socket sends a TRAP for vCPU 0: ERROR NOT_ALLOWED naming
    vCPU 0's own socket, counted, and vCPU 0's interrupts still go to vCPU 0's socket (its
    APF_ENABLE wake-all arrives there)."""
    h = host(*SMALL, "--vcpus", "2")
    g = RawGuest(h.info, nr_vcpus=2, name="g")
    try:
        assert isinstance(g.hello(), Welcome)
        assert isinstance(g.trap(0, 0), Resume)              # vCPU 0's route: its own socket
        reply = g.request(g.vcpu_socks[1], Trap(0, 0, PAGE_SIZE, Access.WRITE, Ctx.USER))
        assert _refused(reply, ErrorCode.NOT_ALLOWED, g.seq) == "TRAP for vCPU 0 must come from its own socket, g/vcpu0"
        assert g.stats()["bad_frames"] == {"not_allowed": 1}
        ipa = g.info["control_ipa"] + block_offset(0)
        g.vcpu_socks[0].send(encode(Hvc(g.seq + 1, 0, int(FuncId.APF_ENABLE),
                                        (ipa | int(ApfFlags.ENABLED | ApfFlags.DELIVERY_AS_INT), DEFAULT_PAGE_READY_PPI))))
        irqs: list = []
        wait_until(lambda: irqs.extend((m, s) for m, s in g._poll(10) if isinstance(m, InjectIrq)) or irqs,
                   "the wake-all's interrupt")
        assert [(m.vcpu, s is g.vcpu_socks[0]) for m, s in irqs] == [(0, True)] * len(irqs)
    finally:
        g.close()


def test_apf_guest_refuses_a_name_with_a_slash(tmp_path):
    """`apf guest --name a/b` stops before reaching any host: one error line, exit status 2."""
    proc = apf("guest", "--run-dir", str(tmp_path), "--name", "a/b", timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "apf guest: error: --name a/b: a guest name may not contain '/' (it ends the name in the guest's socket "
        "identities, NAME/ctl and NAME/vcpuN)"]
