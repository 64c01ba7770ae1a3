"""Misdelivered page-readies: duplicated, reordered, delayed, never acknowledged. None wakes the
wrong task or a task twice, and none is lost."""
import json
import os

import pytest

from protocol.messages import InjectExc, Resume, Stats
from tests.helpers import RawGuest, run_report

ASYNC = ["--guest-mem", "4MiB", "--host-mem", "1MiB", "--accesses", "800", "--swap-latency", "500us",
         "--mode", "async", "--tasks", "4", "--prefill"]


def test_duplicated_and_reordered_page_ready_are_detected(tmp_path, shm_leftovers):
    """The host sends 30 % of page-readies twice and queues half out of order: every duplicate the
    guest takes is detected and counted (the host's count, less those still queued or in a slot
    when the vCPUs finished, which the guest never saw, bounds it from below), no task is woken
    twice, no stray token is left, and all data verifies."""
    proc, r = run_report(tmp_path, *ASYNC, "--inject", "page-ready:duplicate:p=0.3",
                         "--inject", "page-ready:reorder:p=0.5")
    assert proc.returncode == 0, proc.stderr
    assert r["host_apf"]["duplicated"] > 0 and r["host_apf"]["reordered"] > 0
    # Duplicates still queued, or in a slot, when the vCPUs finished are not seen by the guest.
    sent, unseen = r["host_apf"]["duplicated"], sum(r["host_apf"]["queued"]) + len(r["per_vcpu"])
    assert sent - unseen <= r["duplicate_page_ready"] <= sent
    for phase in r["phases"].values():
        assert phase["apf"]["stray_tokens"] == 0
    assert r["ok"] and r["pages_corrupt"] == 0 and r["pages_verified"] == r["pages_written"]


def test_delayed_page_ready_only_lengthens_sleep(tmp_path, shm_leftovers):
    """Holding every completion 5 ms: in the host's own trace, each token's page-ready goes out at
    least 5 ms after its page came in (a timer, never early), every asynchronous fault still gets
    exactly one page-ready, and all data verifies. (Read from the host's clock, not from how long
    guest tasks slept, which a loaded machine stretches or shortens.)"""
    trace = os.path.join(str(tmp_path), "trace.json")
    proc, r = run_report(tmp_path, *ASYNC, "--inject", "page-ready:delay:delay=5ms", "--trace", trace)
    assert proc.returncode == 0, proc.stderr
    assert r["ok"] and r["pages_corrupt"] == 0
    assert r["host_apf"]["page_ready"] == r["host_apf"]["not_present"] > 0
    with open(trace, encoding="utf-8") as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    completed = {e["args"]["token"]: e["ts"] for e in events if e["name"] == "kvm_async_pf_completed"}
    ready: dict[int, float] = {}
    for e in events:
        if e["name"] == "kvm_async_pf_ready":
            ready.setdefault(e["args"]["token"], e["ts"])      # the first delivery, not a re-raise
    assert set(completed) <= set(ready) and len(completed) == r["host_apf"]["not_present"]
    held_us = [ready[token] - at for token, at in completed.items()]
    assert min(held_us) >= 5000 - 0.01, f"a page-ready went out {min(held_us):.1f}us after its page"


def test_guest_that_never_acks_still_gets_every_page_ready(tmp_path, shm_leftovers):
    """A guest that clears the slot but never calls APF_ACK: the host re-checks the slot on its
    heartbeat tick, so every page-ready still arrives (late) and the run completes."""
    proc, r = run_report(tmp_path, *ASYNC, "--inject", "ack:never")
    assert proc.returncode == 0, proc.stderr
    assert r["host_apf"]["acks"] == 0 and r["apf"]["acks_withheld"] > 0
    assert r["host_apf"]["page_ready"] == r["host_apf"]["not_present"]
    assert r["ok"] and r["pages_corrupt"] == 0


def test_guest_that_never_frees_the_slot_hits_the_outstanding_limit(host):
    """A guest that never takes its page-ready: the host queues completions (loses none), the
    vCPU's outstanding faults reach the cap and further faults are synchronous; when the guest
    finally takes the slot, the queued tokens follow in the done queue's order, as the host's
    STATS `apf.tokens` showed it."""
    h = host("--guest-mem", "1MiB", "--host-mem", "64KiB", "--swap-latency", "20ms", "--max-outstanding", "2",
             "--page-cluster", "0")      # each trap below a major fault of its own
    g = RawGuest(h.info)
    try:
        g.hello()
        g.fill(range(64))
        g.wait_reclaim_done()
        g.enable(0)
        pages = [p for p in g.swapped_pages() if p < 64][:4]
        t1, t2 = g.trap(0, pages[0]).token, g.trap(0, pages[1]).token

        def tokens() -> dict:
            return g.stats()["apf"]["tokens"][0]

        first = g.pump_until(lambda: (lambda t: t if t["slot"] and len(t["done"]) == 1 else None)(tokens()),
                             "one page-ready in the slot, the other queued")
        assert {first["slot"], *first["done"]} == {t1, t2}
        third = g.trap(0, pages[2])
        assert isinstance(third, InjectExc)          # outstanding: the queued one only, below the cap of 2
        queued = g.pump_until(lambda: (lambda t: t["done"] if len(t["done"]) == 2 else None)(tokens()),
                              "the third page-ready queued behind the second")
        assert queued == [*first["done"], third.token]   # it completed after the second was queued
        assert isinstance(g.trap(0, pages[3]), Resume)   # now at the cap: synchronous
        stats = g.stats()
        assert stats["faults"]["sync_reasons"].get("outstanding_limit") == 1
        assert stats["apf"]["queued"][0] == 2
        taken = []
        for _ in range(3):
            g.pump_until(lambda: g.control.read(0, "ready_token"), "a page-ready in the slot")
            taken.append(g.take_page_ready(0))
        assert taken == [first["slot"], *queued]
        assert g.control.read(0, "ready_token") == 0 and g.stats()["apf"]["queued"][0] == 0
    finally:
        g.close()
