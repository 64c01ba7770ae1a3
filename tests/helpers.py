"""Test helpers: start real daemons, run `apf`, and speak the wire protocol as a hand-driven guest.

Every wait here has a bound, so a broken daemon fails a test instead of hanging it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable, TypeVar

import zmq

from protocol import decode, encode
from protocol.hypercalls import DEFAULT_PAGE_READY_PPI, ApfFlags, FuncId
from protocol.messages import (HEARTBEAT_EXPIRY_MS, PAGE_SIZE, Access, Ctx, Error, Heartbeat, Hello, Hvc,
                               InjectIrq, Kind, Message, Stats, Tlbi, TlbiAck, Trap, Welcome)
from shared import rundir
from shared.files import ControlFile, Stage2
from shared.lifeline import GuestLifeline
from shared.layout import block_offset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APF = [sys.executable, "-m", "apf"]
RECV_BOUND_S = 10.0
# SPEC §10: a peer silent this long is gone (3 s). A death is noticed at once (the lifeline
# closes); a bound of this much still tells "at once" from "after the liveness expiry" on a
# loaded machine, whose scheduling stalls reached 1.3 s here.
LIVENESS_S = HEARTBEAT_EXPIRY_MS / 1000

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], what: str, bound_s: float = RECV_BOUND_S,
               every_s: float = 0.02, between: Callable[[], Any] | None = None) -> T:
    """Call `predicate` until it returns something true, and return that; fail the test naming
    `what` if `bound_s` seconds pass first. Between calls, `between()` runs (default: sleep
    `every_s`). The predicate is always called once more at the deadline, so a slow machine
    cannot make a state that was reached look missed."""
    deadline = time.monotonic() + bound_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not reached within {bound_s:g}s")
        if between is None:
            time.sleep(every_s)
        else:
            between()


def apf(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the `apf` command line to completion (bounded)."""
    return subprocess.run(APF + list(args), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          stdin=subprocess.DEVNULL)


def reap(proc: subprocess.Popen) -> None:
    """Kill `proc` if it still runs and collect it (bounded): a test's `finally`, so that a failed
    assertion leaves no process behind."""
    if proc.poll() is None:
        proc.kill()
        proc.communicate(timeout=10)


