"""A vCPU: a thread that owns one DEALER socket to the host and runs guest tasks.

Every access goes through the MMU check; a miss traps to the host and the vCPU blocks for the
answer (that time is `stall`). The answer is RESUME (retry the access), the injected
PAGE_NOT_PRESENT exception (park the task on its token, run another), or an ERROR. Interrupts
(page-ready) that arrive while the vCPU waits are kept pending and taken at the next
instruction boundary: between two accesses, or while idle.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from array import array
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

import zmq

from guest.apf import GuestApf, Ready
from guest.config import GuestConfig
from guest.haltpoll import Adjust, HaltPollWindow, poll
from guest.memory import AccessResult, GuestMemory
from guest.scheduler import Scheduler, Task
from guest.think import Thinker
from guest.workload import Access
from protocol import ErrorCode, PeerLostError, ProtocolError, decode
from protocol.hypercalls import DEFAULT_PAGE_READY_PPI, ApfFlags, FuncId, SmcccRet
from protocol.messages import (PAGE_SIZE, Access as AccessKind, Ctx, Hvc,
                               HvcRet, InjectExc, Kind, Limits, Message, Resume, Trap, Wfi)
from shared.layout import block_offset
from protocol.errors import GuestError

log = logging.getLogger("apf.guest")

IDLE_POLL_MS = 100     # an idle vCPU re-checks for the end of the run this often
ZMQ_EVENTS, ZMQ_POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)   # plain ints: enum arithmetic costs µs per access


class Aborted(Exception):
    """Another part of the guest failed; this vCPU stops."""


class StepResult(Enum):
    DONE = "done"          # the access completed
    PARKED = "parked"      # the task sleeps on a token
    FAILED = "failed"      # memory failure: the task ends


@dataclass
class VcpuStats:
    stall_ns: int = 0            # blocked in a trap
    idle_ns: int = 0             # nothing runnable: waiting for an interrupt
    hvc_ns: int = 0              # blocked in hypercalls (APF_ACK and friends)
    traps: int = 0
    resolved_sync: int = 0       # answered by RESUME
    async_faults: int = 0        # answered by PAGE_NOT_PRESENT
    page_ready: int = 0
    wake_all: int = 0
    spurious_irqs: int = 0       # interrupt with an empty slot
    stray_tokens: int = 0        # page-ready for a token nobody sleeps on (left a placeholder)
    bad_exceptions: int = 0      # control block disagreed with the injected exception
    unexpected: int = 0          # valid messages that were not the awaited reply
    rejected: int = 0            # frames from the host that failed validation
    memory_failures: int = 0
    acks_withheld: int = 0       # injected: page-readies never acknowledged
    reenabled: int = 0           # APF_ENABLE again after an offline (CPU hotplug, suspend)
    async_after_reenable: int = 0   # asynchronous faults taken after the last re-enable
    offline_ns: int = 0          # offline (hotplug, suspend): neither running nor taking interrupts
    masked_ns: int = 0           # the page-ready PPI masked (interrupts off for a trap, offline)
    bad_notifications: int = 0   # host bugs the guest caught (a notification it could not take)
    halt_polls: int = 0          # idle periods that polled first (--halt-poll; KVM halt_attempted_poll)
    halt_poll_hits: int = 0      # ... whose event came while polling (KVM halt_successful_poll)
    halt_poll_ns: int = 0        # time spent polling, hits and misses (part of idle_ns)
    halt_poll_hit_ns: int = 0    # ... of which in polls that caught their event (KVM halt_poll_success_ns)
    halt_blocks: int = 0         # idle periods that blocked (in zmq_poll, woken by the kernel)
    halt_poll_grows: int = 0     # poll window adjustments (guest/haltpoll.py)
    halt_poll_shrinks: int = 0
    fault_latency_ns: array = field(default_factory=lambda: array("Q"))


@dataclass(frozen=True)
class VcpuPorts:
    """Everything a vCPU thread may use, filled by the guest daemon (as Firecracker's vCPU sees only
    its channels): the configuration, its way to the host, the shared guest state it works on, and
    the one way to stop the run."""
    cfg: GuestConfig
    endpoint: str                                     # for messages about the host
    limits: Limits                                    # what decode() accepts from the host
    control_ipa: int                                  # IPA of the control window (APF_ENABLE)
    open_socket: Callable[[str], zmq.Socket]          # a DEALER to the host, named by role
    send: Callable[[zmq.Socket, Message], None]       # raises PeerLostError when the host takes nothing
    heard_from_host: Callable[[], None]               # refresh the host's liveness stamp
    sched: Scheduler
    mem: GuestMemory
    apf: GuestApf[Task]
    thinker: Thinker
    tracer: Any                                       # the trace writer (instant, span)
    chaos: Any                                        # the guest's fault-injection rules (fires)
    poisoned: set[int]                                # pages the host reported lost
    fail: Callable[[str], None]                       # stop the whole run, with the reason


class Vcpu(threading.Thread):
    def __init__(self, ports: VcpuPorts, index: int):
        super().__init__(name=f"vcpu-{index}", daemon=True)
        self.ports = ports
        self.index = index
        self.phase_stats: dict[str, VcpuStats] = {}   # the run's phases are accounted apart
        self.stats = self._stats_of("workload")
        self.pending_irqs = 0
        self.apf_enabled = False      # from sending APF_ENABLE until APF_DISABLE's answer
        self.reenabled = False        # APF was enabled again after an offline: count async faults
        self._posted: dict[int, FuncId] = {}   # seq -> posted hypercall awaiting its HVC_RET
        self._seq = 0
        self.sock: zmq.Socket | None = None
        self._idle_poller: zmq.Poller | None = None
        self._idle_announced = False
        self.halt_poll = HaltPollWindow(ports.cfg.halt_poll_ns) if ports.cfg.halt_poll_ns else None
        self.started_ns = self.ended_ns = 0

    def _stats_of(self, phase: str) -> VcpuStats:
        stats = self.phase_stats.get(phase)
        if stats is None:
            stats = self.phase_stats[phase] = VcpuStats()
        return stats

    # -- thread body -----------------------------------------------------------------------------
    def run(self) -> None:
        self.started_ns = time.monotonic_ns()
        try:
            self.sock = self.ports.open_socket(f"vcpu{self.index}")
            # A trap waits in a blocking recv, not a poll: zmq_poll costs a Poller and two more
            # syscalls per round trip; the bound lets the wait re-check for an aborted run.
            self.sock.setsockopt(zmq.RCVTIMEO, IDLE_POLL_MS)
            if self.ports.cfg.mode == "async":
                self._enable_apf()
            self._schedule()
        except Aborted:
            pass
        except (GuestError, PeerLostError, ProtocolError) as exc:
            self.ports.fail(f"vCPU {self.index}: {exc}")
        except Exception as exc:  # a bug must stop the run with its reason, not hang it
            log.exception("vCPU %d crashed", self.index)
            self.ports.fail(f"vCPU {self.index} crashed: {exc!r}")
        finally:
            self.ended_ns = time.monotonic_ns()
            if self.sock is not None:
                self.sock.close(linger=0)

    def _schedule(self) -> None:
        sched = self.ports.sched
        while not sched.finished:
            if sched.suspended_until_ns > time.monotonic_ns():
                self._offline(sched.suspended_until_ns)
                continue
            task = sched.pick(self.index)
            if task is None:
                self._idle()
                continue
            self._run_task(task)
        if sched.aborted:
            raise Aborted()

    def _run_task(self, task: Task) -> None:
        g = self.ports
        self._idle_announced = False
        self.stats = self._stats_of(task.phase)
        self._interrupt_window()   # a wake-all pending from before must not wake this task later
        start = time.monotonic_ns()
        try:
            while True:
                access = task.current
                if access is None:
                    g.sched.finish(task)
                    return
                if task.compute:
                    g.thinker.think(access.ns)      # a compute step: CPU work, no memory access
                else:
                    if not task.thought and g.cfg.think_ns:
                        g.thinker.think(g.cfg.think_ns)
                        task.thought = True
                    result = self._step(task, access)
                    if result == StepResult.PARKED:
                        return
                    if result == StepResult.FAILED:
                        g.sched.finish(task, task.error)
                        return
                task.advance()
                if g.sched.deadline_ns and g.sched.past_deadline():
                    g.sched.finish(task)          # --duration: the phase is over
                    return
                self._interrupt_window()
                if not task.compute and self._lifecycle_event(task):
                    return
                if g.sched.preempt_due(self.index, task):
                    return
        finally:
            g.tracer.span("run", self.index, start, time.monotonic_ns(), task=task.name)

    def _step(self, task: Task, access: Access) -> StepResult:
        mem = self.ports.mem
        while True:
            if mem.access(access.gfn, access.write) != AccessResult.MISS:
                return StepResult.DONE
            reply = self._trap(access)
            if isinstance(reply, Resume):
                continue
            if isinstance(reply, InjectExc):
                self._check_can_sleep(access, reply)
                if self._page_not_present(task, reply):
                    return StepResult.PARKED
                continue          # the page-ready came first: retry at once
            if reply.code == ErrorCode.MEMORY_FAILURE:
                self.stats.memory_failures += 1
                self.ports.poisoned.add(access.gfn)
                if task.phase == "verify":
                    return StepResult.DONE     # the read-back counts the page as lost, and goes on
                task.error = f"task {task.name} killed: {reply.reason} (like SIGBUS on a poisoned page)"
                log.error("%s", task.error)
                return StepResult.FAILED
            raise GuestError(f"host refused a trap at IPA {access.gfn * PAGE_SIZE:#x}: {reply.reason}")

    # -- traps and hypercalls ----------------------------------------------------------------------
    def _trap(self, access: Access) -> Message:
        kind = AccessKind.WRITE if access.write else AccessKind.READ
        # Interrupts off for the whole trap: the page-ready PPI is masked meanwhile, so the host
        # keeps completions queued instead of raising an interrupt this context cannot take.
        # (`is not USER` first: most accesses are user mode, and IntFlag arithmetic costs ~1 µs.)
        masked = access.ctx is not Ctx.USER and self.apf_enabled and bool(access.ctx & Ctx.IRQS_OFF)
        if masked:
            self.post_hvc(FuncId.GIC_PPI_DISABLE, DEFAULT_PAGE_READY_PPI)
        start = time.monotonic_ns()
        reply = self._call(Trap(self._next_seq(), self.index, access.gfn * PAGE_SIZE, kind, access.ctx),
                           (Kind.RESUME, Kind.INJECT_EXC))
        end = time.monotonic_ns()
        if masked:
            self.post_hvc(FuncId.GIC_PPI_ENABLE, DEFAULT_PAGE_READY_PPI)
            self.stats.masked_ns += end - start
        self.stats.traps += 1
        self.stats.stall_ns += end - start
        self.stats.fault_latency_ns.append(end - start)
        if isinstance(reply, Resume):
            self.stats.resolved_sync += 1
        elif isinstance(reply, InjectExc):
            self.stats.async_faults += 1
            if self.reenabled:
                self.stats.async_after_reenable += 1
        self.ports.tracer.span("stall", self.index, start, end, gfn=access.gfn, vcpu=self.index,
                               token=getattr(reply, "token", 0))
        return reply

    def hvc(self, func: FuncId, *args: int) -> tuple[int, ...]:
        start = time.monotonic_ns()
        reply = self._call(Hvc(self._next_seq(), self.index, int(func), tuple(args)), (Kind.HVC_RET,))
        self.stats.hvc_ns += time.monotonic_ns() - start
        if not isinstance(reply, HvcRet):
            raise GuestError(f"host refused hypercall {func.name}: {getattr(reply, 'reason', reply)}")
        return reply.ret

    def post_hvc(self, func: FuncId, *args: int) -> None:
        """A hypercall whose return the vCPU does not wait for (APF_ACK, like an MSR write that
        needs no answer); its HVC_RET is checked when it arrives."""
        start = time.monotonic_ns()
        seq = self._next_seq()
        self._send(Hvc(seq, self.index, int(func), tuple(args)))
        self._posted[seq] = func
        self.stats.hvc_ns += time.monotonic_ns() - start

    def _next_seq(self) -> int:
        """The seq of this vCPU's next request (1 .. 2^32-1, wrapping); replies echo it."""
        self._seq = (self._seq % 0xFFFFFFFF) + 1
        return self._seq

    def _send(self, request: Message) -> None:
        self.ports.send(self.sock, request)

    def _call(self, request: Message, expect: tuple[Kind, ...]) -> Message:
        """Send `request` and wait (bounded) for its reply; interrupts meanwhile stay pending."""
        self._send(request)
        timeout_ns = self.ports.cfg.reply_timeout_ns
        deadline = time.monotonic_ns() + timeout_ns
        while True:
            if self.ports.sched.aborted:
                raise Aborted()
            try:
                reply = self._receive()
            except zmq.Again:   # RCVTIMEO: nothing within IDLE_POLL_MS
                if time.monotonic_ns() > deadline:
                    raise PeerLostError(f"host at {self.ports.endpoint} did not answer "
                                        f"{request.KIND.name} within {timeout_ns / 1e9:g}s") from None
                continue
            if reply is None:
                continue
            if reply.seq == request.seq and (reply.KIND in expect or reply.KIND == Kind.ERROR):
                return reply
            self._unsolicited(reply)

    def _receive(self) -> Message | None:
        frame = self.sock.recv()
        self.ports.heard_from_host()
        try:
            return decode(frame, self.ports.limits)
        except ProtocolError as exc:
            self.stats.rejected += 1
            log.warning("vCPU %d rejected a frame from the host: %s", self.index, exc)
            return None

    def _unsolicited(self, msg: Message) -> None:
        if msg.KIND == Kind.INJECT_IRQ and msg.vcpu == self.index:
            if not self.apf_enabled:
                self._bad_notification("a page-ready interrupt while APF is disabled on this vCPU")
            self.pending_irqs += 1
        elif msg.KIND in (Kind.HVC_RET, Kind.ERROR) and msg.seq in self._posted:
            func = self._posted.pop(msg.seq)
            if msg.KIND == Kind.ERROR:
                raise GuestError(f"host refused hypercall {func.name}: {msg.reason}")
            if msg.ret[0] != SmcccRet.SUCCESS:
                raise GuestError(f"host refused hypercall {func.name} (SMCCC return {msg.ret[0]})")
        elif msg.KIND == Kind.ERROR and msg.code == ErrorCode.VERSION:
            raise GuestError(f"host refused our protocol: {msg.reason}")
        else:
            self.stats.unexpected += 1

    def _drain_socket(self) -> None:
        while self.sock.poll(0):
            msg = self._receive()
            if msg is not None:
                self._unsolicited(msg)

    # -- the two APF notifications ------------------------------------------------------------------
    def _enable_apf(self) -> None:
        ret = self.hvc(FuncId.APF_FEATURES)
        if ret[0] != SmcccRet.SUCCESS:
            raise GuestError("host does not offer asynchronous page faults (APF_FEATURES failed)")
        flags = ApfFlags.ENABLED | ApfFlags.DELIVERY_AS_INT
        if self.ports.cfg.send_always:
            flags |= ApfFlags.SEND_ALWAYS
        ipa = self.ports.control_ipa + block_offset(self.index)
        self.apf_enabled = True      # the enable's wake-all may arrive before its answer
        ret = self.hvc(FuncId.APF_ENABLE, ipa | int(flags), DEFAULT_PAGE_READY_PPI)
        if ret[0] != SmcccRet.SUCCESS:
            self.apf_enabled = False
            raise GuestError(f"host refused APF_ENABLE for vCPU {self.index} (SMCCC return {ret[0]})")
        self._interrupt_window()   # take the enable's wake-all before any task can park

    def _page_not_present(self, task: Task, exc: InjectExc) -> bool:
        """The injected exception: park the task on its token. False: the wake came first."""
        g = self.ports
        result = g.apf.page_not_present(self.index, exc.token, task)
        if not result.consistent:
            self.stats.bad_exceptions += 1
        if result.parked:
            g.tracer.instant("apf_sleep", self.index, token=exc.token, vcpu=self.index,
                             gfn=task.current.gfn, task=task.name)
            if g.chaos.fires("kill-guest", "parked"):
                os.kill(os.getpid(), signal.SIGKILL)   # injected: the guest dies with faults outstanding
        return result.parked

    def _interrupt_window(self) -> None:
        if self.sock.get(ZMQ_EVENTS) & ZMQ_POLLIN:
            self._drain_socket()
        while self.pending_irqs:
            self.pending_irqs -= 1
            self._page_ready()

    def _page_ready(self) -> None:
        """The page-ready interrupt: the handler takes the slot and wakes; count, trace, ACK."""
        g = self.ports
        result = g.apf.page_ready(self.index)
        outcome = result.outcome
        if outcome is Ready.SPURIOUS:
            self.stats.spurious_irqs += 1
            return
        if outcome is Ready.WAKE_ALL:
            self.stats.wake_all += 1
        else:
            self.stats.page_ready += 1
            if outcome is Ready.EARLY:
                self.stats.stray_tokens += 1
        for token, task in result.woken:
            g.tracer.instant("apf_wake", self.index, token=token, vcpu=self.index,
                             gfn=task.current.gfn if task.current else -1, task=task.name)
        self._ack()

    def _ack(self) -> None:
        rule = self.ports.chaos.fires("ack")
        if rule is not None and rule.action == "never":
            self.stats.acks_withheld += 1      # injected: the slot is clear, the host is not told
            return
        if rule is not None:
            time.sleep(rule.delay_ns / 1e9)   # injected: a slow guest acks late
        self.post_hvc(FuncId.APF_ACK)

    # -- the guest's own checks ---------------------------------------------------------------------
    def _check_can_sleep(self, access: Access, exc: InjectExc) -> None:
        """A PAGE_NOT_PRESENT may only reach a context that can sleep (SPEC §8): a host that
        sends one with interrupts off, or to kernel mode without SEND_ALWAYS, has a bug (Linux
        would panic)."""
        if access.ctx & Ctx.IRQS_OFF:
            self._bad_notification(f"PAGE_NOT_PRESENT (token {exc.token:#x}) injected with interrupts off")
        if access.ctx & Ctx.KERNEL and not self.ports.cfg.send_always:
            self._bad_notification(f"PAGE_NOT_PRESENT (token {exc.token:#x}) injected into kernel mode "
                                   "without SEND_ALWAYS")

    def _bad_notification(self, what: str) -> None:
        self.stats.bad_notifications += 1
        raise GuestError(f"host bug: {what} (a Linux guest would panic)")

    # -- CPU hotplug and suspend ----------------------------------------------------------------------
    def _lifecycle_event(self, task: Task) -> bool:
        """After an access: chaos may take this vCPU offline (hotplug) or suspend the guest. True
        if the task was handed back to the run queue."""
        chaos = self.ports.chaos
        if not chaos:
            return False
        suspend = chaos.fires("suspend", "all")
        if suspend is not None:
            self.ports.sched.suspend(time.monotonic_ns() + suspend.delay_ns)
        hotplug = chaos.fires("cpu-hotplug", "offline") if suspend is None else None
        if suspend is None and hotplug is None:
            return False
        self.ports.sched.requeue(task)      # stop running it here: another vCPU takes it
        if hotplug is not None:
            self._offline(time.monotonic_ns() + hotplug.delay_ns)
        return True

    def _offline(self, until_ns: int) -> None:
        """As Linux's CPU-offline path (`kvm_cpu_down_prepare`): mask the page-ready PPI, disable
        APF, wake every task parked on this vCPU's tokens (they retry, on another vCPU if one is
        online), and take no interrupt until `until_ns`; then online again."""
        g = self.ports
        start = time.monotonic_ns()
        g.tracer.instant("cpu_offline", self.index, vcpu=self.index)
        if self.apf_enabled:
            self._set_ppi(FuncId.GIC_PPI_DISABLE)
            ret = self.hvc(FuncId.APF_DISABLE)
            if ret[0] != SmcccRet.SUCCESS:
                raise GuestError(f"host refused APF_DISABLE for vCPU {self.index} (SMCCC return {ret[0]})")
            self.apf_enabled = False
            self.pending_irqs = 0        # raised for a CPU that is going away: never taken
            for token, task in g.apf.wake_all(self.index):
                g.tracer.instant("apf_wake", self.index, token=token, vcpu=self.index, task=task.name)
        while time.monotonic_ns() < until_ns:
            if g.sched.aborted:
                raise Aborted()
            if self.sock.poll(min(IDLE_POLL_MS, max(1, (until_ns - time.monotonic_ns()) // 1_000_000))):
                self._drain_socket()    # a page-ready now is a host bug (_unsolicited)
        end = time.monotonic_ns()
        self.stats.offline_ns += end - start
        g.tracer.span("offline", self.index, start, end, vcpu=self.index)
        if g.cfg.mode == "async":
            self._set_ppi(FuncId.GIC_PPI_ENABLE)
            self.stats.masked_ns += time.monotonic_ns() - start
            self._enable_apf()
            self.stats.reenabled += 1
            self.reenabled = True

    def _set_ppi(self, func: FuncId) -> None:
        ret = self.hvc(func, DEFAULT_PAGE_READY_PPI)
        if ret[0] != SmcccRet.SUCCESS:
            raise GuestError(f"host refused {func.name} for vCPU {self.index} (SMCCC return {ret[0]})")

    # -- idle ---------------------------------------------------------------------------------------
    def _idle(self) -> None:
        """Nothing runnable: wait for an interrupt or a kick, without spinning (WFI); with
        --halt-poll, poll for it first for the vCPU's current window (guest/haltpoll.py), as the
        guest's haltpoll cpuidle governor polls before it executes HLT / WFI."""
        self._interrupt_window()        # interrupts that arrived during the last trap come first
        if self.ports.sched.has_waiting():
            return
        start = time.monotonic_ns()
        self.stats = self._stats_of(self.ports.sched.current_phase)
        if not self._idle_announced and self.ports.cfg.mode == "async":
            # Announced before any polling, so that --policy adaptive sees the same idle time with
            # and without it (a real polling guest hides the halts its polls catch from the host).
            self._send(Wfi(self._next_seq(), self.index))   # WFI traps to the host: it learns async left us idle
            self._idle_announced = True
        if self.halt_poll is None or not self._poll_before_blocking():
            self._block()
        end = time.monotonic_ns()
        if self.halt_poll is not None:
            adjust = self.halt_poll.reflect(end - start)
            if adjust is Adjust.GREW:
                self.stats.halt_poll_grows += 1
            elif adjust is Adjust.SHRANK:
                self.stats.halt_poll_shrinks += 1
        self.stats.idle_ns += end - start
        self.ports.tracer.span("idle", self.index, start, end, vcpu=self.index)
        self._interrupt_window()

    def _block(self) -> None:
        """Block (bounded) until the host sends something or another vCPU kicks this one."""
        self.stats.halt_blocks += 1
        kick_fd = self.ports.sched.kick_fd(self.index)
        if self._idle_poller is None:
            self._idle_poller = zmq.Poller()
            self._idle_poller.register(self.sock, zmq.POLLIN)
            self._idle_poller.register(kick_fd, zmq.POLLIN)
        events = dict(self._idle_poller.poll(IDLE_POLL_MS))
        if kick_fd in events:
            self.ports.sched.drain_kicks(self.index)

    def _poll_before_blocking(self) -> bool:
        """Poll for this halt's window; True if the wake-up event came meanwhile (no block)."""
        window = self.halt_poll.poll_ns()
        if not window:
            return False
        # Between two looks, sched_yield (cpu_relax's part): the thread stays runnable, without
        # a wake-up to pay, but lets the host process have the core and drops the GIL.
        caught, polled = poll(window, self._wake_pending, time.monotonic_ns, os.sched_yield)
        self.stats.halt_polls += 1
        self.stats.halt_poll_ns += polled
        if caught:
            self.stats.halt_poll_hits += 1
            self.stats.halt_poll_hit_ns += polled
            if not self.sock.get(ZMQ_EVENTS) & ZMQ_POLLIN:
                self.ports.sched.drain_kicks(self.index)   # a kick for what the poll saw would wake the next block
        return caught

    def _wake_pending(self) -> bool:
        """What would end a blocked idle: a message from the host (the page-ready interrupt), a
        runnable task, a suspend starting, or the end of the run: one socket option read and
        three peeks, nothing that sleeps."""
        sched = self.ports.sched
        return bool(self.sock.get(ZMQ_EVENTS) & ZMQ_POLLIN or sched.nr_queued or sched.aborted is not None
                    or sched.suspended_until_ns > time.monotonic_ns())
