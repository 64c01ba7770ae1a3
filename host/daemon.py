"""The host daemon: one poll loop owning the ROUTER socket and the I/O completion eventfd.

Everything that changes page or APF state runs on this loop; the I/O workers only move bytes
and report back. Handlers are a table by message kind; a valid message that is not allowed in
the current state gets an explicit ERROR reply, never silence. The rooms it dispatches to: the
session (HELLO, liveness, teardown) here; stage-2 faults in host/faultpath.py; hypercalls in
host/hypercalls.py; asynchronous page faults in host/apf.py; memory and reclaim in
host/memory.py; swap I/O in host/swapio/; the STATS schema in host/stats.py.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import secrets
import signal
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import zmq

from host.apf import AsyncPf
from host.config import HostConfig
from host.faultpath import FaultPath
from host.metrics import HostMetrics
from host.hypercalls import Hypercalls
from host.memory import MemoryManager
from host.policy import Policy
from host.stats import (ApfFigures, FaultFigures, HostStats, MemoryFigures, ReadaheadFigures, SessionFigures,
                        SwapFigures)
from host.swapio.choice import open_io_engine
from host.swapio.backends import backend_of, open_swap
from host.swapio.engine import Completion, IoOp
from host.swapio.slots import SlotAllocator
from protocol import ErrorCode, ProtocolError, decode, encode
from protocol.errors import EXIT_GUEST_DROPPED, ConfigError
from protocol.hypercalls import FuncId, SmcccRet
from protocol.messages import (HEARTBEAT_EXPIRY_MS, HEARTBEAT_INTERVAL_MS, MAX_FRAME_BYTES, PAGE_SIZE,
                               PROTOCOL_VERSION, TLBI_ACK_TIMEOUT_MS, Error, Heartbeat, Hello, Hvc,
                               HvcRet, InjectIrq, Irq, Kind, Limits, Message, Stats, StatsReply, Tlbi,
                               TlbiAck, Trap, Welcome)
from shared import lifeline, rundir
from shared.chaos import Chaos
from shared.dilation import AUTO, decode_factor, dilate_ns, encode_factor
from shared.files import ControlFile, GuestRam, SharedPaths, Stage2, allocated_bytes
from shared.layout import BLOCK_SIZE
from shared.metrics import process_resources
from shared.timeline import IO_TRACK_BASE, Tracer

log = logging.getLogger("apf.host")

POLL_INTERVAL_MS = 100        # bound on how long a stop request waits for the loop to notice
IO_TRACK = IO_TRACK_BASE      # trace track of the swap device
# Plain ints: pyzmq's flag enums cost about a µs per call in arithmetic, on every message.
ZMQ_EVENTS, ZMQ_POLLIN, ZMQ_RCVMORE = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.RCVMORE)
ZMQ_NOBLOCK, ZMQ_SNDMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)
TICK_NS = 1_000_000           # liveness and TLBI deadlines are checked at most this often
TRAP_DELAY_SLEEP_NS = 2_000_000   # a --trap-delay sleeps all but this much of itself, then spins
COMPLETION_EWMA = 0.1         # weight of a new sample of the completion path (dilation)


@dataclass
class Session:
    """The attached guest."""
    name: str
    pid: int
    nr_vcpus: int
    prefix: bytes                       # NAME/: every identity of this guest starts with it
    ctl_route: bytes
    limits: Limits
    routes: frozenset[bytes] = frozenset()   # its identities: NAME/ctl and NAME/vcpuN, N < nr_vcpus
    started_ns: int = field(default_factory=time.monotonic_ns)
    last_seen_ns: int = field(default_factory=time.monotonic_ns)   # anything from the guest counts
    vcpu_routes: dict[int, bytes] = field(default_factory=dict)
    lifeline: socket.socket | None = None   # closed by the kernel when the guest process dies


class Host:
    def __init__(self, cfg: HostConfig):
        self.cfg = cfg.validate()
        self.chaos = Chaos.from_specs(cfg.inject, "host")
        self.tracer = Tracer("apf host", enabled=bool(cfg.trace))
        for v in range(cfg.vcpus):
            self.tracer.name_track(v, f"vCPU {v} (host)")
        self.tracer.name_track(IO_TRACK, "swap I/O")
        self.created_dir = rundir.prepare(cfg.run_dir)
        self.lock = rundir.HostLock(cfg.run_dir)
        self._undo: list[Callable[[], None]] = []   # run in reverse on close or failed start
        if self.created_dir:
            self._undo.append(lambda: _rmdir_quiet(cfg.run_dir))
        self._undo.append(self.lock.release)
        try:
            self._create()
        except BaseException:
            self._run_undo()
            raise
        self.stopping = False
        self.muted = False                      # injected: the host stops answering
        self.timers: list[tuple[int, int, Callable[[], None]]] = []   # heap of (due_ns, n, action)
        self._timer_order = itertools.count()
        self._next_heartbeat_ns = 0
        self._tick_due_ns = 0
        self.session: Session | None = None
        self.sessions_served = 0
        self._reads_requested_ns: dict[int, int] = {}   # gfn -> when its swap-in was requested
        self.last_end_reason = ""
        self.dropped_guest = False   # some session ended with its guest taken for lost
        self.bad_frames: Counter = Counter()
        self.send_failures = 0
        self.io_inflight = 0
        self.stale_io = False   # I/O of an ended session still runs: no new guest until it ends
        self._irq_seq = 0
        self.handlers: dict[Kind, Callable[[bytes, Any], None]] = {
            Kind.HELLO: self.on_hello, Kind.TRAP: self.on_trap, Kind.HVC: self.on_hvc,
            Kind.TLBI_ACK: self.on_tlbi_ack, Kind.STATS: self.on_stats,
            Kind.HEARTBEAT: lambda route, msg: None,
            Kind.WFI: lambda route, msg: self.policy.vcpu_idle(msg.vcpu, self.apf.outstanding()[msg.vcpu]),
        }

    # -- creation and teardown -------------------------------------------------------------------
    def _create_shared_files(self) -> None:
        """Guest RAM, stage 2 and control blocks: anonymous memfds (nothing to leave behind when
        the host dies), or, in path mode, files in --shm-dir after removing dead hosts' files."""
        cfg = self.cfg
        self.memfds: dict[str, int] = {}
        if cfg.shared_memory == "memfd":
            paths = {}
            for name in ("ram", "stage2", "control"):
                fd, paths[name] = lifeline.memfd(f"apf-{name}")
                self.memfds[name] = fd
                self._undo.append(lambda fd=fd: os.close(fd))
            self.paths = SharedPaths(**paths)
            unlink = lambda path: None  # noqa: E731  (the kernel frees a memfd with its last holder)
        else:
            for stale in lifeline.reclaim_stale(cfg.shm_dir):
                log.info("removed %s, left by a host that is no longer running", stale)
            stem = os.path.join(cfg.shm_dir, f"apf-{os.getpid()}-{secrets.token_hex(4)}")
            self.paths = SharedPaths(ram=stem + "-ram", stage2=stem + "-stage2", control=stem + "-control")
            unlink = os.unlink
        self.ram = GuestRam.create(self.paths.ram, cfg.guest_pages)
        self._undo.append(lambda: (self.ram.close(), unlink(self.paths.ram)))
        self.stage2 = Stage2.create(self.paths.stage2, cfg.guest_pages)
        self._undo.append(lambda: (self.stage2.close(), unlink(self.paths.stage2)))
        self.control = ControlFile.create(self.paths.control, cfg.vcpus, cfg.guest_pages)
        self._undo.append(lambda: (self.control.close(), unlink(self.paths.control)))

    def _create(self) -> None:
        cfg = self.cfg
        self._create_shared_files()
        self.lifeline = lifeline.listen(cfg.run_dir)
        self._undo.append(lambda: (self.lifeline.close(), _unlink_quiet(lifeline.path(cfg.run_dir))))
        self.lifeline_waiting: list[socket.socket] = []   # connected, request not read yet
        self.swap = open_swap(cfg.swap_path, cfg.swap_slots, cfg.direct_io, cfg.swap_timeout_ns,
                              cfg.swap_password_file, exclusive=cfg.swap is not None)
        self.swap_backend, self.swap_endpoint = backend_of(self.swap)
        self._undo.append(self.swap.close)
        self.zctx = zmq.Context()
        self._undo.append(lambda: self.zctx.destroy(linger=0))
        self.router = self.zctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.endpoint = rundir.endpoint(cfg.run_dir)
        self.router.bind(self.endpoint)
        self._undo.append(lambda: _unlink_quiet(self.endpoint[len("ipc://"):]))
        self.metrics: HostMetrics | None = None
        self._trap_ns: dict[int, int] = {}      # vCPU -> when its pending TRAP arrived (with --metrics)
        if cfg.metrics is not None:
            try:
                self.metrics = HostMetrics(cfg.metrics, cfg.vcpus)
            except OSError as exc:
                raise ConfigError(f"--metrics {cfg.metrics}: cannot listen: {exc.strerror}") from exc
            self._undo.append(self.metrics.close)
            log.info("metrics on %s", self.metrics.endpoint.url)
        self.workers = open_io_engine(cfg.io_engine, self.swap, self.ram.page, cfg.io_depth,
                                      cfg.swap_latency_ns, self.chaos, slot_of=lambda gfn: self.mm.slot_of(gfn))
        self.completions = self.workers.fileno()   # an eventfd, polled next to the ROUTER
        self.workers.start()
        self._undo.append(self.workers.stop)
        self.mm = MemoryManager(cfg.guest_pages, cfg.budget_pages, self.stage2.perm, self.stage2.accessed,
                                free_ram=self.ram.free_pages, submit_io=self._submit_io,
                                send_tlbi=self._send_tlbi, page_in=self._page_in,
                                slots=SlotAllocator(cfg.swap_slots, discard=self.swap.discard),
                                page_cluster=cfg.page_cluster)
        self.control_ipa = cfg.guest_mem  # the control window sits right above guest RAM
        self._new_session_state()
        rundir.write_host_json(cfg.run_dir, self.describe())
        self._undo.append(lambda: _unlink_quiet(os.path.join(cfg.run_dir, rundir.HOST_JSON)))

    def _new_session_state(self) -> None:
        """Fresh APF, policy, fault path and hypercall state for the next guest."""
        cfg = self.cfg
        self.policy = Policy(cfg.policy, cfg.vcpus)
        self.apf = AsyncPf(self.control, cfg.vcpus, cfg.max_outstanding, self._inject_page_ready,
                           self.chaos, self.policy)
        self.fault_path = FaultPath(self.stage2.perm, self.mm, self.apf, self.policy, self.chaos,
                                    self.tracer, self._send_answer if self.metrics else self._send, self.after)
        self.hypercalls = Hypercalls(self.apf, self.control_ipa, cfg.max_outstanding,
                                     dilation=None if cfg.dilation is None else self._set_dilation)
        self._read_device_ns = self._read_modelled_ns = 0
        self._completion_path_ns: float | None = None   # dilation: a swap-in's completion to its answer (EWMA)
        # A fixed --dilation holds from the start; with auto, D is 1 until the guest says it.
        self._apply_dilation(1.0 if cfg.dilation in (None, AUTO) else float(cfg.dilation))

    # -- time dilation (shared/dilation.py) ----------------------------------------------------------
    def _trap_delay(self) -> None:
        """--trap-delay: a slower exit path, on purpose. Spun, not slept: a sleep of 100 µs takes
        200-300 µs on this kind of VM, and the delay must add what it says to the exit cost."""
        deadline = time.monotonic_ns() + self.cfg.trap_delay_ns
        if self.cfg.trap_delay_ns > TRAP_DELAY_SLEEP_NS:
            time.sleep((self.cfg.trap_delay_ns - TRAP_DELAY_SLEEP_NS) / 1e9)
        while time.monotonic_ns() < deadline:
            pass

    def _apply_dilation(self, factor: float) -> None:
        """Scale the modelled costs the host applies (swap latency, injected latencies) by `factor`."""
        self.dilation = factor
        self.swap_latency_applied_ns = dilate_ns(self.cfg.swap_latency_ns, factor)
        self.workers.latency_ns = self.swap_latency_applied_ns
        self.chaos.dilate(factor)

    def _completion_path_done(self, sample_ns: int) -> None:
        """With dilation: one swap-in's completion path, from the engine's end of the read to its
        answer sent (the eventfd waking this loop, the GIL handed over, the page's state, the
        answer). A minor fault, on which D is measured, has none of it, so it would be an
        emulator cost that D does not scale; the modelled latency of the next swap-ins ends that
        much early instead (at most half of it), and the figure is reported (`dilation`)."""
        old = self._completion_path_ns
        self._completion_path_ns = sample_ns if old is None else old + COMPLETION_EWMA * (sample_ns - old)
        self.workers.read_head_start_ns = int(min(self._completion_path_ns, self.swap_latency_applied_ns / 2))

    def _set_dilation(self, word: int) -> tuple[int, int]:
        """EMU_DILATION: the guest's factor (x1000). A fixed --dilation accepts only itself."""
        factor = decode_factor(word)
        fixed = self.cfg.dilation != AUTO
        if factor < 1.0 or (fixed and word != encode_factor(float(self.cfg.dilation))):
            return (SmcccRet.INVALID_PARAMETER, encode_factor(self.dilation))
        self._apply_dilation(factor)
        log.info("time dilation: D = %.3f (swap latency applied: %d ns)", factor, self.swap_latency_applied_ns)
        return (SmcccRet.SUCCESS, word)

    def describe(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "kind": "apf-emu-host", "endpoint": self.endpoint, "pid": os.getpid(),
            "protocol_version": PROTOCOL_VERSION, "page_size": PAGE_SIZE,
            "guest_mem": cfg.guest_mem, "host_mem": cfg.host_mem, "guest_pages": cfg.guest_pages,
            "vcpus": cfg.vcpus, "files": {} if self.memfds else {"ram": self.paths.ram, "stage2": self.paths.stage2,
                                                                 "control": self.paths.control},
            "shared_memory": cfg.shared_memory, "lifeline": lifeline.path(cfg.run_dir),
            "pid_ns": lifeline.pid_namespace(),
            "swap": self.swap_endpoint,   # an older name of swap_endpoint, kept for scripts
            "swap_size": cfg.swap_bytes, "page_cluster": cfg.page_cluster,
            "direct_io": cfg.direct_io,
            "swap_backend": self.swap_backend, "swap_endpoint": self.swap_endpoint,
            "swap_timeout_ns": cfg.swap_timeout_ns,
            "swap_latency_ns": cfg.swap_latency_ns, "dilation": cfg.dilation, "trap_delay_ns": cfg.trap_delay_ns,
            "io_depth": cfg.io_depth, "io_engine": self.workers.name, "max_outstanding": cfg.max_outstanding,
            "policy": cfg.policy,
            "metrics": self.metrics.endpoint.url if self.metrics else None,
            "control_ipa": self.control_ipa, "started_ns": time.monotonic_ns(),
        }

    def close(self) -> None:
        if self.session:
            self.end_session("host shutting down")
        if self.cfg.trace:
            self.tracer.write(self.cfg.trace)
        self._run_undo()
        if rundir.remove_if_orphaned(self.cfg.run_dir):
            log.info("removed run dir %s: the apf run that owned it is gone", self.cfg.run_dir)
        log.info("host stopped")

    def _run_undo(self) -> None:
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except Exception as exc:  # teardown must go on; say what was left
                log.warning("cleanup step failed: %s", exc)

    # -- the poll loop ---------------------------------------------------------------------------
    def serve(self) -> None:
        self.poller = poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.completions, zmq.POLLIN)
        poller.register(self.lifeline, zmq.POLLIN)
        log.info("host ready on %s (%d pages of guest memory, %d resident at most)",
                 self.endpoint, self.cfg.guest_pages, self.cfg.budget_pages)
        while not self.stopping:
            if self.muted:
                time.sleep(POLL_INTERVAL_MS / 1000)   # injected: alive, but deaf and silent
                continue
            queued = self.workers.arm()   # completions while this loop is awake need no wake-up
            events = dict(poller.poll(0 if queued else self._poll_timeout_ms()))
            if queued or self.completions in events:
                self._drain_completions()
            if self.router in events:
                self._drain_router()
            if len(events) > (self.router in events) + (self.completions in events):
                self._on_lifelines(events)
            now = time.monotonic_ns()
            if now >= self._tick_due_ns:
                self._tick(now)
            if self.metrics is not None:
                self.metrics.service(self.statistics)

    def _poll_timeout_ms(self) -> int:
        wait = min(POLL_INTERVAL_MS, HEARTBEAT_INTERVAL_MS)
        if self.timers:
            wait = min(wait, max(0, (self.timers[0][0] - time.monotonic_ns()) // 1_000_000))
        return wait

    def after(self, delay_ns: int, action: Callable[[], None]) -> None:
        due = time.monotonic_ns() + delay_ns
        heapq.heappush(self.timers, (due, next(self._timer_order), action))
        self._tick_due_ns = min(self._tick_due_ns, due)

    def _tick(self, now: int) -> None:
        """Timers, heartbeats, the guest's liveness, and the slot re-check."""
        while self.timers and self.timers[0][0] <= now:
            heapq.heappop(self.timers)[2]()
        # Not on every message: a trap's answer should not pay for deadline checks.
        self._tick_due_ns = min(now + TICK_NS, self.timers[0][0]) if self.timers else now + TICK_NS
        session = self.session
        if session is None:
            return
        silent_ms = (now - session.last_seen_ns) // 1_000_000
        if silent_ms > HEARTBEAT_EXPIRY_MS:
            log.warning("guest %r (pid %d) lost: nothing heard for %.1fs", session.name, session.pid,
                        silent_ms / 1000)
            self.end_session(f"guest lost: no heartbeat for {silent_ms / 1000:.1f}s", dropped=True)
            return
        overdue = self.mm.overdue_tlbi(now, TLBI_ACK_TIMEOUT_MS * 1_000_000)
        if overdue is not None:
            log.warning("guest %r (pid %d) did not acknowledge TLBI batch %d within %gs", session.name,
                        session.pid, overdue, TLBI_ACK_TIMEOUT_MS / 1000)
            self.end_session(f"TLBI batch {overdue} not acknowledged within {TLBI_ACK_TIMEOUT_MS / 1000:g}s",
                             dropped=True)
            return
        if now >= self._next_heartbeat_ns:
            self._next_heartbeat_ns = now + HEARTBEAT_INTERVAL_MS * 1_000_000
            self._send(session.ctl_route, Heartbeat(0))
            self.apf.deliver_all()
            self.mm.balance()       # as kswapd wakes periodically: no waiter depends on one event

    def request_stop(self, *_: Any) -> None:
        self.stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def _drain_completions(self) -> None:
        for done in self.workers.drain():
            self._on_completion(done)

    def _drain_router(self) -> None:
        # Bounded, so completions are not starved by a chatty guest. EVENTS says whether a frame is
        # queued without the cost of raising zmq.Again at the end of every drain.
        router = self.router
        for _ in range(256):
            if not router.get(ZMQ_EVENTS) & ZMQ_POLLIN:
                return
            # Two plain recvs rather than recv_multipart: about a µs less per message.
            route = router.recv(ZMQ_NOBLOCK)
            payload = router.recv(ZMQ_NOBLOCK) if router.get(ZMQ_RCVMORE) else None
            if payload is None or router.get(ZMQ_RCVMORE):
                parts = 0 if payload is None else 1 + self._discard_rest()
                self._reject(route, 0, ProtocolError(ErrorCode.MALFORMED,
                                                     f"expected one payload frame, got {parts}"))
                continue
            self._on_frame(route, payload)

    def _discard_rest(self) -> int:
        """Read and drop the remaining parts of the message being received; return how many."""
        count = 0
        while True:
            self.router.recv(ZMQ_NOBLOCK)
            count += 1
            if not self.router.get(ZMQ_RCVMORE):
                return count

    def _on_frame(self, route: bytes, frame: bytes) -> None:
        limits = self.session.limits if self.session else Limits(self.cfg.vcpus, self.cfg.guest_mem)
        try:
            msg = decode(frame, limits)
        except ProtocolError as exc:
            self._reject(route, exc.seq, exc)
            return
        if self._from_session(route):
            self.session.last_seen_ns = time.monotonic_ns()
        if self.chaos.fires("host", "mute"):
            log.warning("injected fault: the host stops answering")
            self.muted = True
            return
        handler = self.handlers.get(msg.KIND)
        if handler is None:
            self._reject(route, msg.seq, ProtocolError(ErrorCode.NOT_ALLOWED,
                                                       f"{msg.KIND.name} is a host-to-guest message"))
            return
        if msg.KIND not in (Kind.HELLO, Kind.STATS, Kind.HEARTBEAT) and not self._from_session(route):
            reason = "no guest is attached; send HELLO first" if self.session is None else \
                f"guest {self.session.name!r} is attached; this peer is not part of it"
            self._reject(route, msg.seq, ProtocolError(ErrorCode.NOT_ALLOWED, reason))
            return
        handler(route, msg)

    def _from_session(self, route: bytes) -> bool:
        """Whether `route` is one of the attached guest's identities (not merely starts like one)."""
        return self.session is not None and route in self.session.routes

    def _vcpu_route_refusal(self, route: bytes, vcpu: int, kind: str) -> ProtocolError | None:
        """A TRAP (or a vCPU's HVC) binds vCPU `vcpu`'s interrupt route to its sender: refused
        unless it comes from that vCPU's own identity, NAME/vcpuN."""
        own = self.session.prefix + b"vcpu%d" % vcpu
        if route == own:
            return None
        return ProtocolError(ErrorCode.NOT_ALLOWED,
                             f"{kind} for vCPU {vcpu} must come from its own socket, {own.decode(errors='replace')}")

    def _reject(self, route: bytes, seq: int, exc: ProtocolError) -> None:
        self.bad_frames[exc.code.name.lower()] += 1
        log.debug("rejected a frame from %r: %s", route, exc)
        self._send(route, Error(seq, int(exc.code), exc.reason))

    def _send(self, route: bytes, msg: Message) -> None:
        try:
            # Two plain sends rather than send_multipart: about a µs less per message. An
            # unroutable or full peer fails on the first part, so no half message is queued.
            self.router.send(route, ZMQ_SNDMORE | ZMQ_NOBLOCK)
            self.router.send(encode(msg), ZMQ_NOBLOCK)
        except zmq.ZMQError as exc:  # the peer is gone or not reading; it cannot be told
            self.send_failures += 1
            log.debug("cannot send %s to %r: %s", msg.KIND.name, route, exc)

    # -- the lifeline (shared/lifeline.py) -----------------------------------------------------------
    def _on_lifelines(self, events: dict) -> None:
        # zmq's poller gives plain sockets back as their descriptors
        if self.lifeline.fileno() in events:
            self._accept_lifelines()
        for conn in [c for c in self.lifeline_waiting if c.fileno() in events]:
            self._lifeline_request(conn)
        s = self.session
        if s is not None and s.lifeline is not None and s.lifeline.fileno() in events:
            if lifeline.closed(s.lifeline):
                log.warning("guest %r (pid %d) lost: its process is gone (lifeline closed)", s.name, s.pid)
                self.end_session("guest lost: its process is gone", dropped=True)
            else:
                try:
                    s.lifeline.recv(lifeline.MAX_LINE)   # the guest has nothing to say here: drop it
                except BlockingIOError:
                    pass

    def _accept_lifelines(self) -> None:
        while True:
            try:
                conn, _ = self.lifeline.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn.setblocking(False)
            self.lifeline_waiting.append(conn)
            self.poller.register(conn, zmq.POLLIN)

    def _lifeline_request(self, conn: socket.socket) -> None:
        """A guest asks for its memory: hand it over (SCM_RIGHTS) if it is the attached guest."""
        if lifeline.closed(conn):
            self._drop_lifeline(conn)
            return
        request = lifeline.read_line(conn)
        if request is None:
            return
        self.lifeline_waiting.remove(conn)
        s = self.session
        try:
            if s is None or request.get("guest") != s.name or s.lifeline is not None:
                lifeline.send_line(conn, {"error": "no attached guest of that name is waiting for its memory"})
                self._drop_lifeline(conn, waiting=False)
                return
            names = list(self.memfds)
            lifeline.send_line(conn, {"mode": self.cfg.shared_memory, "files": names},
                               [self.memfds[n] for n in names])
        except OSError as exc:
            log.debug("lifeline of %r failed: %s", request.get("guest"), exc)
            self._drop_lifeline(conn, waiting=False)
            return
        s.lifeline = conn

    def _drop_lifeline(self, conn: socket.socket, waiting: bool = True) -> None:
        if waiting:
            self.lifeline_waiting.remove(conn)
        try:
            self.poller.unregister(conn)
        except (AttributeError, KeyError):
            pass   # not polled yet
        conn.close()

    # -- session ---------------------------------------------------------------------------------
    def on_hello(self, route: bytes, msg: Hello) -> None:
        if self.session is not None:
            self._reject(route, msg.seq, ProtocolError(
                ErrorCode.BUSY, f"host already serves guest {self.session.name!r} (pid {self.session.pid})"))
            return
        if self.stale_io:
            self._reject(route, msg.seq, ProtocolError(
                ErrorCode.BUSY, f"{self.io_inflight} swap I/O of the previous guest still running; try again later"))
            return
        if msg.nr_vcpus > self.cfg.vcpus:
            self._reject(route, msg.seq, ProtocolError(
                ErrorCode.OUT_OF_RANGE, f"guest wants {msg.nr_vcpus} vCPUs; this host has {self.cfg.vcpus}"))
            return
        if "/" in msg.name:
            self._reject(route, msg.seq, ProtocolError(
                ErrorCode.NOT_ALLOWED, f"guest name {msg.name!r} contains '/', which ends the name in a socket identity"))
            return
        prefix = msg.name.encode() + b"/"
        if route != prefix + b"ctl":
            self._reject(route, msg.seq, ProtocolError(ErrorCode.NOT_ALLOWED,
                                                       "HELLO must come from the guest's ctl socket"))
            return
        routes = frozenset([route, *(prefix + b"vcpu%d" % v for v in range(msg.nr_vcpus))])
        self.session = Session(name=msg.name, pid=msg.pid, nr_vcpus=msg.nr_vcpus, prefix=prefix, ctl_route=route,
                               limits=Limits(msg.nr_vcpus, self.cfg.guest_mem), routes=routes)
        log.info("guest %r (pid %d, %d vCPUs) attached", msg.name, msg.pid, msg.nr_vcpus)
        info = {k: v for k, v in self.describe().items() if not isinstance(v, dict)}
        if self.memfds:     # the guest gets them over the lifeline; these only name them
            info.update({name: f"memfd:{name}" for name in self.memfds})
        else:
            info.update({"ram": self.paths.ram, "stage2": self.paths.stage2, "control": self.paths.control})
        self._send(route, Welcome(msg.seq, info))

    def end_session(self, why: str, dropped: bool = False) -> None:
        """The guest left: finish or cancel its I/O, wake nothing more, and forget its memory.
        `dropped`: the host ended it, taking the guest for lost (with --once, exit status 3)."""
        session, self.session = self.session, None
        if session is None:
            return
        self.dropped_guest = self.dropped_guest or dropped
        if session.lifeline is not None:
            self._drop_lifeline(session.lifeline, waiting=False)
        cancelled = self.workers.cancel_pending()
        self.io_inflight -= len(cancelled)
        bound_s = self.cfg.teardown_bound_ns / 1e9
        deadline = time.monotonic() + bound_s
        while self.io_inflight > 0 and time.monotonic() < deadline:
            if self.workers.wait(min(POLL_INTERVAL_MS / 1000, bound_s)):
                # bytes only: the state they would change is going away
                self.io_inflight -= len(self.workers.drain())
        if self.io_inflight > 0:
            # Such I/O still moves bytes between the swap file and guest RAM: a new guest would
            # find them in its memory. It is kept out until they end, then both are wiped again.
            self.stale_io = True
            log.warning("%d swap I/O still running after %gs; no new guest until they end",
                        self.io_inflight, bound_s)
        final = self.statistics()
        self.last_session_stats = final.to_wire()
        if self.metrics is not None:
            self.metrics.session_ended(final)
        self.mm.reset()
        self.stage2.reset()
        self.control.reset()
        self._new_session_state()
        self.timers.clear()
        self.ram.free_pages(0, self.cfg.guest_pages)
        self.swap.discard_all()
        self._reads_requested_ns.clear()
        self.sessions_served += 1
        self.last_end_reason = why
        log.info("guest %r detached (%s); %d queued I/O cancelled; ready for a new guest",
                 session.name, why, len(cancelled))
        if self.cfg.once:
            self.stopping = True

    # -- faults ----------------------------------------------------------------------------------
    def on_trap(self, route: bytes, msg: Trap) -> None:
        refusal = self._vcpu_route_refusal(route, msg.vcpu, "TRAP")
        if refusal is not None:
            self._reject(route, msg.seq, refusal)
            return
        self.session.vcpu_routes[msg.vcpu] = route      # where this vCPU's interrupts go
        if self.cfg.trap_delay_ns:
            self._trap_delay()
        if self.metrics is not None:
            self._trap_ns[msg.vcpu] = time.monotonic_ns()
        self.fault_path.on_trap(route, msg)

    def _send_answer(self, route: bytes, msg: Message) -> None:
        """The fault path's answers, timed from their TRAP (with --metrics)."""
        self._send(route, msg)
        vcpu = getattr(msg, "vcpu", None)
        started = self._trap_ns.pop(vcpu, None) if vcpu is not None else None
        if started is not None:
            self.metrics.observe_fault(vcpu, (time.monotonic_ns() - started) / 1e9)

    def _page_in(self, gfn: int, waiters: list, err: int) -> None:
        self.fault_path.page_in(gfn, waiters, err)

    def _inject_page_ready(self, vcpu: int) -> None:
        token = self.control.read(vcpu, "ready_token")
        self.tracer.instant("kvm_async_pf_ready", vcpu, token=token, vcpu=vcpu, gfn=-1)
        route = self.session.vcpu_routes.get(vcpu) if self.session else None
        if route is None:
            return
        self._irq_seq = (self._irq_seq + 1) & 0xFFFFFFFF
        self._send(route, InjectIrq(self._irq_seq, vcpu, Irq.PAGE_READY))

    # -- I/O ---------------------------------------------------------------------------------------
    def _submit_io(self, op: IoOp, gfn: int, ahead: list[int]) -> None:
        self.io_inflight += 1 + len(ahead)
        if op == IoOp.READ:
            self._reads_requested_ns[gfn] = time.monotonic_ns()   # the request's faulting page only
        self.workers.submit(op, gfn, ahead)

    def _on_completion(self, done: Completion) -> None:
        self.io_inflight -= 1
        if self.session is None:
            if self.stale_io and self.io_inflight == 0:
                self._wipe_after_stale_io()
            return
        latency = done.end_ns - done.start_ns
        self.tracer.span("swap_in" if done.op == IoOp.READ else "swap_out", IO_TRACK,
                         done.start_ns, done.end_ns, gfn=done.gfn, err=done.err)
        if done.op == IoOp.READ:
            # What a sync fault waits for: queueing, the I/O and its completion reaching this loop;
            # one sample per request, when its faulting page is in (its read-ahead pages have no
            # entry: their time is the request's, not a request of their own).
            requested = self._reads_requested_ns.pop(done.gfn, None)
            if requested is not None:
                self.policy.swap_in_done(time.monotonic_ns() - requested)
            if self.metrics is not None:
                self.metrics.observe_swap_in(latency / 1e9)
            self.mm.read_done(done.gfn, done.err, latency)
            if not done.err:
                self._read_modelled_ns += done.modelled_ns
                self._read_device_ns += latency - done.modelled_ns
                if self.cfg.dilation is not None:
                    self._completion_path_done(time.monotonic_ns() - done.end_ns)
        else:
            self.mm.write_done(done.gfn, done.err)

    def _wipe_after_stale_io(self) -> None:
        """The ended session's last I/O is done: wipe what it may have written, admit guests again."""
        self.ram.free_pages(0, self.cfg.guest_pages)
        self.swap.discard_all()
        self.stale_io = False
        log.info("the previous guest's swap I/O has ended; ready for a new guest")

    def _send_tlbi(self, batch: int, pages: int) -> None:
        self._send(self.session.ctl_route, Tlbi(batch, batch, pages))

    def on_tlbi_ack(self, route: bytes, msg: TlbiAck) -> None:
        if not self.mm.tlbi_acked(msg.batch):
            self._reject(route, msg.seq, ProtocolError(ErrorCode.NOT_ALLOWED,
                                                       f"no TLBI batch {msg.batch} is waiting for an ack"))

    # -- hypercalls --------------------------------------------------------------------------------
    def on_hvc(self, route: bytes, msg: Hvc) -> None:
        if self.cfg.trap_delay_ns:
            self._trap_delay()
        if route != self.session.ctl_route:
            refusal = self._vcpu_route_refusal(route, msg.vcpu, "HVC")
            if refusal is not None:
                self._reject(route, msg.seq, refusal)
                return
            self.session.vcpu_routes.setdefault(msg.vcpu, route)
            self.policy.vcpu_active(msg.vcpu)
        self._send(route, HvcRet(msg.seq, msg.vcpu, self.hypercalls.call(msg.vcpu, msg.func_id, msg.args)))
        if msg.func_id == FuncId.PSCI_SYSTEM_OFF:
            self.end_session("guest powered off")

    # -- statistics ----------------------------------------------------------------------------------
    def on_stats(self, route: bytes, msg: Stats) -> None:
        self._send(route, StatsReply(msg.seq, self.stats()))

    def _session_figures(self) -> SessionFigures:
        s = self.session
        common = dict(sessions_served=self.sessions_served, attached=s is not None,
                      last_end_reason=self.last_end_reason,
                      stale_io_running=self.io_inflight if self.stale_io else 0)
        if s is None:
            return SessionFigures(**common)
        return SessionFigures(**common, guest=s.name, pid=s.pid, vcpus=s.nr_vcpus,
                              uptime_s=(time.monotonic_ns() - s.started_ns) / 1e9)

    def stats(self) -> dict[str, Any]:
        """The STATS_REPLY map (SPEC §4.6)."""
        return self.statistics().to_wire()

    def statistics(self) -> HostStats:
        c, a, f = self.mm.counters, self.apf.counters, self.fault_path.counts
        return HostStats(
            faults=FaultFigures(total=f["total"], spurious=f["spurious"], async_=f["async"], sync=f["sync"],
                                minor=c.minor_faults, major=c.major_faults, joined=c.joined_faults,
                                rescued=c.rescued, alloc_stalls=c.alloc_stalls, poisoned=c.poisoned,
                                sync_reasons=dict(a.sync_reasons), write_protect=c.write_protect,
                                zero_page=c.zero_maps),
            apf=ApfFigures(not_present=a.not_present, page_ready=a.page_ready, wake_all=a.wake_all,
                           acks=a.acks, flushed=a.dropped_by_disable, duplicated=a.duplicated,
                           reordered=a.reordered, reraised=a.reraised, dropped_by_disable=a.dropped_by_disable,
                           outstanding=self.apf.outstanding(), queued=self.apf.queued(),
                           tokens=self.apf.tokens(), dropped_queued=a.dropped_queued,
                           dropped_in_flight=a.dropped_in_flight),
            swap=SwapFigures(reads=c.swap_reads, writes=c.swap_writes, evictions=c.evictions,
                             read_errors=c.swap_read_errors, write_errors=c.swap_write_errors,
                             tlbi_batches=c.tlbi_batches, swap_in_us=c.swap_in_ns.percentiles_us(),
                             file_bytes=self.swap.allocated_bytes(), io_engine=self.workers.name,
                             clean_drops=c.clean_drops, slots_used=self.mm.slots.used,
                             read_device_ns=self._read_device_ns, read_modelled_ns=self._read_modelled_ns,
                             backend=self.swap_backend, endpoint=self.swap_endpoint,
                             remote=self.swap.figures() if self.swap_backend != "file" else None,
                             readahead=ReadaheadFigures(pages=c.readahead_pages, hits=c.readahead_hits,
                                                        misses=c.readahead_misses),
                             io_in_flight=self.io_inflight, io_queued=self.workers.queued()),
            memory=MemoryFigures(resident_pages=self.mm.resident, budget_pages=self.mm.budget,
                                 free_pages=self.mm.free, evicting_pages=self.mm.evicting,
                                 watermarks=[self.mm.wm.low, self.mm.wm.high],
                                 over_budget_pages=self.mm.overdraft, over_budget_events=c.over_budget_events,
                                 ram_file_bytes=allocated_bytes(self.paths.ram),
                                 resident_only_pages=self.mm.resident - self.mm.reading - self.mm.evicting,
                                 reading_pages=self.mm.reading),
            session=self._session_figures(),
            bad_frames=dict(self.bad_frames),
            injected=self.chaos.summary(),
            policy=self.policy.figures(),
            resources=process_resources(),
            control_block_bytes=BLOCK_SIZE,
            dilation={"mode": self.cfg.dilation, "factor": self.dilation,
                      "swap_latency_ns": self.swap_latency_applied_ns, "trap_delay_ns": self.cfg.trap_delay_ns,
                      "completion_path_ns": None if self._completion_path_ns is None else int(self._completion_path_ns),
                      "read_head_start_ns": self.workers.read_head_start_ns},
        )


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _rmdir_quiet(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def run_host(cfg: HostConfig) -> int:
    early_stop: list[int] = []   # a signal before the host is built still stops it, cleanly
    signal.signal(signal.SIGTERM, lambda signum, _: early_stop.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _: early_stop.append(signum))
    host = Host(cfg)
    host.install_signal_handlers()
    host.stopping = bool(early_stop)
    try:
        host.serve()
    finally:
        host.close()
    # --once: say whether the one session ended with the guest taken for lost, so that `apf run`
    # need not wait for a guest that is stopped or stuck.
    return EXIT_GUEST_DROPPED if cfg.once and host.dropped_guest else 0
