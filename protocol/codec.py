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
    if type(kind_no) is not int or kind_no not in Kind._value2member_map_:
        raise ProtocolError(ErrorCode.UNKNOWN_KIND, f"unknown message kind {kind_no!r}")
    cls = message_class(Kind(kind_no))
    names = cls.FIELDS
    values = items[2:]
    if len(values) != len(names):
        raise ProtocolError(ErrorCode.MALFORMED,
                            f"{cls.KIND.name} has {len(names)} fields after the kind, got {len(values)}")
    checked = {name: _check(cls.KIND, name, value, limits) for name, value in zip(names, values)}
    return cls(**checked)


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


def _need_enum(enum_cls, kind: Kind, name: str, value: Any):
    _need_int(kind, name, value, 0, U32)
    if value not in enum_cls._value2member_map_:
        raise ProtocolError(ErrorCode.OUT_OF_RANGE, f"{kind.name}.{name}={value} is not a known {enum_cls.__name__}")
    return enum_cls(value)


def _ctx(kind: Kind, name: str, value: Any, limits: Limits) -> Ctx:
    _need_int(kind, name, value, 0, U32)
    if value & ~CTX_MASK:
        raise ProtocolError(ErrorCode.OUT_OF_RANGE, f"{kind.name}.{name} has reserved bits set ({value:#x})")
    return Ctx(value)


def _ipa(kind: Kind, name: str, value: Any, limits: Limits) -> int:
    _need_int(kind, name, value, 0, U64)
    if value >= limits.guest_mem:
        raise ProtocolError(ErrorCode.OUT_OF_RANGE,
                            f"IPA {value:#x} is outside guest memory (size {limits.guest_mem:#x})")
    return value


# Field validators by name: a field means the same thing in every message that has it.
_Check = Callable[[Kind, str, Any, Limits], Any]
FIELD_CHECKS: dict[str, _Check] = {
    "seq": lambda k, n, v, lim: _need_int(k, n, v, 0, U32),
    "vcpu": lambda k, n, v, lim: _need_int(k, n, v, 0, lim.nr_vcpus - 1),
    "nr_vcpus": lambda k, n, v, lim: _need_int(k, n, v, 1, MAX_VCPUS),  # the host checks its own limit
    "pid": lambda k, n, v, lim: _need_int(k, n, v, 0, U32),
    "name": lambda k, n, v, lim: _need_str(k, n, v, MAX_NAME),
    "ipa": _ipa,
    "access": lambda k, n, v, lim: _need_enum(Access, k, n, v),
    "ctx": _ctx,
    "func_id": lambda k, n, v, lim: _need_int(k, n, v, 0, U32),
    "args": lambda k, n, v, lim: _need_int_list(k, n, v, 4, 0, U64),
    "ret": lambda k, n, v, lim: _need_int_list(k, n, v, 4, I64_MIN, I64_MAX, exact=True),
    "batch": lambda k, n, v, lim: _need_int(k, n, v, 0, U32),
    "pages": lambda k, n, v, lim: _need_int(k, n, v, 0, U32),
    "info": lambda k, n, v, lim: _need_map(k, n, v),
    "stats": lambda k, n, v, lim: _need_map(k, n, v),
    "vector": lambda k, n, v, lim: _need_enum(Vector, k, n, v),
    "irq": lambda k, n, v, lim: _need_enum(Irq, k, n, v),
    "token": lambda k, n, v, lim: _need_int(k, n, v, 1, U32 - 1),  # 0 and ~0 (wake-all) never name a fault
    "code": lambda k, n, v, lim: _need_int(k, n, v, 0, U16),
    "reason": lambda k, n, v, lim: _need_str(k, n, v, 4096),
}


def _check(kind: Kind, name: str, value: Any, limits: Limits) -> Any:
    return FIELD_CHECKS[name](kind, name, value, limits)


def page_of(ipa: int) -> int:
    return ipa // PAGE_SIZE
