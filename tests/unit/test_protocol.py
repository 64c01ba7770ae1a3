"""The wire format: every kind round-trips, and every malformed frame is refused with its exact code."""
from __future__ import annotations

from dataclasses import fields

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import ErrorCode, ProtocolError, decode, encode
from protocol.hypercalls import FuncId
from protocol.messages import (MAX_FRAME_BYTES, MAX_VCPUS, PAGE_SIZE, PROTOCOL_VERSION, Access, Ctx, Error,
                               Heartbeat, Hello, Hvc, HvcRet, InjectExc, InjectIrq, Irq, Kind,
                               Limits, Message, Resume, Stats, StatsReply, Tlbi, TlbiAck, Trap,
                               Vector, Welcome, Wfi)

NR_VCPUS = 4
GUEST_MEM = 256 * PAGE_SIZE
LIMITS = Limits(nr_vcpus=NR_VCPUS, guest_mem=GUEST_MEM)
U32_MAX, U64_MAX = 2**32 - 1, 2**64 - 1
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# One valid instance of every kind, at the edges of its ranges where that is cheap.
VALID: dict[Kind, Message] = {
    Kind.HELLO: Hello(1, NR_VCPUS, U32_MAX, "g" * 256),
    Kind.TRAP: Trap(2, NR_VCPUS - 1, GUEST_MEM - 1, Access.WRITE, Ctx.KERNEL | Ctx.IRQS_OFF),
    Kind.HVC: Hvc(3, 0, int(FuncId.APF_ENABLE), (U64_MAX, 30, 0, 0)),
    Kind.TLBI_ACK: TlbiAck(4, U32_MAX),
    Kind.STATS: Stats(U32_MAX),
    Kind.HEARTBEAT: Heartbeat(0),
    Kind.WFI: Wfi(5, NR_VCPUS - 1),
    Kind.WELCOME: Welcome(6, {"guest_pages": 256, "ram": "/dev/shm/apf-1-ram", "direct_io": False,
                              "ratio": 0.5, "none": None}),
    Kind.RESUME: Resume(7, 3),
    Kind.INJECT_EXC: InjectExc(8, 1, Vector.PAGE_NOT_PRESENT, (5 << 12) | 1),
    Kind.INJECT_IRQ: InjectIrq(9, 2, Irq.PAGE_READY),
    Kind.HVC_RET: HvcRet(10, 0, (-3, 2**63 - 1, -(2**63), 0)),
    Kind.TLBI: Tlbi(11, 11, 256),
    Kind.STATS_REPLY: StatsReply(12, {"faults": {"total": 3, "sync_reasons": {"policy": 1}},
                                      "apf": {"outstanding": [0, 1, 2, 3]}, "bad_frames": {}}),
    Kind.ERROR: Error(13, int(ErrorCode.MEMORY_FAILURE), "memory failure: page 3"),
}


def items_of(msg: Message, **replace) -> list:
    """The frame's array for `msg`, with named fields replaced by raw values."""
    names = [f.name for f in fields(msg)]
    values = [replace.get(n, v) for n, v in zip(names, msg.values())]
    return [PROTOCOL_VERSION, int(msg.KIND), *[list(v) if isinstance(v, tuple) else v for v in values]]


def pack(items) -> bytes:
    return msgpack.packb(items, use_bin_type=True)


def refused(frame: bytes, limits: Limits | None = LIMITS) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(frame, limits)
    return info.value


# -- round trips --------------------------------------------------------------------------------

def test_every_kind_has_a_valid_instance():
    """The round-trip table covers every message kind there is."""
    assert set(VALID) == set(Kind)


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.name)
def test_round_trip(kind):
    """decode(encode(m)) gives back an equal message of the same class for every kind."""
    msg = VALID[kind]
    back = decode(encode(msg), LIMITS)
    assert type(back) is type(msg)
    assert back == msg


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.name)
def test_encoding_is_the_documented_array(kind):
    """A frame is the msgpack array [version, kind, seq, fields...] in dataclass field order."""
    msg = VALID[kind]
    assert msgpack.unpackb(encode(msg), raw=False) == items_of(msg)