def refusal(proc: subprocess.CompletedProcess) -> str:
    """The one line a refusal prints: assert the command exited 2 with exactly one non-empty line
    on stderr and no traceback, and return that line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, f"exit status {proc.returncode}, not 2; stderr:\n{proc.stderr}"
    assert len(lines) == 1, f"a refusal is one line, got {len(lines)}:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def host_stats(run_dir: str) -> dict[str, Any] | None:
    """The STATS of the host serving `run_dir`, asked as `apf stats --json` does from outside the
    session; None if it did not answer (not up yet, or gone)."""
    proc = apf("stats", "--run-dir", run_dir, "--json", "--timeout", "2s", timeout=30)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def run_report(tmp_path, *args: str, timeout: float = 180) -> tuple[subprocess.CompletedProcess, dict]:
    """`apf run ... --report FILE`; return the process and the parsed report."""
    report = os.path.join(str(tmp_path), "report.json")
    proc = apf("run", "--report", report, *args, timeout=timeout)
    assert os.path.exists(report), f"no report; stderr:\n{proc.stderr}\nstdout:\n{proc.stdout}"
    with open(report, encoding="utf-8") as f:
        return proc, json.load(f)


class HostProcess:
    """A real `apf host` process on a run dir; stopped (and checked for leftovers) by `stop()`."""

    def __init__(self, run_dir: str, *args: str):
        self.run_dir = run_dir
        self.proc = subprocess.Popen(APF + ["host", "--run-dir", run_dir, *args], cwd=ROOT,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"host exited early: {self.proc.stderr.read()}")
            info = rundir.read_host_json(run_dir, missing_ok=True) if os.path.isdir(run_dir) else None
            if info and info.get("pid") == self.proc.pid:     # not one a killed host left
                self.info = info
                return
            time.sleep(0.02)
        self.stop()
        raise AssertionError("host did not become ready within 20s")

    def stop(self) -> int:
        if self.proc.stdout.closed:
            return self.proc.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
                raise AssertionError("host did not stop within 15s of SIGTERM")
        self.stderr = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode


class RawGuest:
    """A guest driven by hand, message by message, over a real socket and the real shared files.

    TLB invalidations from the host are acknowledged whenever the test waits for something, and
    page-ready interrupts are collected in `irqs`.
    """

    def __init__(self, info: dict[str, Any], nr_vcpus: int = 1, name: str = "raw", ack_tlbi: bool = True):
        self.info = info
        self.ack_tlbi = ack_tlbi
        self.tlbis: list[Tlbi] = []
        self.ctx = zmq.Context()
        self.name = name
        self.socks = {}
        self.ctl = self._socket("ctl")
        self.vcpu_socks = [self._socket(f"vcpu{i}") for i in range(nr_vcpus)]
        self.irqs: list[InjectIrq] = []
        self.seq = 0
        self.welcome: Welcome | None = None
        self.lifeline: GuestLifeline | None = None
        self.nr_vcpus = nr_vcpus
        self._last_heartbeat = 0.0

    def _socket(self, role: str) -> zmq.Socket:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.ROUTING_ID, f"{self.name}/{role}".encode())
        s.connect(self.info["endpoint"])
        return s

    def hello(self) -> Message:
        reply = self.request(self.ctl, Hello(0, self.nr_vcpus, os.getpid(), self.name))
        if isinstance(reply, Welcome):
            self.welcome = reply
            pages = reply.info["guest_pages"]
            files = reply.info
            if "lifeline" in reply.info:     # memory (memfd) comes over the lifeline socket
                self.lifeline = GuestLifeline(reply.info["lifeline"], self.name, reply.info["pid"], RECV_BOUND_S)
                files = self.lifeline.paths() or files
            self.stage2 = Stage2.attach(files["stage2"], pages)
            self.control = ControlFile.attach(files["control"], reply.info["vcpus"], pages)
            if self.lifeline is not None:
                self.lifeline.close_fds()
        return reply

    def request(self, sock: zmq.Socket, msg: Message) -> Message:
        self.seq += 1
        msg = type(msg)(self.seq, *msg.values()[1:])
        sock.send(encode(msg))
        return self.wait_reply(sock, self.seq)

    def send_raw(self, sock: zmq.Socket, frame: bytes) -> None:
        sock.send(frame)

    def wait_reply(self, sock: zmq.Socket, seq: int, bound_s: float = RECV_BOUND_S) -> Message:
        deadline = time.monotonic() + bound_s
        while time.monotonic() < deadline:
            for msg, from_sock in self._poll(100):
                if from_sock is sock and msg.seq == seq and msg.KIND != Kind.INJECT_IRQ:
                    return msg
        raise AssertionError(f"no reply to seq {seq} within {bound_s}s")

    def recv_any(self, sock: zmq.Socket, bound_s: float = RECV_BOUND_S) -> Message:
        deadline = time.monotonic() + bound_s
        while time.monotonic() < deadline:
            for msg, from_sock in self._poll(100):
                if from_sock is sock:
                    return msg
        raise AssertionError(f"nothing received within {bound_s}s")

    def pump(self, ms: int = 100) -> None:
        """Serve TLBIs and collect interrupts for `ms`."""
        deadline = time.monotonic() + ms / 1000
        while time.monotonic() < deadline:
            self._poll(10)

    def pump_until(self, predicate: Callable[[], T], what: str, bound_s: float = RECV_BOUND_S) -> T:
        """Serve TLBIs and collect interrupts until `predicate()` is true (returned), or fail the
        test naming `what` after `bound_s` seconds."""
        return wait_until(predicate, what, bound_s, between=lambda: self._poll(10))

    def stats(self) -> dict[str, Any]:
        """The host's STATS counters, asked on the ctl socket."""
        return self.request(self.ctl, Stats(0)).stats

    def wait_reclaim_done(self, bound_s: float = RECV_BOUND_S) -> dict[str, Any]:
        """Serve TLBIs until reclaim has stopped: no page is being written back and free pages are
        at or above the low watermark (so no new batch starts). Returns STATS' `memory` map."""
        def done() -> dict[str, Any] | None:
            m = self.stats()["memory"]
            return m if m["evicting_pages"] == 0 and m["free_pages"] >= m["watermarks"][0] else None
        return self.pump_until(done, "reclaim finished (evicting_pages == 0, free >= low watermark)",
                               bound_s)

    def _poll(self, ms: int) -> list[tuple[Message, zmq.Socket]]:
        now = time.monotonic()
        if self.welcome is not None and now - self._last_heartbeat > 0.2:
            self.ctl.send(encode(Heartbeat(0)))      # stay attached while the test thinks
            self._last_heartbeat = now
        poller = zmq.Poller()
        for s in [self.ctl, *self.vcpu_socks]:
            poller.register(s, zmq.POLLIN)
        out = []
        for s, _ in poller.poll(ms):
            msg = decode(s.recv())
            if isinstance(msg, Tlbi):
                self.tlbis.append(msg)
                if self.ack_tlbi:
                    s.send(encode(TlbiAck(msg.seq, msg.batch)))
                continue
            if isinstance(msg, InjectIrq):
                self.irqs.append(msg)
            out.append((msg, s))
        return out

    # -- conveniences ------------------------------------------------------------------------------
    def trap(self, vcpu: int, gfn: int, write: bool = True, ctx: Ctx = Ctx.USER) -> Message:
        return self.request(self.vcpu_socks[vcpu],
                            Trap(0, vcpu, gfn * PAGE_SIZE, Access.WRITE if write else Access.READ, ctx))

    def send_trap(self, vcpu: int, gfn: int, write: bool = True, ctx: Ctx = Ctx.USER) -> int:
        """Send a trap without waiting (a write, as `trap`, unless `write` is false: a first-touch
        read only maps the zero page and charges no memory); return its seq."""
        self.seq += 1
        self.vcpu_socks[vcpu].send(encode(Trap(self.seq, vcpu, gfn * PAGE_SIZE,
                                               Access.WRITE if write else Access.READ, ctx)))
        return self.seq

    def hvc(self, vcpu: int, func: FuncId, *args: int) -> Message:
        return self.request(self.vcpu_socks[vcpu], Hvc(0, vcpu, int(func), tuple(args)))

    def enable(self, vcpu: int, flags: ApfFlags = ApfFlags.ENABLED | ApfFlags.DELIVERY_AS_INT,
               take_wake_all: bool = True) -> Message:
        """APF_ENABLE; then, as a guest does, take the wake-all that enabling sends."""
        ipa = self.info["control_ipa"] + block_offset(vcpu)
        reply = self.hvc(vcpu, FuncId.APF_ENABLE, ipa | int(flags), DEFAULT_PAGE_READY_PPI)
        if take_wake_all and reply.ret[0] == 0:
            deadline = time.monotonic() + RECV_BOUND_S
            while not any(i.vcpu == vcpu for i in self.irqs) and time.monotonic() < deadline:
                self.pump(10)
            assert self.take_page_ready(vcpu) == 0xFFFFFFFF
            self.irqs = [i for i in self.irqs if i.vcpu != vcpu]
        return reply

    def take_page_ready(self, vcpu: int) -> int:
        """Do what the guest's page-ready handler does: take the slot (one atomic exchange with
        0), then ACK."""
        token = self.control.take(vcpu, "ready_token")
        self.hvc(vcpu, FuncId.APF_ACK)
        return token

    def fill(self, pages: range, vcpu: int = 0) -> None:
        """Fault in every page of `pages` (first touch), serving reclaim as it goes."""
        for gfn in pages:
            reply = self.trap(vcpu, gfn)
            assert reply.KIND == Kind.RESUME, reply

    def swapped_pages(self) -> list[int]:
        """Pages that were touched but are no longer mapped."""
        return [g for g in range(self.info["guest_pages"]) if not self.stage2.valid[g]]

    def close(self) -> None:
        for s in [self.ctl, *self.vcpu_socks]:
            s.close(linger=0)
        self.ctx.term()
        if self.lifeline is not None:
            self.lifeline.close()


def started_io(swap: dict[str, Any]) -> int:
    """Swap I/O an engine has taken (STATS `swap`; each one page): submitted, not queued (a
    session's end would cancel those), not completed."""
    return swap["io_in_flight"] - swap["io_queued"]


def attached_guest(host_info: dict[str, Any], nr_vcpus: int = 1, pages: int = 64) -> RawGuest:
    """A RawGuest attached (HELLO) to a running host, with pages 0..pages-1 touched and reclaim
    finished, so that the pages the host could not keep are really swapped out."""
    g = RawGuest(host_info, nr_vcpus=nr_vcpus)
    try:
        reply = g.hello()
        assert reply.KIND == Kind.WELCOME, reply
        g.fill(range(pages))
        g.wait_reclaim_done()
    except BaseException:
        g.close()
        raise
    return g
