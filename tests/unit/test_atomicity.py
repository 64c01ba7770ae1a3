"""Shared control-block words are single-copy atomic between two real processes, as an aligned
32-bit access is on the hardware (protocol/SPEC.md §6.1): a reader never sees a value that was
not written, and the page-ready slot's exchange / compare-and-swap handoff loses no token."""
from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest

from shared.files import ControlFile

NR_VCPUS = 2
GUEST_PAGES = 16
READS = 1_000_000
VALUE = 0x5B9001          # a token-like value: several non-zero bytes


def _rewrite(path: str, value: int, started, stop) -> None:
    """Writer process: rewrite `ready_token` of vCPU 1 with `value`, through the project's own
    write path, until told to stop."""
    control = ControlFile.attach(path, NR_VCPUS, GUEST_PAGES)
    started.set()
    while not stop.is_set():
        for _ in range(1000):
            control.write(1, "ready_token", value)
    control.close()


def test_a_rewritten_word_never_reads_as_anything_else(shm_dir):
    """While one process rewrites a field with the same value over and over, another that reads it a
    million times sees only that value (with a byte-wise store it would read 0 tens of thousands of
    times: the store zeroes the word before it writes the bytes)."""
    path = os.path.join(shm_dir, "control")
    control = ControlFile.create(path, NR_VCPUS, GUEST_PAGES)
    control.write(1, "ready_token", VALUE)
    ctx = mp.get_context("spawn")
    started, stop = ctx.Event(), ctx.Event()
    writer = ctx.Process(target=_rewrite, args=(path, VALUE, started, stop), daemon=True)
    writer.start()
    try:
        assert started.wait(30), "writer process did not start"
        read = control.read
        others = sum(1 for _ in range(READS) if read(1, "ready_token") != VALUE)
    finally:
        stop.set()
        writer.join(10)
        if writer.is_alive():
            writer.kill()
        control.close()
    assert writer.exitcode == 0
    assert others == 0, f"{others} of {READS} reads saw a value that was never written"


def _publish_all(path: str, count: int, done) -> None:
    """Host side: publish tokens 1..count into vCPU 0's slot, each only when the slot is free."""
    control = ControlFile.attach(path, NR_VCPUS, GUEST_PAGES)
    token = 1
    while token <= count:
        if control.publish(0, "ready_token", token):
            token += 1
    done.set()
    control.close()


@pytest.mark.timeout(120)
def test_publish_and_take_hand_every_token_over_once_in_order(shm_dir):
    """A host-like process publishes 20,000 tokens with compare-and-swap from 0 while this process
    takes them with an atomic exchange: every token arrives exactly once and in order, and the
    publisher never overwrites a token that was not yet taken."""
    count = 20_000
    path = os.path.join(shm_dir, "control")
    control = ControlFile.create(path, NR_VCPUS, GUEST_PAGES)
    ctx = mp.get_context("spawn")
    done = ctx.Event()
    publisher = ctx.Process(target=_publish_all, args=(path, count, done), daemon=True)
    publisher.start()
    received = []
    try:
        take, deadline = control.take, time.monotonic() + 60
        while len(received) < count and time.monotonic() < deadline:
            for _ in range(1000):
                token = take(0, "ready_token")
                if token:
                    received.append(token)
        publisher.join(30)
        received.extend(t for t in [take(0, "ready_token")] if t)   # nothing may be left behind
    finally:
        if publisher.is_alive():
            publisher.kill()
        control.close()
    assert done.is_set() and publisher.exitcode == 0
    assert received == list(range(1, count + 1))


def test_publish_fills_only_a_free_slot_and_take_frees_it(shm_dir):
    """publish() stores only over 0 and says whether it did; take() returns the word and leaves 0;
    write() and read() are plain stores and loads of the named field of the named vCPU only."""
    control = ControlFile.create(os.path.join(shm_dir, "control"), NR_VCPUS, GUEST_PAGES)
    try:
        assert control.publish(0, "ready_token", 7) is True
        assert control.publish(0, "ready_token", 8) is False
        assert control.read(0, "ready_token") == 7 and control.read(1, "ready_token") == 0
        assert control.take(0, "ready_token") == 7
        assert control.take(0, "ready_token") == 0
        control.write(1, "np_token", 0xFFFFFFFF)
        assert control.read(1, "np_token") == 0xFFFFFFFF and control.read(1, "reason") == 0
        control.check_block(1)                     # nothing spilled into the reserved bytes
        with pytest.raises(ValueError, match=r"^vCPU 2 has no control block \(0\.\.1\)$"):
            control.read(2, "reason")
        with pytest.raises(KeyError):
            control.read(0, "magic")
    finally:
        control.close()