def test_decoded_enums_and_lists_have_their_declared_types():
    """Enum fields decode to their enum types and array fields to tuples (hashable, frozen)."""
    trap = decode(encode(VALID[Kind.TRAP]), LIMITS)
    assert type(trap.access) is Access and type(trap.ctx) is Ctx
    exc = decode(encode(VALID[Kind.INJECT_EXC]), LIMITS)
    assert type(exc.vector) is Vector
    assert type(decode(encode(VALID[Kind.INJECT_IRQ]), LIMITS).irq) is Irq
    assert type(decode(encode(VALID[Kind.HVC]), LIMITS).args) is tuple
    assert type(decode(encode(VALID[Kind.HVC_RET]), LIMITS).ret) is tuple


def test_hvc_with_no_arguments_round_trips():
    """An HVC with an empty argument list (the default) is valid."""
    msg = Hvc(1, 0, int(FuncId.APF_ACK))
    assert decode(encode(msg), LIMITS) == msg


def test_default_limits_allow_the_full_vcpu_and_ipa_ranges():
    """Without session limits, vCPU 4095 and IPA 2**64-1 are accepted and vCPU 4096 is not."""
    assert decode(encode(Trap(1, 4095, U64_MAX, Access.READ, Ctx.USER))).vcpu == 4095
    assert refused(pack([1, int(Kind.RESUME), 1, 4096]), None).code == ErrorCode.OUT_OF_RANGE


def test_frame_of_exactly_max_size_is_accepted():
    """The size limit is inclusive: a valid frame of exactly MAX_FRAME_BYTES bytes decodes."""
    n = MAX_FRAME_BYTES - len(encode(Welcome(1, {"p": ""}))) - 2  # str16 header is 3 bytes, not 1
    frame = encode(Welcome(1, {"p": "x" * n}))
    assert len(frame) == MAX_FRAME_BYTES
    assert decode(frame, LIMITS).info["p"] == "x" * n


# -- negative cases, table-driven ---------------------------------------------------------------

MAL, VER, UNK, BAD, OOR = (ErrorCode.MALFORMED, ErrorCode.VERSION, ErrorCode.UNKNOWN_KIND,
                           ErrorCode.BAD_FIELD, ErrorCode.OUT_OF_RANGE)

