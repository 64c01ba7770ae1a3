"""The guest daemon: attach to the host, run the tasks on vCPU threads, verify, report.

The main thread owns the ctl socket: the handshake, TLB invalidations from the host's reclaim,
the statistics requests (at every phase boundary, for each phase's swap I/O, and at the end) and
the PSCI SYSTEM_OFF that ends the session.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import sys
import time
from dataclasses import replace
from typing import Any, Iterator

import zmq

from shared.timeline import Tracer
from guest.apf import GuestApf
from guest.config import GuestConfig
from guest.dilation import (PAGES_PER_CALIBRATION, Calibration, CalibrationError, calibrate, dilated_config,
                            drift_of, factor_of, reliable, workload_pages)
from guest.memory import AccessResult, GuestMemory
from guest.metrics import GuestMetrics
from guest.replay import TraceReplay
from guest.report import RunFigures, build_report, host_marks, mark_cpu_delta, mark_delta, print_summary
from guest.scheduler import Scheduler, Task
from guest.schedclass import Tunables
from guest.think import ClockWork, Thinker
from guest.vcpu import GuestError, Vcpu, VcpuPorts
from guest.waittable import TOKEN_VCPU_MASK, WaitTable
from guest.workload import ENDLESS, Access, WorkloadSpec, compute_stream
from protocol import ErrorCode, PeerLostError, ProtocolError, decode, encode
from protocol.errors import ConfigError, RunDirError
from protocol.hypercalls import FuncId, SmcccRet
from shared.dilation import AUTO, DRIFT_BOUND, decode_factor, dilate_ns, encode_factor
from protocol.messages import (HEARTBEAT_EXPIRY_MS, HEARTBEAT_INTERVAL_MS, MAX_FRAME_BYTES, PAGE_SIZE,
                               PROTOCOL_VERSION, Access as AccessKind, Ctx, Error, Heartbeat, Hello, Hvc, HvcRet,
                               Kind, Limits, Trap,
                               Message, Stats, StatsReply, Tlbi, TlbiAck, Welcome)
from shared.chaos import Chaos
from shared import lifeline, rundir, sparse
from shared.files import ControlFile, GuestRam, LayoutError, Stage2
from shared.memtrace import MemtraceError

log = logging.getLogger("apf.guest")

HANDSHAKE_TIMEOUT_S = 5.0
ATTACH_RETRY_S = 0.25     # between HELLOs to a busy host (--attach-wait)
ATTACH_POLL_S = 0.05      # between looks for the host.json of a host still starting (--attach-wait)
CTL_POLL_MS = 50
STATS_SEQ = 0xFFFF0001     # the ctl socket's STATS seq (protocol/SPEC.md)
POWER_OFF_SEQ = 0xFFFF0002  # the ctl socket's PSCI_SYSTEM_OFF
DILATION_SEQ = 0xFFFF0004   # the ctl socket's EMU_DILATION
CALIBRATE_REPLY_S = 5.0    # bound on one calibration round trip
VCPU_JOIN_BOUND_S = 10.0   # after an abort, a vCPU blocked longer than this is abandoned
LIFELINE_GRACE_MS = 250    # a reply the host sent just before it closed the lifeline may still be on its way


class Guest:
    def __init__(self, cfg: GuestConfig):
        self.cfg = cfg.validate()
        self.given_cfg = replace(cfg)        # as given: the report's config (dilation scales self.cfg)
        self.dilation: dict[str, Any] | None = None
        info = _host_info(cfg)
        if info.get("protocol_version") != PROTOCOL_VERSION:
            raise GuestError(f"host in {cfg.run_dir} speaks protocol version {info.get('protocol_version')}; "
                             f"this guest speaks {PROTOCOL_VERSION}")
        lifeline.host_alive(cfg.run_dir, info)    # a dead host's host.json: say so at once
        self.endpoint = info["endpoint"]
        self.host_pid = info.get("pid")
        self.lifeline: lifeline.GuestLifeline | None = None
        self.chaos = Chaos.from_specs(cfg.inject, "guest", cfg.seed)
        self.name = cfg.name or f"guest-{os.getpid()}-{secrets.token_hex(2)}"
        self.zctx = zmq.Context()
        self.ctl = self.open_socket("ctl")
        self.failure: str | None = None
        self.failure_ns: int | None = None   # when the run failed (monotonic ns)
        self.poisoned: set[int] = set()      # pages the host reported lost (memory failure)
        self.replay = self._load_trace()     # before attaching: a bad trace never reaches the host
        try:
            welcome = self._handshake()
            if "lifeline" in welcome.info:
                self.lifeline = lifeline.GuestLifeline(welcome.info["lifeline"], self.name, self.host_pid,
                                                       HANDSHAKE_TIMEOUT_S)
            self._attach(welcome.info)
        except BaseException:
            if self.lifeline is not None:
                self.lifeline.close()
            self.ctl.close(linger=0)
            self.zctx.term()
            raise
        self.tracer = Tracer(f"apf guest {self.name}", enabled=bool(cfg.trace))
        for v in range(cfg.vcpus):
            self.tracer.name_track(v, f"vCPU {v}")
        needs_work = cfg.think_ns or cfg.compute_tasks or self.replay is not None
        if cfg.cpu_work == "clock":
            self.thinker: Thinker | ClockWork = ClockWork()
        else:
            self.thinker = Thinker.calibrate() if needs_work else Thinker(1.0)
        self.waits: WaitTable[Task] = WaitTable()
        phases = [("prefill", self._prefill_tasks)] if cfg.prefill_phase else []
        phases += [("workload", self._workload_tasks), ("verify", self._verify_tasks)]
        self.sched = Scheduler(cfg.vcpus, phases, cfg.sched, Tunables.linux(cfg.vcpus, cfg.timeslice_ns))
        self.apf: GuestApf[Task] = GuestApf(self.control, self.waits, self.sched)
        self.pages_to_verify = 0
        ports = VcpuPorts(cfg=cfg, endpoint=self.endpoint, limits=self.limits, control_ipa=self.control_ipa,
                          open_socket=self.open_socket, send=self.send, heard_from_host=self._heard_from_host,
                          sched=self.sched, mem=self.mem, apf=self.apf, thinker=self.thinker,
                          tracer=self.tracer, chaos=self.chaos, poisoned=self.poisoned, fail=self.fail)
        self.vcpus = [Vcpu(ports, i) for i in range(cfg.vcpus)]
        self.metrics: GuestMetrics | None = None
        if cfg.metrics is not None:
            try:
                self.metrics = GuestMetrics(cfg.metrics, self.vcpus,
                                            lambda: sum(t.completed for t in self.sched.all_tasks),
                                            self.chaos.summary)
            except OSError as exc:
                self.close()
                raise ConfigError(f"--metrics {cfg.metrics}: cannot listen: {exc.strerror}") from exc
            # Said whatever the log level: with --metrics 0 this line is the only place the port is
            # told before the run ends (the report's `metrics` says it after).
            print(f"apf guest: metrics on {self.metrics.endpoint.url}", file=sys.stderr, flush=True)
        self.tlbi_acks = 0
        self.host_stats: dict[str, Any] = {}
        self.phase_swap: dict[str, dict[str, int]] = {}   # phase -> the host's swap I/O during it
        self.phase_host_faults: dict[str, dict[str, Any]] = {}   # phase -> the host's fault counts during it
        self.phase_host_cpu_s: dict[str, float] = {}       # phase -> the host's CPU time during it
        self._mark: dict[str, Any] = {}                    # the host's counters at the last boundary
        self.host_seen_ns = time.monotonic_ns()     # vCPUs and the ctl thread refresh it
        self._next_heartbeat_ns = 0

    # -- sockets and session ----------------------------------------------------------------------
    def open_socket(self, role: str) -> zmq.Socket:
        sock = self.zctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        sock.setsockopt(zmq.ROUTING_ID, f"{self.name}/{role}".encode())
        sock.setsockopt(zmq.SNDTIMEO, HEARTBEAT_EXPIRY_MS)   # a send never blocks for longer
        sock.connect(self.endpoint)
        return sock

    def _heard_from_host(self) -> None:
        self.host_seen_ns = time.monotonic_ns()

    def send(self, sock: zmq.Socket, msg: Message) -> None:
        try:
            sock.send(encode(msg))
        except zmq.Again:
            raise PeerLostError(f"host at {self.endpoint} (pid {self.host_pid}) is not taking messages "
                                f"(a send waited {HEARTBEAT_EXPIRY_MS / 1000:g}s)") from None

    def _handshake(self) -> Welcome:
        """HELLO until WELCOME; a BUSY host is asked again every ATTACH_RETRY_S within --attach-wait."""
        give_up = time.monotonic() + self.cfg.attach_wait_ns / 1e9
        seq = 1
        while True:
            self.send(self.ctl, Hello(seq, self.cfg.vcpus, os.getpid(), self.name))
            if not self.ctl.poll(int(HANDSHAKE_TIMEOUT_S * 1000)):
                raise PeerLostError(f"host at {self.endpoint} did not answer HELLO within {HANDSHAKE_TIMEOUT_S:g}s")
            reply = decode(self.ctl.recv())
            if isinstance(reply, Welcome):
                return reply
            if not isinstance(reply, Error):
                raise GuestError(f"host answered HELLO with {reply.KIND.name}")
            if reply.code != ErrorCode.BUSY or time.monotonic() + ATTACH_RETRY_S > give_up:
                waited = f" (still, after asking for {self.cfg.attach_wait_ns / 1e9:g}s)" if seq > 1 else ""
                raise GuestError(f"host refused this guest: {reply.reason}{waited}")
            if seq == 1:
                log.info("host is busy (%s); asking again for up to %gs", reply.reason,
                         self.cfg.attach_wait_ns / 1e9)
            time.sleep(ATTACH_RETRY_S)
            seq += 1

    def _attach(self, info: dict[str, Any]) -> None:
        try:
            pages = int(info["guest_pages"])
            self.control_ipa = int(info["control_ipa"])
            files = (self.lifeline.paths() if self.lifeline else None) or info
            self.ram = GuestRam.attach(files["ram"], pages)
            self.stage2 = Stage2.attach(files["stage2"], pages)
            self.control = ControlFile.attach(files["control"], int(info["vcpus"]), pages)
        except (KeyError, TypeError, ValueError) as exc:
            raise GuestError(f"host's WELCOME lacks a valid field: {exc}") from exc
        except LayoutError as exc:
            raise GuestError(str(exc)) from exc
        finally:
            if self.lifeline is not None:
                self.lifeline.close_fds()     # the mappings keep the memory
        self.guest_pages = pages
        self.limits = Limits(self.cfg.vcpus, pages * PAGE_SIZE)
        self.mem = GuestMemory(self.ram, self.stage2)
        usable, self.working_pages = workload_pages(self.cfg, pages)
        self.calibration_pages = iter(range(usable, pages))   # the exit-cost calibration's, never the workload's
        if self.replay is not None:
            self.working_pages = self._trace_region(usable)
        self.touched = sparse.PageSet(pages)      # pages the workload phase touched

    def _load_trace(self) -> TraceReplay | None:
        if self.cfg.trace_path is None:
            return None
        try:
            return TraceReplay.load(self.cfg.trace_path)
        except MemtraceError as exc:
            raise GuestError(str(exc)) from None

    def _trace_region(self, guest_pages: int) -> int:
        """Pages the trace tasks need (every one of them is the working set); an error if more
        than guest memory."""
        cfg, replay = self.cfg, self.replay
        need = replay.region_pages(cfg.tasks, cfg.trace_shared)
        if need > guest_pages:
            raise GuestError(trace_misfit(cfg.trace_path, replay.distinct_pages, cfg.tasks, cfg.trace_shared,
                                          guest_pages))
        return need

    def _workload_tasks(self) -> list[Task]:
        cfg = self.cfg
        if self.replay is not None:
            rate = self.replay.ns_per_insn(cfg.ns_per_insn)
            memory = [Task(i, f"trace-{i}", self.replay.stream(
                i, cfg.accesses, cfg.seed, shared=cfg.trace_shared, ns_per_insn=rate, think=self.thinker.think,
                touched=self.touched, kernel_frac=cfg.kernel_frac, irqoff_frac=cfg.irqoff_frac))
                for i in self._beating(cfg.tasks)]
        else:
            accesses = ENDLESS if cfg.duration_ns else cfg.accesses
            spec = WorkloadSpec(cfg.workload, self.working_pages, accesses, cfg.write_frac,
                                cfg.kernel_frac, cfg.irqoff_frac, cfg.seed)
            memory = [Task(i, f"{cfg.workload}-{i}", spec.stream(i, cfg.tasks, self.touched))
                      for i in self._beating(cfg.tasks)]
        return memory + [Task(cfg.tasks + i, f"compute-{i}", compute_stream(ENDLESS if cfg.duration_ns else cfg.compute_ns),
                              compute=True)
                         for i in range(cfg.compute_tasks)]

    def _beating(self, n: int, every: int = 1024) -> Iterator[int]:
        """range(n), sending our heartbeat every `every` items: making 100,000 tasks takes longer
        than the host waits to hear from us."""
        for i in range(n):
            if i % every == 0:
                self._send_heartbeat()
            yield i

    def _prefill_tasks(self) -> list[Task]:
        """Before the workload: write every page of the working set once, so that the workload
        starts with memory the host has already had to swap (as a memory hog does)."""
        n = self.cfg.vcpus
        pages = range(self.working_pages)
        return [Task(20_000 + i, f"prefill-{i}", (Access(g, True, Ctx.USER) for g in pages[i::n]), "prefill")
                for i in range(n)]

    def _verify_tasks(self) -> list[Task]:
        """After the workload: read back every written page, split over as many tasks as the
        workload had (at least one per vCPU), so that asynchronous faults overlap here too."""
        if not self.cfg.verify:
            return []
        pages = self.mem.written_pages()
        self.pages_to_verify = len(pages)
        n = max(self.cfg.vcpus, self.cfg.tasks)
        return [Task(10_000 + i, f"verify-{i}", (Access(g, False, Ctx.USER) for g in pages[i::n]), "verify")
                for i in range(n)]

    # -- running ------------------------------------------------------------------------------------
    def fail(self, why: str) -> None:
        if self.failure is None:
            self.failure = why
            self.failure_ns = time.monotonic_ns()   # the cut: a partial report's open phase ends here
            log.info("run failed: %s", why)   # said once, in the summary; logged for the timeline
        self.sched.abort(why)

    def run(self) -> dict[str, Any]:
        self.start_ns = time.monotonic_ns()
        log.info("guest %r attached to %s: %d vCPUs, %d tasks (+%d compute), %s mode", self.name,
                 self.endpoint, self.cfg.vcpus, self.cfg.tasks, self.cfg.compute_tasks, self.cfg.mode)
        try:
            if self.cfg.dilation is not None:
                try:
                    self._start_dilation()
                except ConfigError:
                    self._power_off()      # a refusal, not a lost guest: end the session cleanly
                    raise
            if self.cfg.duration_ns:
                self.sched.phase_limits_ns["workload"] = self.cfg.duration_ns
            self._mark = host_marks(self._host_stats())   # phases count from here
            self.sched.advance()
            for vcpu in self.vcpus:
                vcpu.start()
            self._serve_ctl()
            if self.dilation is not None and not self.failure:
                self._end_dilation()
            self._collect_host_stats()
            self._power_off()
        except (PeerLostError, GuestError, ProtocolError) as exc:
            self.fail(str(exc))
        finally:
            self.sched.abort(self.failure or "run over")
            self._join_vcpus()
        self.end_ns = time.monotonic_ns()
        log.info("guest %r finished in %.3fs%s", self.name, (self.end_ns - self.start_ns) / 1e9,
                 f" ({self.failure})" if self.failure else "")
        report = build_report(self._figures())
        if self.metrics is not None:
            report["metrics"] = self.metrics.endpoint.url
        return report

    # -- time dilation (shared/dilation.py, guest/dilation.py) -----------------------------------------
    def _calibrate(self) -> Calibration:
        """The emulator's exit cost: bursts of minor faults on the pages set aside, taken as vCPU 0
        takes a fault (its socket identity, a blocking receive), while no vCPU thread runs. Raises
        CalibrationError when unstable, PeerLostError when the host does not answer."""
        pages = [next(self.calibration_pages) for _ in range(PAGES_PER_CALIBRATION)]
        sock = self.open_socket("vcpu0")     # vCPU 0's identity: its interrupts' route stays its own
        sock.setsockopt(zmq.RCVTIMEO, int(CALIBRATE_REPLY_S * 1000))
        mem, seq = self.mem, iter(range(1, len(pages) + 1))

        def round_trip() -> None:
            gfn = pages.pop()
            if mem.access(gfn, False) is not AccessResult.MISS:
                return
            n = next(seq)
            sock.send(encode(Trap(n, 0, gfn * PAGE_SIZE, AccessKind.READ, Ctx.USER)))
            while True:
                try:
                    msg = decode(sock.recv(), self.limits)
                except zmq.Again:
                    raise PeerLostError(f"host at {self.endpoint} did not answer a calibration fault within "
                                        f"{CALIBRATE_REPLY_S:g}s") from None
                if msg.seq == n and msg.KIND in (Kind.RESUME, Kind.ERROR):
                    break
            if msg.KIND == Kind.ERROR:
                raise GuestError(f"host refused a calibration fault: {msg.reason}")
            mem.access(gfn, False)

        try:
            return calibrate(round_trip, time.monotonic_ns)
        finally:
            sock.close(linger=0)

    def _start_dilation(self) -> None:
        """Before the first phase: measure the exit cost (auto), settle D with the host
        (EMU_DILATION), and scale this guest's modelled costs by it. Raises ConfigError (exit 2)
        for a calibration that is unstable or a target above the measured cost."""
        cfg = self.cfg
        unstable = None
        try:
            start: Calibration | None = self._calibrate()
        except CalibrationError as exc:
            if cfg.dilation == AUTO:
                slowest = max(exc.burst_p50_ns, default=0)
                if 0 < slowest < cfg.exit_cost_ns:
                    factor_of(slowest, cfg.exit_cost_ns)   # D < 1 whatever the noise: that refusal, not "too busy"
                raise
            start, unstable = None, str(exc)     # a given factor needs no measurement: only the drift is lost
        factor = factor_of(start.exit_ns, cfg.exit_cost_ns) if cfg.dilation == AUTO else float(cfg.dilation)
        reply = self._ctl_call(Hvc(DILATION_SEQ, 0, int(FuncId.EMU_DILATION), (encode_factor(factor),)),
                               Kind.HVC_RET)
        if not isinstance(reply, HvcRet):
            raise GuestError(f"host refused EMU_DILATION: {reply.reason}")
        if reply.ret[0] == SmcccRet.NOT_SUPPORTED:
            raise ConfigError("--dilation: the host applies no dilation to its swap latency: start it with "
                              "--dilation auto (or this guest's factor)")
        if reply.ret[0] != SmcccRet.SUCCESS:
            raise ConfigError(f"--dilation: the host holds a fixed factor of {decode_factor(reply.ret[1]):g}; "
                              f"this guest's is {factor:g}: give both the same, or the host --dilation auto")
        factor = decode_factor(encode_factor(factor))     # as the host applies it
        rate = self.replay.ns_per_insn(None) if self.replay is not None else None
        scaled = dilated_config(cfg, factor, rate)
        for name in ("think_ns", "compute_work_ns", "timeslice_ns", "ns_per_insn"):
            setattr(cfg, name, getattr(scaled, name))    # in place: the vCPUs' ports hold this config
        self.chaos.dilate(factor)
        self.sched.retune(Tunables.linux(cfg.vcpus, cfg.timeslice_ns, dilation=factor))
        cfg.duration_ns = dilate_ns(cfg.duration_ns, factor)
        self.dilation = {"mode": cfg.dilation, "factor": factor, "target_exit_ns": cfg.exit_cost_ns,
                         "measured_exit_ns": start.exit_ns if start else None, "end_exit_ns": None, "drift": None,
                         "drift_bound": DRIFT_BOUND, "reliable": None,
                         "calibration": start.figures() if start else {"error": unstable},
                         "end_calibration": None,
                         "applied": {"think_ns": cfg.think_ns, "compute_work_ns": cfg.compute_ns,
                                     "timeslice_ns": cfg.timeslice_ns, "ns_per_insn": cfg.ns_per_insn}}
        log.info("time dilation: exit cost %s measured, target %.1fus: D = %.3f",
                 f"{start.exit_ns / 1000:.1f}us" if start else "not", cfg.exit_cost_ns / 1000, factor)

    def _end_dilation(self) -> None:
        """After the last phase: measure the exit cost again; its drift decides whether the
        real-scale figures hold (an unstable measurement here flags them, it does not fail the run)."""
        d = self.dilation
        if d["measured_exit_ns"] is None:
            d["reliable"] = False
            return
        try:
            end = self._calibrate()
        except CalibrationError as exc:
            d["reliable"] = False
            d["end_calibration"] = {"error": str(exc)}
            return
        d["end_exit_ns"] = end.exit_ns
        d["end_calibration"] = end.figures()
        d["drift"] = drift_of(d["measured_exit_ns"], end.exit_ns)
        d["reliable"] = reliable(d["drift"])

    def _figures(self) -> RunFigures:
        return RunFigures(
            cfg=self.given_cfg, dilation=self.dilation, failure=self.failure, start_ns=self.start_ns, end_ns=self.end_ns,
            cut_ns=self.failure_ns,
            tasks=list(self.sched.all_tasks), phase_ns=self.sched.phase_ns, parked_ns=list(self.sched.parked_ns),
            vcpu_stats=[v.phase_stats for v in self.vcpus], host_stats=self.host_stats,
            phase_swap=self.phase_swap, phase_host_faults=self.phase_host_faults, tlbi_acks=self.tlbi_acks, pages_to_verify=self.pages_to_verify,
            corrupt=dict(self.mem.corrupt), corrupt_count=self.mem.corrupt_count,
            pages_poisoned=len(self.poisoned), duplicate_page_ready=self.waits.duplicates,
            injected=self.chaos.summary(), workload=self._workload_figures(),
            pages_touched=len(self.touched), phase_cpu_ns=self.sched.phase_cpu_ns,
            phase_host_cpu_s=self.phase_host_cpu_s, scheduler=self.sched.figures())

    def _workload_figures(self) -> dict[str, Any]:
        figures: dict[str, Any] = {"name": self.cfg.workload, "trace": None}
        if self.replay is not None:
            h = self.replay.header
            figures["trace"] = {"path": self.cfg.trace_path, "sha256": h.source_sha256, "format": h.source_format,
                                "records": h.records, "distinct_pages": h.distinct_pages,
                                "shared": self.cfg.trace_shared, "has_instructions": h.has_instructions,
                                "ns_per_insn": self.replay.ns_per_insn(self.cfg.ns_per_insn),
                                "prefilled": self.cfg.prefill_phase}
        return figures

    def _serve_ctl(self) -> None:
        """Serve TLB invalidations and phase boundaries until every vCPU has finished; watch for a
        stuck guest."""
        poller = zmq.Poller()
        poller.register(self.ctl, zmq.POLLIN)
        poller.register(self.sched.boundary_fd, zmq.POLLIN)
        if self.lifeline is not None:
            poller.register(self.lifeline.sock, zmq.POLLIN)   # readable only at EOF: the host died
        last_progress, last_done = time.monotonic_ns(), -1
        while any(v.is_alive() for v in self.vcpus):
            events = dict(poller.poll(CTL_POLL_MS))
            if self.ctl in events:
                self._on_ctl(self._receive_ctl())
            if self.sched.boundary_fd in events:
                self.sched.drain_boundary()
            if self.sched.phase_over is not None:
                self._phase_boundary()
            self._heartbeat()
            if self.failure:
                return
            done = sum(t.completed for t in self.sched.all_tasks)
            now = time.monotonic_ns()
            if done != last_done:
                last_progress, last_done = now, done
            elif now - last_progress > self.cfg.stuck_timeout_ns:
                self._report_stuck(now - last_progress)
                return

    def _report_stuck(self, idle_ns: int) -> None:
        """Fail the run naming the parked tasks, their tokens, and what the host knows of each
        token (one STATS request), so that a lost page-ready explains itself."""
        parked = self.sched.parked()
        host_tokens: list[dict[str, Any]] | None = None
        if parked:
            try:
                host_tokens = self._host_stats().get("apf", {}).get("tokens")
            except (PeerLostError, GuestError, ProtocolError) as exc:
                log.warning("could not ask the host about the parked tokens: %s", exc)
        now = time.monotonic_ns()
        tokens = ", ".join(f"{t.name} on token {t.token:#x} ({where_is_token(host_tokens, t.token, now)})"
                           for t in parked[:8])
        self.fail(f"guest is stuck: no access completed for {idle_ns / 1e9:.1f}s"
                  + (f"; parked: {tokens}" if parked else ""))

    def _heartbeat(self, check_lifeline: bool = True) -> None:
        """Send ours; and if the host's lifeline closed (the process died) or nothing at all came
        from the host for the expiry, it is gone."""
        if check_lifeline:
            self._check_lifeline()
        now = self._send_heartbeat()
        silent_ms = (now - self.host_seen_ns) // 1_000_000
        if silent_ms > HEARTBEAT_EXPIRY_MS:
            raise PeerLostError(f"host at {self.endpoint} (pid {self.host_pid}) stopped answering: "
                                f"nothing heard for {silent_ms / 1000:.1f}s")

    def _send_heartbeat(self) -> int:
        """Ours, if one is due; returns now (time.monotonic_ns())."""
        now = time.monotonic_ns()
        if now >= self._next_heartbeat_ns:
            self._next_heartbeat_ns = now + HEARTBEAT_INTERVAL_MS * 1_000_000
            self.send(self.ctl, Heartbeat(0))
        return now

    def _check_lifeline(self) -> None:
        if self.lifeline is None or not self.lifeline.host_gone():
            return
        if lifeline.pid_running(self.host_pid):
            # The process lives on: it ended this session (it took this guest for lost, e.g. one
            # that was silent for the heartbeat expiry while setting up).
            raise PeerLostError(f"host at {self.endpoint} (pid {self.host_pid}) ended this session: "
                                "its lifeline closed while it still runs (see the host's log for why)")
        raise PeerLostError(f"host at {self.endpoint} (pid {self.host_pid}) is gone: its lifeline "
                            "closed (the host exited or was killed)")

    def _receive_ctl(self) -> Message | None:
        frame = self.ctl.recv()
        self.host_seen_ns = time.monotonic_ns()
        try:
            return decode(frame, self.limits)
        except ProtocolError as exc:
            log.warning("rejected a frame from the host: %s", exc)
            return None

    def _on_ctl(self, msg: Message | None) -> None:
        if isinstance(msg, Tlbi):
            self.mem.tlb_invalidate()
            self.tlbi_acks += 1
            self.send(self.ctl, TlbiAck(msg.seq, msg.batch))
        elif isinstance(msg, Error) and msg.code == ErrorCode.VERSION:
            raise GuestError(f"host refused our protocol: {msg.reason}")

    def _ctl_call(self, request: Message, expect: Kind, timeout_s: float = 10.0) -> Message:
        self.send(self.ctl, request)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._heartbeat(check_lifeline=False)
            if not self.ctl.poll(CTL_POLL_MS):
                if not self.ctl.poll(LIFELINE_GRACE_MS if self.lifeline and self.lifeline.host_gone() else 0):
                    self._check_lifeline()
                continue
            msg = self._receive_ctl()
            if msg is not None and msg.seq == request.seq and msg.KIND in (expect, Kind.ERROR):
                return msg
            self._on_ctl(msg)
        raise PeerLostError(f"host at {self.endpoint} did not answer {request.KIND.name} within {timeout_s:g}s")

    def _phase_boundary(self) -> None:
        """A phase ended and the next waits: no task runs, so the host's swap I/O and faults since
        the last boundary are the ended phase's (but for write-backs still in flight, counted when
        done)."""
        mark = host_marks(self._host_stats())
        swap, faults = mark_delta(self._mark, mark)
        self.phase_swap[self.sched.phase_over] = swap
        self.phase_host_faults[self.sched.phase_over] = faults
        host_cpu = mark_cpu_delta(self._mark, mark)
        if host_cpu is not None:
            self.phase_host_cpu_s[self.sched.phase_over] = host_cpu
        self._mark = mark
        self.sched.advance()

    def _host_stats(self) -> dict[str, Any]:
        reply = self._ctl_call(Stats(STATS_SEQ), Kind.STATS_REPLY)
        if not isinstance(reply, StatsReply):
            raise GuestError(f"host refused STATS: {reply.reason}")
        return reply.stats

    def _collect_host_stats(self) -> None:
        self.host_stats = self._host_stats()

    def _power_off(self) -> None:
        reply = self._ctl_call(Hvc(POWER_OFF_SEQ, 0, int(FuncId.PSCI_SYSTEM_OFF), ()), Kind.HVC_RET)
        if isinstance(reply, Error):     # the session goes on at the host: the run did not end cleanly
            raise GuestError(f"host refused hypercall PSCI_SYSTEM_OFF: {reply.reason}")

    def _join_vcpus(self) -> None:
        deadline = time.monotonic() + VCPU_JOIN_BOUND_S
        for vcpu in self.vcpus:
            if vcpu.ident is None:
                continue               # never started: the run failed before the first phase
            vcpu.join(max(0.0, deadline - time.monotonic()))
            if vcpu.is_alive():
                log.error("vCPU %d did not stop within %.0fs", vcpu.index, VCPU_JOIN_BOUND_S)

    def close(self) -> None:
        if getattr(self, "metrics", None) is not None:
            self.metrics.close()
        if self.cfg.trace and not rundir.orphaned():
            self.tracer.write(self.cfg.trace)
        self.ctl.close(linger=0)
        if self.lifeline is not None:
            self.lifeline.close()
        if not any(v.is_alive() for v in self.vcpus):
            self.sched.close()
            self.zctx.term()   # would block on a socket still owned by an abandoned vCPU


def trace_misfit(path: str, distinct_pages: int, tasks: int, shared: bool, guest_pages: int) -> str:
    """The error for a trace whose pages (per task, unless shared) do not fit in guest memory."""
    need = distinct_pages * (1 if shared else tasks)
    how = "shared by the tasks" if shared or tasks == 1 else f"x {tasks} tasks"
    mib = -(-need * PAGE_SIZE // (1 << 20))
    return (f"{path}: the trace's footprint ({distinct_pages} pages {how} = {need} pages) does not fit in guest "
            f"memory ({guest_pages} pages): give --guest-mem {mib}MiB or more"
            + ("" if shared or tasks == 1 else ", fewer --tasks, or --trace-shared"))


def where_is_token(host_tokens: Any, token: int, now_ns: int) -> str:
    """Where the host's STATS `apf.tokens` (SPEC §4.5) places `token`, in words. The host's
    answer is checked here: a malformed entry reads as absent."""
    if not isinstance(host_tokens, list):
        return "host: not asked"
    vcpu = token & TOKEN_VCPU_MASK
    mine = host_tokens[vcpu] if vcpu < len(host_tokens) and isinstance(host_tokens[vcpu], dict) else {}
    if mine.get("slot") == token:
        return "host: in the page-ready slot, not taken"
    if token in _int_list(mine.get("done")):
        return "host: in the done queue"
    gfn = dict(_int_pairs(mine.get("outstanding"))).get(token)
    if gfn is not None:
        return f"host: outstanding (page {gfn}), no page-ready sent yet"
    at = dict(_int_pairs(mine.get("delivered"))).get(token)
    if at is not None:
        return f"host: delivered {(now_ns - at) / 1e9:.1f}s ago, lost in the guest"
    return "host: unknown (neither queued, outstanding nor among the last deliveries)"


def _int_list(value: Any) -> list[int]:
    return [v for v in value if type(v) is int] if isinstance(value, list) else []


def _int_pairs(value: Any) -> list[tuple[int, int]]:
    if not isinstance(value, list):
        return []
    return [(p[0], p[1]) for p in value if isinstance(p, list) and len(_int_list(p)) == len(p) == 2]


def _host_info(cfg: GuestConfig) -> dict[str, Any]:
    """The run dir's host.json. A run dir or host.json not there yet (a host still starting, as when
    host and guest are started one after the other) is looked for again every ATTACH_POLL_S within
    --attach-wait. Raises RunDirError naming --attach-wait when it is still not there."""
    give_up = time.monotonic() + cfg.attach_wait_ns / 1e9
    while True:
        info = rundir.read_host_json(cfg.run_dir, missing_ok=True) if os.path.isdir(cfg.run_dir) else None
        if info is not None:
            return info
        if time.monotonic() + ATTACH_POLL_S > give_up:
            break
        time.sleep(ATTACH_POLL_S)
    try:
        rundir.read_host_json(cfg.run_dir)     # raises the error that says what is missing
    except RunDirError as exc:
        hint = (f"still, after waiting {cfg.attach_wait_ns / 1e9:g}s (--attach-wait)" if cfg.attach_wait_ns
                else "--attach-wait DUR waits for a host that is still starting")
        raise RunDirError(f"{exc} ({hint})") from None
    return rundir.read_host_json(cfg.run_dir)  # it appeared just now


def run_guest(cfg: GuestConfig) -> int:
    """Run one guest to completion; write the report; 0 if the run succeeded."""
    guest = Guest(cfg)
    signal.signal(signal.SIGTERM, lambda *_: guest.fail("guest stopped by SIGTERM"))
    signal.signal(signal.SIGINT, lambda *_: guest.fail("guest interrupted"))
    try:
        report = guest.run()
    finally:
        guest.close()
    if rundir.remove_if_orphaned(cfg.run_dir):   # the apf run that would read the report is gone
        return 1
    if cfg.report:
        tmp = cfg.report + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, sort_keys=True)
        os.replace(tmp, cfg.report)
    if not rundir.under_apf_run():   # else `apf run` prints it: a failure is said once
        print_summary(report)
        if cfg.report:
            print(f"report: {cfg.report}")
    return 0 if report["ok"] else 1
