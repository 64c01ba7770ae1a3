"""Message kinds and one frozen dataclass per message.

Every frame is one msgpack array: `[version, kind, seq, field...]`. `seq` is the requester's
correlation number, echoed by the reply; unsolicited messages (INJECT_IRQ, TLBI) carry the
sender's own counter. The field list of each kind is the dataclass's field order (after `seq`).

| kind | name        | dir  | fields after seq                       | reply          |
|------|-------------|------|----------------------------------------|----------------|
| 1    | HELLO       | g->h | nr_vcpus, pid, name                    | WELCOME/ERROR  |
| 2    | TRAP        | g->h | vcpu, ipa, access, ctx                 | RESUME/INJECT_EXC/ERROR |
| 3    | HVC         | g->h | vcpu, func_id, args (list, <= 4 u64)   | HVC_RET/ERROR  |
| 4    | TLBI_ACK    | g->h | batch                                  | -              |
| 5    | STATS       | any  | -                                      | STATS_REPLY    |
| 6    | HEARTBEAT   | both | -                                      | -              |
| 7    | WFI         | g->h | vcpu (the vCPU idles: nothing to run)  | -              |
| 16   | WELCOME     | h->g | info (map: str -> scalar)              | -              |
| 17   | RESUME      | h->g | vcpu                                   | -              |
| 18   | INJECT_EXC  | h->g | vcpu, vector, token                    | -              |
| 19   | INJECT_IRQ  | h->g | vcpu, irq                              | -              |
| 20   | HVC_RET     | h->g | vcpu, ret (list of 4 i64)              | -              |
| 21   | TLBI        | h->g | batch, pages                           | TLBI_ACK       |
| 22   | STATS_REPLY | h->g | stats (map: str -> any)                | -              |
| 23   | ERROR       | h->g | code, reason                           | -              |
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import IntEnum, IntFlag
from typing import Any, ClassVar

PROTOCOL_VERSION = 1
PAGE_SIZE = 4096
MAX_FRAME_BYTES = 64 * 1024  # every socket sets ZMQ_MAXMSGSIZE to this
MAX_VCPUS = 4096             # the vCPU id lives in the token's low 12 bits

# Liveness (SPEC.md "Heartbeating"): each side sends HEARTBEAT every interval while attached, and
# takes the peer for dead when nothing at all arrived from it for INTERVAL x LIVENESS. Death is
# noticed at once through the lifeline; this expiry is for a peer alive and silent, and must
# outlast a loaded machine's scheduling stalls (1.1-1.3 s were seen on 2 busy cores).
HEARTBEAT_INTERVAL_MS = 250
HEARTBEAT_LIVENESS = 12
HEARTBEAT_EXPIRY_MS = HEARTBEAT_INTERVAL_MS * HEARTBEAT_LIVENESS
# A TLBI not acknowledged within this long ends the session: reclaim cannot go on without it.
TLBI_ACK_TIMEOUT_MS = 5000


class Kind(IntEnum):
    HELLO = 1
    TRAP = 2
    HVC = 3
    TLBI_ACK = 4
    STATS = 5
    HEARTBEAT = 6
    WFI = 7
    WELCOME = 16
    RESUME = 17
    INJECT_EXC = 18
    INJECT_IRQ = 19
    HVC_RET = 20
    TLBI = 21
    STATS_REPLY = 22
    ERROR = 23


class Access(IntEnum):
    READ = 0
    WRITE = 1


class Ctx(IntFlag):
    """The faulting task's context, as the trap reports it (bit 2 up: reserved, must be zero)."""
    USER = 0
    KERNEL = 1 << 0     # the access came from guest kernel mode
    IRQS_OFF = 1 << 1   # interrupts disabled / non-preemptible section


CTX_MASK = int(Ctx.KERNEL | Ctx.IRQS_OFF)


class Vector(IntEnum):
    """Exceptions the host injects as a trap's answer."""
    PAGE_NOT_PRESENT = 1