# (kind, field, raw value, expected code). Every field of every kind gets a wrong type, and every
# ranged field its out-of-range values.
FIELD_CASES = [
    (Kind.HELLO, "nr_vcpus", "4", BAD), (Kind.HELLO, "nr_vcpus", 0, OOR),
    (Kind.HELLO, "nr_vcpus", MAX_VCPUS + 1, OOR), (Kind.HELLO, "nr_vcpus", True, BAD),
    (Kind.HELLO, "pid", -1, OOR), (Kind.HELLO, "pid", 2**32, OOR), (Kind.HELLO, "pid", 1.0, BAD),
    (Kind.HELLO, "name", 5, BAD), (Kind.HELLO, "name", b"guest", BAD), (Kind.HELLO, "name", "g" * 257, OOR),
    (Kind.TRAP, "vcpu", NR_VCPUS, OOR), (Kind.TRAP, "vcpu", -1, OOR), (Kind.TRAP, "vcpu", "0", BAD),
    (Kind.TRAP, "vcpu", None, BAD),
    (Kind.TRAP, "ipa", GUEST_MEM, OOR), (Kind.TRAP, "ipa", -1, OOR), (Kind.TRAP, "ipa", 4096.0, BAD),
    (Kind.TRAP, "access", 2, OOR), (Kind.TRAP, "access", -1, OOR), (Kind.TRAP, "access", 2**32, OOR),
    (Kind.TRAP, "access", "READ", BAD),
    (Kind.TRAP, "ctx", 1 << 2, OOR), (Kind.TRAP, "ctx", 1 << 31, OOR), (Kind.TRAP, "ctx", -1, OOR),
    (Kind.TRAP, "ctx", 2**32, OOR), (Kind.TRAP, "ctx", [1], BAD),
    (Kind.HVC, "vcpu", NR_VCPUS, OOR), (Kind.HVC, "vcpu", b"\x00", BAD),
    (Kind.HVC, "func_id", 2**32, OOR), (Kind.HVC, "func_id", -1, OOR), (Kind.HVC, "func_id", "x", BAD),
    (Kind.HVC, "args", [0, 0, 0, 0, 0], OOR), (Kind.HVC, "args", [-1], OOR),
    (Kind.HVC, "args", ["1"], BAD), (Kind.HVC, "args", [1.5], BAD), (Kind.HVC, "args", 7, BAD),
    (Kind.HVC, "args", {"x1": 1}, BAD),
    (Kind.TLBI_ACK, "batch", -1, OOR), (Kind.TLBI_ACK, "batch", 2**32, OOR),
    (Kind.TLBI_ACK, "batch", None, BAD),
    (Kind.WFI, "vcpu", NR_VCPUS, OOR), (Kind.WFI, "vcpu", -1, OOR), (Kind.WFI, "vcpu", "0", BAD),
    (Kind.WELCOME, "info", [], BAD), (Kind.WELCOME, "info", "x", BAD),
    (Kind.WELCOME, "info", {b"guest_pages": 1}, BAD),
    (Kind.WELCOME, "info", {str(i): i for i in range(513)}, BAD),
    (Kind.RESUME, "vcpu", NR_VCPUS, OOR), (Kind.RESUME, "vcpu", -1, OOR), (Kind.RESUME, "vcpu", 0.0, BAD),
    (Kind.INJECT_EXC, "vcpu", NR_VCPUS, OOR), (Kind.INJECT_EXC, "vcpu", "1", BAD),
    (Kind.INJECT_EXC, "vector", 0, OOR), (Kind.INJECT_EXC, "vector", 2, OOR),
    (Kind.INJECT_EXC, "vector", -1, OOR), (Kind.INJECT_EXC, "vector", "PAGE_NOT_PRESENT", BAD),
    (Kind.INJECT_EXC, "token", 0, OOR), (Kind.INJECT_EXC, "token", -1, OOR),
    (Kind.INJECT_EXC, "token", 2**32, OOR), (Kind.INJECT_EXC, "token", "1", BAD),
    (Kind.INJECT_IRQ, "vcpu", NR_VCPUS, OOR), (Kind.INJECT_IRQ, "vcpu", [], BAD),
    (Kind.INJECT_IRQ, "irq", 0, OOR), (Kind.INJECT_IRQ, "irq", 2, OOR), (Kind.INJECT_IRQ, "irq", 30, OOR),
    (Kind.INJECT_IRQ, "irq", 1.0, BAD),
    (Kind.HVC_RET, "vcpu", NR_VCPUS, OOR), (Kind.HVC_RET, "vcpu", "0", BAD),
    (Kind.HVC_RET, "ret", [0, 0, 0], OOR), (Kind.HVC_RET, "ret", [0] * 5, OOR), (Kind.HVC_RET, "ret", [], OOR),
    (Kind.HVC_RET, "ret", [2**63, 0, 0, 0], OOR),
    (Kind.HVC_RET, "ret", [0, 0, 0, "0"], BAD), (Kind.HVC_RET, "ret", 0, BAD),
    (Kind.TLBI, "batch", -1, OOR), (Kind.TLBI, "batch", 2**32, OOR), (Kind.TLBI, "batch", "1", BAD),
    (Kind.TLBI, "pages", -1, OOR), (Kind.TLBI, "pages", 2**32, OOR), (Kind.TLBI, "pages", None, BAD),
    (Kind.STATS_REPLY, "stats", "x", BAD), (Kind.STATS_REPLY, "stats", [["a", 1]], BAD),
    (Kind.STATS_REPLY, "stats", {b"faults": {}}, BAD),
    (Kind.ERROR, "code", 2**16, OOR), (Kind.ERROR, "code", -1, OOR), (Kind.ERROR, "code", "9", BAD),
    (Kind.ERROR, "reason", "r" * 4097, OOR), (Kind.ERROR, "reason", None, BAD),
    (Kind.ERROR, "reason", b"reason", BAD),
]
# seq is common to every kind.
FIELD_CASES += [(kind, "seq", value, code) for kind in Kind
                for value, code in (("1", BAD), (1.0, BAD), (True, BAD), (None, BAD), (-1, OOR), (2**32, OOR))]


