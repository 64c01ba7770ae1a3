"""Encoding, and the one boundary where frames from the other side are validated.

msgpack can raise more than its own exception types on hostile input, so `decode()` wraps
*any* failure into `ProtocolError`; nothing past this function sees an unchecked value.
"""
from __future__ import annotations

from typing import Any, Callable

import msgpack

from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import (CTX_MASK, MAX_FRAME_BYTES, MAX_VCPUS, PAGE_SIZE, PROTOCOL_VERSION, Access,
                               Ctx, Irq, Kind, Limits, Message, Vector, message_class)

U16, U32, U64 = (1 << 16) - 1, (1 << 32) - 1, (1 << 64) - 1
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
MAX_NAME = 256
MAX_MAP_ITEMS = 512


def encode(msg: Message) -> bytes:
    return msgpack.packb([PROTOCOL_VERSION, int(msg.KIND), *msg.values()], use_bin_type=True)


def decode(frame: bytes, limits: Limits | None = None) -> Message:
    """Parse and validate one frame; raise ProtocolError naming the first rule it breaks."""
    limits = limits or Limits()
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError(ErrorCode.MALFORMED, f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        items = msgpack.unpackb(frame, raw=False, strict_map_key=True, use_list=True,
                                max_str_len=MAX_FRAME_BYTES, max_bin_len=MAX_FRAME_BYTES)
    except Exception as exc:  # msgpack raises ValueError, TypeError, ExtraData, ... on bad input
        raise ProtocolError(ErrorCode.MALFORMED, f"not a msgpack frame ({type(exc).__name__})") from exc
    if not isinstance(items, list) or len(items) < 3:
        raise ProtocolError(ErrorCode.MALFORMED, "a frame is an array [version, kind, seq, ...]")
    try:
        return _decode_items(items, limits)
    except ProtocolError as exc:
        seq = items[2]
        if type(seq) is int and 0 <= seq <= U32:
            exc.seq = seq
        raise


def _decode_items(items: list, limits: Limits) -> Message:
    version, kind_no = items[0], items[1]
    if type(version) is not int:
        raise ProtocolError(ErrorCode.MALFORMED, "version must be an integer")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(ErrorCode.VERSION,
                            f"protocol version {version} is not supported (this side speaks {PROTOCOL_VERSION})")
    plan = _PLANS.get(kind_no) if type(kind_no) is int else None
    if plan is None:
        raise ProtocolError(ErrorCode.UNKNOWN_KIND, f"unknown message kind {kind_no!r}")
    cls, fields = plan
    values = items[2:]
    if len(values) != len(fields):
        raise ProtocolError(ErrorCode.MALFORMED,
                            f"{cls.KIND.name} has {len(fields)} fields after the kind, got {len(values)}")
    kind = cls.KIND
    return cls(*[check(kind, name, value, limits) for (name, check), value in zip(fields, values)])


# Each check returns the field's decoded value or raises ProtocolError. The common case (a valid
# value) is tested inline; the _need_* functions run only to name what is wrong. Every trap and
# its answer pass through here, so the fast path is worth the closures.

def _need_int(kind: Kind, name: str, value: Any, lo: int, hi: int) -> int:
    if type(value) is not int:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{kind.name}.{name} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ProtocolError(ErrorCode.OUT_OF_RANGE, f"{kind.name}.{name}={value} is outside [{lo}, {hi}]")
    return value


def _need_str(kind: Kind, name: str, value: Any, max_len: int) -> str:
    if type(value) is not str:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{kind.name}.{name} must be a string")
    if len(value) > max_len:
        raise ProtocolError(ErrorCode.OUT_OF_RANGE, f"{kind.name}.{name} is longer than {max_len}")
    return value


def _need_map(kind: Kind, name: str, value: Any) -> dict:
    if type(value) is not dict:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{kind.name}.{name} must be a map")
    if len(value) > MAX_MAP_ITEMS or not all(type(k) is str for k in value):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{kind.name}.{name} must map strings, at most {MAX_MAP_ITEMS}")
    return value


def _need_int_list(kind: Kind, name: str, value: Any, max_len: int, lo: int, hi: int,
                   exact: bool = False) -> tuple:
    if type(value) is not list:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{kind.name}.{name} must be an array")
    if len(value) > max_len or (exact and len(value) != max_len):
        raise ProtocolError(ErrorCode.OUT_OF_RANGE, f"{kind.name}.{name} has {len(value)} items")
    return tuple(_need_int(kind, f"{name}[{i}]", v, lo, hi) for i, v in enumerate(value))


_Check = Callable[[Kind, str, Any, Limits], Any]


def _int(lo: int, hi: int) -> _Check:
    def check(kind: Kind, name: str, value: Any, limits: Limits) -> int:
        if type(value) is int and lo <= value <= hi:
            return value
        return _need_int(kind, name, value, lo, hi)
    return check


def _vcpu(kind: Kind, name: str, value: Any, limits: Limits) -> int:
    if type(value) is int and 0 <= value < limits.nr_vcpus:
        return value
    return _need_int(kind, name, value, 0, limits.nr_vcpus - 1)


def _ipa(kind: Kind, name: str, value: Any, limits: Limits) -> int:
    if type(value) is int and 0 <= value < limits.guest_mem:
        return value
    _need_int(kind, name, value, 0, U64)
    raise ProtocolError(ErrorCode.OUT_OF_RANGE,
                        f"IPA {value:#x} is outside guest memory (size {limits.guest_mem:#x})")


def _member_of(members: dict[int, Any], why: Callable[[Kind, str, int], str]) -> _Check:
    """A field whose accepted wire values are the keys of `members`; it decodes to the value.
    `why` says what is wrong with any other integer."""
    def check(kind: Kind, name: str, value: Any, limits: Limits) -> Any:
        member = members.get(value) if type(value) is int else None
        if member is not None:
            return member
        _need_int(kind, name, value, 0, U32)
        raise ProtocolError(ErrorCode.OUT_OF_RANGE, why(kind, name, value))
    return check


def _enum(enum_cls: type) -> _Check:
    return _member_of(dict(enum_cls._value2member_map_),
                      lambda k, n, v: f"{k.name}.{n}={v} is not a known {enum_cls.__name__}")


_ctx = _member_of({v: Ctx(v) for v in range(CTX_MASK + 1) if not v & ~CTX_MASK},
                  lambda k, n, v: f"{k.name}.{n} has reserved bits set ({v:#x})")


# Field checks by name: a field means the same thing in every message that has it.
FIELD_CHECKS: dict[str, _Check] = {
    "seq": _int(0, U32),
    "vcpu": _vcpu,
    "nr_vcpus": _int(1, MAX_VCPUS),  # the host checks its own limit
    "pid": _int(0, U32),
    "name": lambda k, n, v, lim: _need_str(k, n, v, MAX_NAME),
    "ipa": _ipa,
    "access": _enum(Access),
    "ctx": _ctx,
    "func_id": _int(0, U32),
    "args": lambda k, n, v, lim: _need_int_list(k, n, v, 4, 0, U64),
    "ret": lambda k, n, v, lim: _need_int_list(k, n, v, 4, I64_MIN, I64_MAX, exact=True),
    "batch": _int(0, U32),
    "pages": _int(0, U32),
    "info": lambda k, n, v, lim: _need_map(k, n, v),
    "stats": lambda k, n, v, lim: _need_map(k, n, v),
    "vector": _enum(Vector),
    "irq": _enum(Irq),
    "token": _int(1, U32 - 1),  # 0 and ~0 (wake-all) never name a fault
    "code": _int(0, U16),
    "reason": lambda k, n, v, lim: _need_str(k, n, v, 4096),
}

# Per wire kind number: the message class and its (field name, check) pairs in wire order.
_PLANS: dict[int, tuple[type[Message], tuple[tuple[str, _Check], ...]]] = {
    int(kind): (message_class(kind), tuple((name, FIELD_CHECKS[name]) for name in message_class(kind).FIELDS))
    for kind in Kind
}


def page_of(ipa: int) -> int:
    return ipa // PAGE_SIZE
