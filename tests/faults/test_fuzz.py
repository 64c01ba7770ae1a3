"""Hostile input: a peer that sends random and mutated frames. The host rejects each bad frame
with a reason, counts it, keeps serving, and afterwards a normal guest runs with no corrupt page.

APF_FUZZ_FRAMES sets the number of frames (default 100 000); the full-size run is marked `slow`
(`pytest -m "not slow"` leaves it out)."""
import json
import os
import random

import msgpack
import pytest
import zmq

from protocol.hypercalls import FuncId
from protocol.messages import PAGE_SIZE, PROTOCOL_VERSION, Kind, Stats
from tests.helpers import RawGuest, apf

FRAMES = int(os.environ.get("APF_FUZZ_FRAMES", "100000"))
GUEST_MEM = 1 << 20
SAFE_FUNCS = [int(f) for f in FuncId if f != FuncId.PSCI_SYSTEM_OFF]


def _value(rng: random.Random):
    return rng.choice([
        0, 1, -1, rng.randrange(1 << 64), rng.randrange(GUEST_MEM + 8192), rng.randrange(4),
        1 << 63, 3.5, "x" * rng.randrange(300), b"\x00" * rng.randrange(40), None, True, [], [1, 2],
        {"a": 1}, {1: 2}, rng.choice(SAFE_FUNCS), 0xFFFFFFFF,
    ])


def _frame(rng: random.Random) -> bytes:
    style = rng.random()
    if style < 0.15:
        return rng.randbytes(rng.randrange(0, 64))
    kind = rng.choice(list(Kind) + [0, 7, 99, -1])
    fields = [_value(rng) for _ in range(rng.randrange(0, 7))]
    version = PROTOCOL_VERSION if style < 0.9 else rng.choice([0, 2, 255, "1"])
    if kind == Kind.TRAP and rng.random() < 0.5:
        fields = [rng.randrange(1 << 24), 0, rng.randrange(GUEST_MEM // PAGE_SIZE) * PAGE_SIZE,
                  rng.randrange(2), rng.randrange(4)]
    if kind == Kind.HVC and rng.random() < 0.5:
        fields = [rng.randrange(1 << 24), 0, rng.choice(SAFE_FUNCS),
                  [rng.randrange(1 << 64) for _ in range(rng.randrange(3))]]
    frame = msgpack.packb([version, int(kind) if isinstance(kind, Kind) else kind, *fields],
                          use_bin_type=True)
    if style > 0.8 and frame:                      # bit flips and truncation
        data = bytearray(frame)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        frame = bytes(data[:rng.randrange(1, len(data) + 1)])
    return frame


@pytest.mark.slow
def test_fuzzed_frames_are_rejected_and_the_host_keeps_serving(host, run_dir, tmp_path):
    """FRAMES random and mutated frames from a peer that attached as a guest (so the handlers, not
    just the decoder, see them): the host answers bad ones with ERROR, counts them by reason,
    stays alive, and the next real guest run verifies every page."""
    h = host("--guest-mem", "1MiB", "--host-mem", "256KiB")
    rng = random.Random(20261125)
    fuzzer = RawGuest(h.info, name="fuzz")
    errors = 0
    try:
        assert fuzzer.hello().KIND == Kind.WELCOME
        socks = [fuzzer.ctl, fuzzer.vcpu_socks[0]]
        for i in range(FRAMES):
            socks[i & 1].send(_frame(rng))
            for s in socks:                       # drain replies so nothing backs up
                while s.poll(0):
                    reply = s.recv()
                    errors += msgpack.unpackb(reply)[1] == Kind.ERROR
        fuzzer.seq = 0xFFFFFF00                  # above every seq the fuzz frames used on purpose
        reply = fuzzer.request(fuzzer.ctl, Stats(0))   # the host still answers, after the backlog
        assert reply.KIND == Kind.STATS_REPLY, reply
        stats = reply.stats
        assert h.proc.poll() is None
        bad = stats["bad_frames"]
        assert sum(bad.values()) > FRAMES // 4
        assert {"malformed", "version", "unknown_kind", "bad_field"} <= set(bad)
        assert errors > 0
        fuzzer.hvc(0, FuncId.PSCI_SYSTEM_OFF)
    finally:
        fuzzer.close()
    report = str(tmp_path / "after-fuzz.json")
    proc = apf("guest", "--run-dir", run_dir, "--tasks", "2", "--accesses", "1000", "--mode", "async",
               "--report", report, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with open(report) as f:
        r = json.load(f)
    assert r["ok"] and r["pages_corrupt"] == 0 and r["pages_verified"] == r["pages_written"] > 0


def test_oversize_frame_is_dropped_and_the_host_keeps_serving(host):
    """A frame above the 64 KiB cap (ZeroMQ's MAXMSGSIZE on the host socket) never reaches the
    decoder: ZeroMQ drops that peer's connection, and the host goes on serving everyone else."""
    h = host("--guest-mem", "1MiB", "--host-mem", "256KiB")
    big = RawGuest(h.info, name="big")
    g = RawGuest(h.info, name="normal")
    try:
        big.ctl.send(msgpack.packb([PROTOCOL_VERSION, int(Kind.HELLO), 1, 1, 1, "x" * (100 * 1024)]))
        assert not big.ctl.poll(500)              # no answer to a frame that was never read
        assert g.hello().KIND == Kind.WELCOME
        assert g.trap(0, 5).KIND == Kind.RESUME
    finally:
        big.close()
        g.close()
    assert h.proc.poll() is None