def _case_id(case) -> str:
    kind, name, value, code = case
    text = repr(value)
    return f"{kind.name}.{name}={text[:20]}->{code.name}"


@pytest.mark.parametrize("case", FIELD_CASES, ids=_case_id)
def test_bad_field_is_refused_with_its_code(case):
    """A frame with one bad field is refused with exactly the code of the rule it breaks, and the
    reason names the message kind and the field."""
    kind, name, value, code = case
    exc = refused(pack(items_of(VALID[kind], **{name: value})))
    assert exc.code == code, exc
    assert exc.seq == (0 if name == "seq" else VALID[kind].seq)
    beyond_guest_mem = name == "ipa" and code == OOR and value >= GUEST_MEM
    fragment = "IPA" if beyond_guest_mem else f"{kind.name}.{name}"
    assert fragment in exc.reason


def test_every_field_of_every_kind_has_a_negative_case():
    """The negative table exercises every field of every kind at least once."""
    covered = {(kind, name) for kind, name, _, _ in FIELD_CASES}
    wanted = {(kind, name) for kind, msg in VALID.items() for name in (f.name for f in fields(msg))}
    assert wanted - covered == set()


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.name)
@pytest.mark.parametrize("delta", [+1, -1], ids=["one-extra", "one-missing"])
def test_wrong_field_count_is_malformed(kind, delta):
    """One field too many or too few is MALFORMED, for every kind."""
    items = items_of(VALID[kind])
    items = items + [0] if delta > 0 else items[:-1]
    assert refused(pack(items)).code == MAL


@pytest.mark.parametrize("kind", [Kind.WELCOME, Kind.STATS_REPLY], ids=lambda k: k.name)
def test_map_with_integer_keys_is_malformed(kind):
    """A map with a non-string (integer) key is refused by msgpack's strict_map_key: MALFORMED."""
    name = "info" if kind == Kind.WELCOME else "stats"
    assert refused(pack(items_of(VALID[kind], **{name: {1: "x"}}))).code == MAL


FRAME_CASES = [
    ("not-msgpack", b"\xc1", MAL),
    ("truncated", encode(VALID[Kind.TRAP])[:-1], MAL),
    ("trailing-bytes", encode(VALID[Kind.TRAP]) + b"\x00", MAL),
    ("empty", b"", MAL),
    ("too-deep", b"\x91" * 5000 + b"\x00", MAL),
    ("map", pack({"version": 1}), MAL),
    ("int", pack(1), MAL),
    ("string", pack("hello"), MAL),
    ("empty-array", pack([]), MAL),
    ("version-only", pack([1]), MAL),
    ("no-seq", pack([1, int(Kind.STATS)]), MAL),
    ("version-str", pack(["1", int(Kind.STATS), 0]), MAL),
    ("version-bool", pack([True, int(Kind.STATS), 0]), MAL),
    ("version-2", pack([2, int(Kind.STATS), 0]), VER),
    ("version-0", pack([0, int(Kind.STATS), 0]), VER),
    ("version-2-unknown-kind", pack([2, 99, 0]), VER),
    ("kind-0", pack([1, 0, 0]), UNK),
    ("kind-8", pack([1, 8, 0]), UNK),
    ("kind-24", pack([1, 24, 0]), UNK),
    ("kind-negative", pack([1, -1, 0]), UNK),
    ("kind-str", pack([1, "STATS", 0]), UNK),
    ("kind-bool", pack([1, True, 0]), UNK),
    ("oversize", encode(Welcome(1, {"blob": "x" * MAX_FRAME_BYTES})), MAL),
]


@pytest.mark.parametrize("frame, code", [c[1:] for c in FRAME_CASES], ids=[c[0] for c in FRAME_CASES])
def test_bad_frame_is_refused_with_its_code(frame, code):
    """Frame-level faults (not msgpack, not an array, too short, version, kind, size) get their code."""
    assert refused(frame).code == code


