"""A malicious host: the guest's own defences, as `test_fuzz.py` tests the host's.

`FakeHost` is a host written by hand in the test process: a real ZeroMQ ROUTER bound at the run
dir's endpoint, a real `host.json`, a real lifeline socket handing over real memfds (the default
memfd mode, as `apf host` does it), speaking the wire protocol through `protocol.codec`. It
answers what a guest needs to run (WELCOME, STATS, the hypercalls, and every TRAP by mapping the
page and RESUME) and, at the points a test picks, sends what no correct host sends. A real guest
daemon (`apf guest`) runs against it; the tests read its exit status, its report and its log.
"""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import time
from typing import Callable

import msgpack
import pytest
import zmq

from protocol import ErrorCode, ProtocolError, decode, encode
from protocol.hypercalls import FuncId, SmcccRet
from protocol.messages import (HEARTBEAT_INTERVAL_MS, MAX_FRAME_BYTES, PAGE_SIZE, PROTOCOL_VERSION, Error,
                               Heartbeat, HvcRet, InjectIrq, Irq, Kind, Limits, Message, Resume, StatsReply,
                               Tlbi, Welcome)
from shared import lifeline, rundir
from shared.files import ControlFile, GuestRam, Stage2
from shared.layout import WAKE_ALL_TOKEN, Perm
from tests.helpers import APF, ROOT

GUEST_PAGES = 64
SERVE_BOUND_S = 30.0
FEATURES = (0, 1, 64, 0xB)      # SPEC §5: APF_VERSION 1, 64 outstanding, flags ENABLED|SEND_ALWAYS|AS_INT