class Irq(IntEnum):
    """Interrupts the host injects unsolicited (the PPI the guest chose is in its control block)."""
    PAGE_READY = 1


@dataclass(frozen=True)
class Limits:
    """What range checks need to know about the session (None: check types only)."""
    nr_vcpus: int = MAX_VCPUS
    guest_mem: int = 1 << 64


class Message:
    """Base of all messages. Subclasses are frozen dataclasses with a `KIND`."""
    KIND: ClassVar[Kind]
    FIELDS: ClassVar[tuple[str, ...]]   # wire order after the kind, `seq` first
    seq: int

    def values(self) -> list[Any]:
        return [getattr(self, name) for name in self.FIELDS]


_REGISTRY: dict[Kind, type[Message]] = {}


def message(cls):
    """Register a message class under its KIND."""
    cls = dataclass(frozen=True)(cls)
    cls.FIELDS = tuple(f.name for f in fields(cls))
    _REGISTRY[cls.KIND] = cls
    return cls


def message_class(kind: Kind) -> type[Message]:
    return _REGISTRY[kind]


@message
class Hello(Message):
    KIND: ClassVar = Kind.HELLO
    seq: int
    nr_vcpus: int
    pid: int
    name: str


@message
class Trap(Message):
    KIND: ClassVar = Kind.TRAP
    seq: int
    vcpu: int
    ipa: int
    access: Access
    ctx: Ctx


@message
class Hvc(Message):
    KIND: ClassVar = Kind.HVC
    seq: int
    vcpu: int
    func_id: int
    args: tuple = field(default=())


@message
class TlbiAck(Message):
    KIND: ClassVar = Kind.TLBI_ACK
    seq: int
    batch: int


@message
class Stats(Message):
    KIND: ClassVar = Kind.STATS
    seq: int


@message
class Heartbeat(Message):
    KIND: ClassVar = Kind.HEARTBEAT
    seq: int


@message
class Wfi(Message):
    """A vCPU with nothing to run waits for an interrupt (WFI traps to the host, as on arm64)."""
    KIND: ClassVar = Kind.WFI
    seq: int
    vcpu: int


@message
class Welcome(Message):
    KIND: ClassVar = Kind.WELCOME
    seq: int
    info: dict


@message
class Resume(Message):
    KIND: ClassVar = Kind.RESUME
    seq: int
    vcpu: int


@message
class InjectExc(Message):
    KIND: ClassVar = Kind.INJECT_EXC
    seq: int
    vcpu: int
    vector: Vector
    token: int


@message
class InjectIrq(Message):
    KIND: ClassVar = Kind.INJECT_IRQ
    seq: int
    vcpu: int
    irq: Irq


@message
class HvcRet(Message):
    KIND: ClassVar = Kind.HVC_RET
    seq: int
    vcpu: int
    ret: tuple


@message
class Tlbi(Message):
    KIND: ClassVar = Kind.TLBI
    seq: int
    batch: int
    pages: int


@message
class StatsReply(Message):
    KIND: ClassVar = Kind.STATS_REPLY
    seq: int
    stats: dict


@message
class Error(Message):
    KIND: ClassVar = Kind.ERROR
    seq: int
    code: int
    reason: str


__all__ = ["PROTOCOL_VERSION", "PAGE_SIZE", "MAX_FRAME_BYTES", "MAX_VCPUS", "HEARTBEAT_INTERVAL_MS",
           "HEARTBEAT_LIVENESS", "HEARTBEAT_EXPIRY_MS", "TLBI_ACK_TIMEOUT_MS", "Kind", "Access",
           "Ctx", "CTX_MASK", "Vector", "Irq", "Limits", "Message", "message_class", "Hello",
           "Trap", "Hvc", "TlbiAck", "Stats", "Heartbeat", "Wfi", "Welcome", "Resume", "InjectExc",
           "InjectIrq", "HvcRet", "Tlbi", "StatsReply", "Error"]