@pytest.mark.parametrize("frame, seq", [
    (pack([2, int(Kind.STATS), 41]), 41),
    (pack([1, 99, 42]), 42),
    (pack([1, int(Kind.RESUME), 43]), 43),
    (pack([1, int(Kind.RESUME), 44, NR_VCPUS]), 44),
    (pack(["1", int(Kind.STATS), 45]), 45),
    (pack([1, int(Kind.RESUME), 2**32, 0]), 0),
    (pack([1, int(Kind.RESUME), "46", 0]), 0),
    (pack([1, int(Kind.STATS)]), 0),
    (b"\xc1", 0),
], ids=["version", "kind", "field-count", "field", "version-type", "seq-range", "seq-type", "short",
        "not-msgpack"])
def test_refusal_carries_the_seq_when_it_is_readable(frame, seq):
    """A refused frame whose item 2 is a valid u32 seq reports that seq (so the ERROR reply can be
    correlated); when the seq cannot be read the refusal carries 0."""
    assert refused(frame).seq == seq


def test_oversize_frame_is_refused_before_parsing():
    """A frame over MAX_FRAME_BYTES is refused by its length even if its content is valid."""
    frame = encode(Welcome(1, {"blob": "x" * MAX_FRAME_BYTES}))
    exc = refused(frame)
    assert exc.code == MAL and str(MAX_FRAME_BYTES) in exc.reason and str(len(frame)) in exc.reason


def test_msgpack_failure_keeps_its_cause_and_a_readable_message():
    """A msgpack error is wrapped, chained as __cause__, and printed as 'malformed: ...'."""
    exc = refused(b"\xc1")
    assert exc.__cause__ is not None
    assert str(exc).startswith("malformed: not a msgpack frame")


def test_wrong_version_names_both_versions():
    """The VERSION refusal says which version was received and which one this side speaks."""
    exc = refused(pack([7, int(Kind.STATS), 0]))
    assert "7" in exc.reason and str(PROTOCOL_VERSION) in exc.reason


def test_inject_exc_rejects_the_wake_all_token():
    """0xFFFFFFFF is the wake-all token, never the token of one fault: an INJECT_EXC carrying it
    would park a task that no single page-ready can wake, so the decoder must refuse it."""
    frame = pack(items_of(VALID[Kind.INJECT_EXC], token=0xFFFFFFFF))
    assert refused(frame).code == OOR


# -- fuzzing ------------------------------------------------------------------------------------

def _decode_or_protocol_error(frame: bytes) -> Message | None:
    """Decode; a ProtocolError is a fine outcome, anything else propagates and fails the test."""
    try:
        msg = decode(frame, LIMITS)
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
        return None
    assert isinstance(msg, Message)
    return msg


@FUZZ
@given(st.binary(max_size=256))
def test_random_bytes_raise_only_protocol_error(data):
    """Arbitrary bytes either decode to a message or raise ProtocolError, never anything else."""
    _decode_or_protocol_error(data)


@FUZZ
@given(kind=st.sampled_from(list(Kind)), data=st.data())
def test_mutated_valid_frames_raise_only_protocol_error(kind, data):
    """Valid frames with bytes flipped, cut or inserted decode cleanly or raise ProtocolError; what
    decodes re-encodes to a frame that decodes to the same message."""
    frame = bytearray(encode(VALID[kind]))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(0, len(frame) - 1)))
        if op == "flip" and frame:
            frame[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del frame[pos:pos + data.draw(st.integers(1, 8))]
        else:
            frame[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    msg = _decode_or_protocol_error(bytes(frame))
    if msg is not None:
        assert decode(encode(msg), LIMITS) == msg


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
                     st.text(max_size=20), st.binary(max_size=20))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.one_of(st.text(max_size=5), st.binary(max_size=5)),
                                                 inner, max_size=5)), max_leaves=20)


@FUZZ
@given(kind=st.sampled_from([int(k) for k in Kind]), values=st.lists(_values, max_size=6))
def test_well_formed_msgpack_with_random_fields_raises_only_protocol_error(kind, values):
    """A correct header followed by arbitrary msgpack values never escapes as another exception."""
    _decode_or_protocol_error(pack([PROTOCOL_VERSION, kind, *values]))