class FakeHost:
    """A hand-written host for one guest (see the module docstring). `on_trap(host, route, msg)`
    and `on_hvc(host, route, msg)` are the attack points: they run before the normal answer and
    return True when they answered themselves. `welcome` edits the WELCOME info map (or returns
    raw bytes to send instead)."""

    def __init__(self, run_dir: str, protocol_version: object = PROTOCOL_VERSION, vcpus: int = 1,
                 on_trap: Callable | None = None, on_hvc: Callable | None = None,
                 welcome: Callable[[dict], dict | bytes] | None = None):
        rundir.prepare(run_dir)
        self.run_dir, self.vcpus = run_dir, vcpus
        self.on_trap, self.on_hvc, self.welcome = on_trap, on_hvc, welcome
        self.limits = Limits(vcpus, GUEST_PAGES * PAGE_SIZE)
        self.zctx = zmq.Context()
        self.router = self.zctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        self.router.bind(rundir.endpoint(run_dir))
        self.listener = lifeline.listen(run_dir)
        self.conns: list[socket.socket] = []
        self.fds: dict[str, int] = {}
        paths = {}
        for name in ("ram", "stage2", "control"):
            self.fds[name], paths[name] = lifeline.memfd(f"apf-fake-{name}")
        self.ram = GuestRam.create(paths["ram"], GUEST_PAGES)
        self.stage2 = Stage2.create(paths["stage2"], GUEST_PAGES)
        self.control = ControlFile.create(paths["control"], vcpus, GUEST_PAGES)
        rundir.write_host_json(run_dir, {
            "kind": "apf-emu-host", "endpoint": rundir.endpoint(run_dir), "pid": os.getpid(),
            "pid_ns": lifeline.pid_namespace(), "protocol_version": protocol_version,
            "lifeline": lifeline.path(run_dir)})
        self.prefix: bytes | None = None      # b"NAME/" once HELLO came
        self.log: list[tuple[str, Message]] = []   # (role, message) of every frame the guest sent
        self.sent: list[tuple[str, str]] = []      # (role, what) of every attack frame sent
        self.traps = 0
        self.powered_off = False

    # -- sending ---------------------------------------------------------------------------------
    def route(self, role: str) -> bytes:
        return self.prefix + role.encode()

    def send(self, role: str, msg: Message | bytes, what: str = "") -> None:
        self.router.send_multipart([self.route(role), msg if isinstance(msg, bytes) else encode(msg)])
        if what:
            self.sent.append((role, what))

    # -- serving ---------------------------------------------------------------------------------
    def serve(self, guest: subprocess.Popen, bound_s: float = SERVE_BOUND_S) -> None:
        """Answer the guest until its process exits; fail the test if that takes over `bound_s`."""
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self.poller.register(self.listener, zmq.POLLIN)
        deadline = time.monotonic() + bound_s
        next_beat = 0.0
        while guest.poll() is None:
            assert time.monotonic() < deadline, f"guest still running after {bound_s:g}s"
            events = dict(self.poller.poll(50))
            if self.listener.fileno() in events:     # a Python socket comes back as its fd
                self._accept()
            for conn in [c for c in self.conns if c.fileno() in events]:
                self._lifeline_request(conn)
            while self.router.poll(0):
                route, frame = self.router.recv_multipart()
                self._on_frame(route, frame)
            if self.prefix is not None and time.monotonic() >= next_beat:
                next_beat = time.monotonic() + HEARTBEAT_INTERVAL_MS / 1000
                self.send("ctl", Heartbeat(0))

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self.conns.append(conn)
        self.poller.register(conn, zmq.POLLIN)

    def _lifeline_request(self, conn: socket.socket) -> None:
        """Hand the memfds over, as `apf host` does; a connection that closes unasked was the
        guest's liveness probe (lifeline.host_alive). An answered one stays open: the guest
        watches it for the host's death."""
        request = lifeline.read_line(conn)
        if request is None:
            if lifeline.closed(conn):
                self.poller.unregister(conn)
                self.conns.remove(conn)
                conn.close()
            return
        names = ["ram", "stage2", "control"]
        lifeline.send_line(conn, {"mode": "memfd", "files": names}, [self.fds[n] for n in names])

    def _on_frame(self, route: bytes, frame: bytes) -> None:
        role = route.rsplit(b"/", 1)[-1].decode()
        try:
            msg = decode(frame, self.limits)
        except ProtocolError as exc:
            raise AssertionError(f"the guest sent a bad frame on {role}: {exc}") from None
        self.log.append((role, msg))
        handler = getattr(self, f"_on_{msg.KIND.name.lower()}", None)
        if handler is not None:
            handler(route, role, msg)

    def _on_hello(self, route: bytes, role: str, msg) -> None:
        self.prefix = route[:-len(b"ctl")]
        info = {"guest_pages": GUEST_PAGES, "control_ipa": GUEST_PAGES * PAGE_SIZE, "vcpus": self.vcpus,
                "ram": "memfd:ram", "stage2": "memfd:stage2", "control": "memfd:control",
                "lifeline": lifeline.path(self.run_dir), "protocol_version": PROTOCOL_VERSION}
        answer = self.welcome(info) if self.welcome else info
        self.send("ctl", answer if isinstance(answer, bytes) else Welcome(msg.seq, answer))

    def _on_trap(self, route: bytes, role: str, msg) -> None:
        self.traps += 1
        if self.on_trap is not None and self.on_trap(self, role, msg):
            return
        self.stage2.perm[msg.ipa // PAGE_SIZE] = Perm.RW
        self.send(role, Resume(msg.seq, msg.vcpu))

    def _on_hvc(self, route: bytes, role: str, msg) -> None:
        if self.on_hvc is not None and self.on_hvc(self, role, msg):
            return
        ret = FEATURES if msg.func_id == FuncId.APF_FEATURES else (0, 0, 0, 0)
        self.send(role, HvcRet(msg.seq, msg.vcpu, ret))
        if msg.func_id == FuncId.PSCI_SYSTEM_OFF:
            self.powered_off = True

    def _on_stats(self, route: bytes, role: str, msg) -> None:
        self.send(role, StatsReply(msg.seq, {}))

    def hvcs(self, func: FuncId) -> int:
        """How many HVCs of `func` the guest sent."""
        return sum(1 for _, m in self.log if m.KIND == Kind.HVC and m.func_id == func)

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.listener.close()
        self.router.close(linger=0)
        self.zctx.term()
        for mapped in (self.ram, self.stage2, self.control):
            mapped.close()
        for fd in self.fds.values():
            os.close(fd)


def start_guest(run_dir: str, tmp_path, *args: str, vcpus: int = 1) -> tuple[subprocess.Popen, str, str]:
    """`apf guest` on the fake host's run dir; its log goes to a file (a pipe nobody reads while
    the fake host serves could fill and block the guest). Returns the process, the report path
    and the log path."""
    report, log = str(tmp_path / "report.json"), str(tmp_path / "guest.log")
    with open(log, "w") as err:
        proc = subprocess.Popen(APF + ["guest", "--run-dir", run_dir, "--vcpus", str(vcpus), "--report", report,
                                       "--stuck-timeout", "20s", *args],
                                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    return proc, report, log


@pytest.fixture
def fake_host(run_dir):
    """fake_host(**kwargs) -> a FakeHost on `run_dir`; closed at teardown."""
    made: list[FakeHost] = []

    def make(**kwargs) -> FakeHost:
        h = FakeHost(run_dir, **kwargs)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def run_against(host: FakeHost, run_dir: str, tmp_path, *args: str) -> tuple[int, dict | None, str]:
    """Run a guest against `host` to its end; its exit status, report (None if it wrote none) and log."""
    proc, report, log = start_guest(run_dir, tmp_path, *args, vcpus=host.vcpus)
    try:
        host.serve(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    with open(log) as f:
        text = f.read()
    if not os.path.exists(report):
        return proc.returncode, None, text
    with open(report) as f:
        return proc.returncode, json.load(f), text


WORKLOAD = ("--tasks", "2", "--accesses", "300")


def test_fake_host_serves_a_clean_run(fake_host, run_dir, tmp_path):
    """The baseline the attacks below depart from: against the fake host as it is, an async guest
    enables APF, runs, verifies every page it wrote, powers off, and counts no bad frame."""
    h = fake_host()
    rc, report, log = run_against(h, run_dir, tmp_path, "--mode", "async", *WORKLOAD)
    assert rc == 0, log
    assert report["ok"] and report["pages_corrupt"] == 0
    assert report["pages_verified"] == report["pages_written"] > 0
    assert h.hvcs(FuncId.APF_ENABLE) == 1 and h.powered_off
    assert report["errors"]["guest_rejected_frames"] == report["errors"]["unexpected_messages"] == 0


# -- malformed and unexpected frames ---------------------------------------------------------------------

H2G = [Kind.WELCOME, Kind.RESUME, Kind.INJECT_EXC, Kind.INJECT_IRQ, Kind.HVC_RET, Kind.TLBI,
       Kind.STATS_REPLY, Kind.ERROR]


def _value(rng: random.Random):
    return rng.choice([0, 1, -1, 2, 30, rng.randrange(1 << 64), 1 << 63, 0xFFFFFFFF, 3.5, "x" * rng.randrange(300),
                       b"\x00" * rng.randrange(40), None, True, [], [1, 2], [0, 0, 0, 0], {"a": 1}, {1: 2}])


def bad_frame(rng: random.Random, limits: Limits) -> tuple[bytes, ErrorCode]:
    """A random or mutated host-to-guest frame that `decode` rejects, with the code it is rejected
    for. Frames that happen to decode are drawn again: a valid ERROR VERSION, say, must end the run."""
    while True:
        style = rng.random()
        if style < 0.15:
            frame = rng.randbytes(rng.randrange(0, 64))
        else:
            kind = rng.choice(H2G + [0, 1, 2, 15, 24, 99, -1])
            fields = [_value(rng) for _ in range(rng.randrange(0, 6))]
            version = PROTOCOL_VERSION if style < 0.9 else rng.choice([0, 2, 255, "1"])
            frame = msgpack.packb([version, int(kind), rng.randrange(1 << 32), *fields], use_bin_type=True)
            if style > 0.75:                        # bit flips and truncation
                data = bytearray(frame)
                for _ in range(rng.randrange(1, 4)):
                    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
                frame = bytes(data[:rng.randrange(1, len(data) + 1)])
        try:
            decode(frame, limits)
        except ProtocolError as exc:
            return frame, exc.code


FUZZ_TRAPS, FUZZ_PER_TRAP = 20, 60


def test_fuzzed_frames_are_counted_as_rejected_and_the_guest_keeps_serving(fake_host, run_dir, tmp_path):
    """Before answering each of the first FUZZ_TRAPS traps, the host sends the waiting vCPU
    FUZZ_PER_TRAP random and mutated frames that fail validation (every code of SPEC §2 among
    them), and the ctl socket a few: the guest counts each one on a vCPU as rejected (exactly:
    the vCPU reads them all before its RESUME), logs those on ctl, and still verifies every page."""
    rng = random.Random(20)
    codes: set[ErrorCode] = set()

    def attack(host: FakeHost, role: str, msg) -> bool:
        if host.traps <= FUZZ_TRAPS:
            for _ in range(FUZZ_PER_TRAP):
                frame, code = bad_frame(rng, host.limits)
                codes.add(code)
                host.send(role, frame, "fuzz")
            frame, _ = bad_frame(rng, host.limits)
            host.send("ctl", frame, "fuzz")
        return False

    h = fake_host(on_trap=attack)
    rc, report, log = run_against(h, run_dir, tmp_path, "--mode", "async", *WORKLOAD)
    assert rc == 0, log
    assert codes >= {ErrorCode.MALFORMED, ErrorCode.VERSION, ErrorCode.UNKNOWN_KIND, ErrorCode.BAD_FIELD,
                     ErrorCode.OUT_OF_RANGE}
    assert report["errors"]["guest_rejected_frames"] == FUZZ_TRAPS * FUZZ_PER_TRAP
    assert report["errors"]["unexpected_messages"] == 0
    assert "vCPU 0 rejected a frame from the host" in log
    assert "apf.guest WARNING rejected a frame from the host" in log      # the ctl socket's
    assert report["ok"] and report["pages_corrupt"] == 0
    assert report["pages_verified"] == report["pages_written"] > 0
    assert h.powered_off


def test_valid_messages_not_awaited_are_counted_unexpected_and_ignored(fake_host, run_dir, tmp_path):
    """Valid frames a vCPU did not ask for (SPEC §3: a reply with another seq, a host-to-guest
    kind that is no reply, an interrupt for another vCPU, a non-VERSION ERROR) are counted in
    `unexpected_messages` one by one and change nothing: the awaited RESUME still resumes."""
    def attack(host: FakeHost, role: str, msg) -> bool:
        if host.traps == 1:
            other = (msg.seq + 7) & 0xFFFFFFFF or 1
            for bad in (Resume(other, msg.vcpu), HvcRet(other, msg.vcpu, (0, 0, 0, 0)), Tlbi(5, 5, 1),
                        StatsReply(other, {}), InjectIrq(1, 1, Irq.PAGE_READY),
                        Error(other, ErrorCode.NOT_ALLOWED, "not for you")):
                host.send(role, bad, "unexpected")
        return False

    h = fake_host(vcpus=2, on_trap=attack)
    rc, report, log = run_against(h, run_dir, tmp_path, "--mode", "sync", *WORKLOAD)
    assert rc == 0, log
    assert report["errors"]["unexpected_messages"] == 6
    assert report["errors"]["guest_rejected_frames"] == 0
    assert report["ok"] and report["pages_verified"] == report["pages_written"] > 0


# -- interrupts ------------------------------------------------------------------------------------------

def test_spurious_page_ready_is_counted_and_not_acked(fake_host, run_dir, tmp_path):
    """An INJECT_IRQ(PAGE_READY) with the vCPU's `ready_token` slot empty is counted in
    `spurious_irqs` and answered with no APF_ACK (SPEC §9: only a taken token is acknowledged);
    one with a token in the slot (here the wake-all) is taken and acknowledged once."""
    def attack(host: FakeHost, role: str, msg) -> bool:
        if host.traps == 1:
            host.send(role, InjectIrq(1, 0, Irq.PAGE_READY), "spurious")
        elif host.traps == 10:
            assert host.control.publish(0, "ready_token", WAKE_ALL_TOKEN)
            host.send(role, InjectIrq(2, 0, Irq.PAGE_READY), "wake-all")
        return False

    h = fake_host(on_trap=attack)
    rc, report, log = run_against(h, run_dir, tmp_path, "--mode", "async", *WORKLOAD)
    assert rc == 0, log
    apf_figures = report["phases"]["workload"]["apf"]
    assert apf_figures["spurious_irqs"] == 1
    assert apf_figures["wake_all"] == 1
    assert h.hvcs(FuncId.APF_ACK) == 1
    assert h.control.read(0, "ready_token") == 0
    first_ack = next(i for i, (_, m) in enumerate(h.log) if m.KIND == Kind.HVC and m.func_id == FuncId.APF_ACK)
    traps_before_ack = sum(1 for _, m in h.log[:first_ack] if m.KIND == Kind.TRAP)
    assert traps_before_ack >= 10             # the ACK is the wake-all's, not the spurious one's


# -- errors that end the run -----------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["ctl", "vcpu0"])
def test_error_version_ends_the_run(fake_host, run_dir, tmp_path, role):
    """An ERROR VERSION, unsolicited, on the ctl socket or a vCPU's (SPEC §2: the guest MUST end
    the run): the guest fails with the host's reason and exits 1."""
    def attack(host: FakeHost, _role: str, msg) -> bool:
        if host.traps == 3:
            host.send(role, Error(0, ErrorCode.VERSION, "this host speaks APF/9"), "version")
        return False

    h = fake_host(on_trap=attack)
    rc, report, log = run_against(h, run_dir, tmp_path, "--mode", "async", *WORKLOAD)
    assert rc == 1, log
    prefix = "vCPU 0: " if role == "vcpu0" else ""
    assert report["error"] == f"{prefix}host refused our protocol: this host speaks APF/9"
    assert not report["ok"] and report["partial"]


@pytest.mark.parametrize("func", [FuncId.APF_FEATURES, FuncId.APF_ENABLE, FuncId.APF_ACK,
                                  FuncId.PSCI_SYSTEM_OFF], ids=lambda f: f.name)
def test_error_reply_to_a_hypercall_ends_the_run(fake_host, run_dir, tmp_path, func):
    """An ERROR in reply to an HVC the guest waits for (APF_FEATURES, APF_ENABLE), to one it
    posted (APF_ACK, checked when the answer arrives) or to the power-off fails the run naming
    the hypercall and the host's reason; the guest exits 1."""
    def attack_trap(host: FakeHost, role: str, msg) -> bool:
        if func == FuncId.APF_ACK and host.traps == 2:     # something to acknowledge
            assert host.control.publish(0, "ready_token", WAKE_ALL_TOKEN)
            host.send(role, InjectIrq(1, 0, Irq.PAGE_READY))
        return False

    def attack_hvc(host: FakeHost, role: str, msg) -> bool:
        if msg.func_id != func:
            return False
        host.send(role, Error(msg.seq, ErrorCode.NOT_ALLOWED, "refused on purpose"), "error")
        return True

    h = fake_host(on_trap=attack_trap, on_hvc=attack_hvc)
    rc, report, log = run_against(h, run_dir, tmp_path, "--mode", "async", *WORKLOAD)
    assert rc == 1, log
    assert [w for _, w in h.sent] == ["error"]
    on_vcpu = "" if func == FuncId.PSCI_SYSTEM_OFF else "vCPU 0: "
    assert report["error"] == f"{on_vcpu}host refused hypercall {func.name}: refused on purpose"
    assert not report["ok"]


@pytest.mark.parametrize("func, ret", [
    (FuncId.APF_FEATURES, (SmcccRet.NOT_SUPPORTED, 0, 0, 0)),
    (FuncId.APF_FEATURES, (1, 1, 64, 0xB)),                       # any non-zero x0, the rest as usual
    (FuncId.APF_ENABLE, (SmcccRet.INVALID_PARAMETER, 0, 0, 0)),
    (FuncId.APF_ENABLE, (SmcccRet.NOT_REQUIRED, 0, 0, 0)),
], ids=["features-not-supported", "features-1", "enable-invalid", "enable-not-required"])
def test_a_non_zero_apf_features_or_enable_return_ends_the_run(fake_host, run_dir, tmp_path, func, ret):
    """SPEC §5: a guest in async mode MUST fail if APF_FEATURES or APF_ENABLE returns non-zero in
    x0. The guest exits 1 with an error naming the call, and no TRAP goes out after the answer."""
    def attack_hvc(host: FakeHost, role: str, msg) -> bool:
        if msg.func_id != func:
            return False
        host.send(role, HvcRet(msg.seq, msg.vcpu, ret), "refusal")
        return True

    h = fake_host(on_hvc=attack_hvc)
    rc, report, log = run_against(h, run_dir, tmp_path, "--mode", "async", *WORKLOAD)
    assert rc == 1, log
    assert [w for _, w in h.sent] == ["refusal"]
    expected = ("vCPU 0: host does not offer asynchronous page faults (APF_FEATURES failed)"
                if func == FuncId.APF_FEATURES else f"vCPU 0: host refused APF_ENABLE for vCPU 0 (SMCCC return {ret[0]})")
    assert report["error"] == expected and not report["ok"]
    answered = next(i for i, (_, m) in enumerate(h.log) if m.KIND == Kind.HVC and m.func_id == func)
    assert all(m.KIND != Kind.TRAP for _, m in h.log[answered:])
    assert h.hvcs(FuncId.APF_ENABLE) == (func == FuncId.APF_ENABLE)


@pytest.mark.parametrize("code", [ErrorCode.NOT_ALLOWED, ErrorCode.OUT_OF_RANGE, ErrorCode.BAD_FIELD,
                                  ErrorCode.INTERNAL], ids=lambda c: c.name)
def test_an_error_reply_to_a_trap_ends_the_run(fake_host, run_dir, tmp_path, code):
    """SPEC §7: an ERROR answering a TRAP, other than MEMORY_FAILURE, is fatal to the run: the
    guest exits 1 naming the trapped address and the host's reason, sends no further TRAP, and
    its report is partial and not ok."""
    refused: list[int] = []

    def attack(host: FakeHost, role: str, msg) -> bool:
        if host.traps == 5:
            refused.append(msg.ipa)
            host.send(role, Error(msg.seq, code, "refused on purpose"), "error")
            return True
        return False

    h = fake_host(on_trap=attack)
    rc, report, log = run_against(h, run_dir, tmp_path, "--mode", "async", *WORKLOAD)
    assert rc == 1, log
    assert report["error"] == f"vCPU 0: host refused a trap at IPA {refused[0]:#x}: refused on purpose"
    assert not report["ok"] and report["partial"]
    assert h.traps == 5


# -- refusals at attach ----------------------------------------------------------------------------------

def _without(key: str):
    return lambda info: {k: v for k, v in info.items() if k != key}


@pytest.mark.parametrize("welcome,message", [
    (_without("guest_pages"), "host's WELCOME lacks a valid field: 'guest_pages'"),
    (_without("control_ipa"), "host's WELCOME lacks a valid field: 'control_ipa'"),
    (_without("vcpus"), "host's WELCOME lacks a valid field: 'vcpus'"),
    (lambda info: {**info, "guest_pages": None}, "host's WELCOME lacks a valid field: int() argument"),
    (lambda info: {**info, "vcpus": 3}, "is for 1 vCPUs / 64 pages, expected 3 / 64"),
    (lambda info: msgpack.packb([PROTOCOL_VERSION, int(Kind.WELCOME), 1], use_bin_type=True),
     "apf guest: error: malformed: WELCOME has 2 fields after the kind, got 1"),
], ids=["no-guest_pages", "no-control_ipa", "no-vcpus", "guest_pages-None", "vcpus-not-the-files",
        "no-info"])
def test_welcome_with_missing_or_wrong_fields_is_refused(fake_host, run_dir, tmp_path, welcome, message):
    """A WELCOME that lacks a field the guest needs, holds one of the wrong type, contradicts the
    shared files, or has no info map at all is refused at attach: one line naming it, exit 2, no
    vCPU starts (no TRAP, no HVC reaches the host)."""
    h = fake_host(welcome=welcome)
    rc, report, log = run_against(h, run_dir, tmp_path, "--mode", "async", *WORKLOAD)
    assert rc == 2, log
    assert report is None
    errors = [line for line in log.splitlines() if line.startswith("apf guest: error:")]
    assert len(errors) == 1 and message in errors[0], log
    assert [m.KIND for _, m in h.log] == [Kind.HELLO]


@pytest.mark.parametrize("version", [PROTOCOL_VERSION + 1, None])
def test_host_json_of_another_protocol_version_is_refused(fake_host, run_dir, tmp_path, version):
    """A host.json whose `protocol_version` is not the guest's (SPEC §1: MUST refuse to connect)
    is refused before any connection: one line naming both versions, exit 2, no HELLO sent and
    no lifeline connection made."""
    h = fake_host(protocol_version=version)
    proc, report, log = start_guest(run_dir, tmp_path, "--mode", "async", *WORKLOAD)
    try:
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    with open(log) as f:
        text = f.read()
    assert proc.returncode == 2, text
    assert f"apf guest: error: host in {run_dir} speaks protocol version {version}; this guest speaks " \
           f"{PROTOCOL_VERSION}" in text
    assert not os.path.exists(report)
    assert not h.router.poll(0)
    with pytest.raises(BlockingIOError):
        h.listener.accept()                   # a connection, even closed, would wait in the backlog
