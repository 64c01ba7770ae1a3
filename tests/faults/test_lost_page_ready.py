"""A page-ready is never lost: not when the host publishes the next token while the guest's
handler is still taking the last one, not under CPU load; and when a task does stay parked, the
stuck detector names the task, its token and what the host knows of that token."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from guest.apf import GuestApf, Ready
from guest.waittable import WaitTable
from protocol.hypercalls import FuncId
from protocol.messages import InjectExc
from tests.helpers import apf, attached_guest

class Parked:
    """The scheduler side of the guest's handlers: which tasks are parked, which were woken."""

    def __init__(self) -> None:
        self.parked: set[str] = set()
        self.woken: list[str] = []

    def park(self, task: str, token: int) -> None:
        self.parked.add(task)

    def unpark(self, task: str) -> None:
        self.parked.discard(task)

    def wake(self, task: str, by_vcpu: int) -> None:
        self.parked.remove(task)
        self.woken.append(task)


def test_page_ready_published_while_the_guest_takes_the_slot_is_not_lost(host):
    """Two async faults complete: X is in the slot, Y waits in the host's done queue. The guest's
    real page-ready handler takes X, and right then (a test hook holds the window open) the host
    publishes Y into the freed slot on its re-check. The handler then wakes X and the guest ACKs;
    the next interrupt takes Y and wakes its task. Had the guest's clear been a separate store
    after the read (as a byte-wise `pack_into` is), it would have erased Y: Y's task would sleep
    forever, with Y in neither the done queue nor the outstanding set."""
    g = attached_guest(host("--guest-mem", "1MiB", "--host-mem", "64KiB", "--io-engine", "threads",
                            "--page-cluster", "0").info)    # each trap below a major fault
    try:
        g.enable(0)
        swapped = [p for p in g.swapped_pages() if p < 64][:2]
        assert len(swapped) == 2, "the fill did not swap pages out"
        sched = Parked()
        guest: GuestApf[str] = GuestApf(g.control, WaitTable(), sched)
        tasks = {}
        for i, gfn in enumerate(swapped):
            reply = g.trap(0, gfn)
            assert isinstance(reply, InjectExc), reply
            assert guest.page_not_present(0, reply.token, f"task-{i}").parked
            tasks[reply.token] = f"task-{i}"
        g.pump_until(lambda: g.stats()["apf"]["queued"][0] == 1, "both swap-ins to complete")
        first = g.control.read(0, "ready_token")
        (second,) = set(tasks) - {first}

        published_in_window = []

        def host_publishes_next(vcpu: int) -> None:
            # The slot was just taken: the host's heartbeat re-check (every 250 ms) fills it now.
            g.pump_until(lambda: g.control.read(0, "ready_token"), "the host to publish the queued token")
            published_in_window.append(g.control.read(0, "ready_token"))

        guest.on_slot_taken = host_publishes_next
        taken = guest.page_ready(0)
        guest.on_slot_taken = None
        assert published_in_window == [second]
        assert (taken.outcome, taken.token, sched.woken) == (Ready.WOKEN, first, [tasks[first]])
        g.hvc(0, FuncId.APF_ACK)

        after = guest.page_ready(0)
        assert (after.outcome, after.token) == (Ready.WOKEN, second), "the published token was lost"
        g.hvc(0, FuncId.APF_ACK)
        assert sched.woken == [tasks[first], tasks[second]] and sched.parked == set()
        apf_stats = g.stats()["apf"]
        assert apf_stats["queued"][0] == 0 and apf_stats["outstanding"][0] == 0
        assert apf_stats["page_ready"] == 2
    finally:
        g.close()


def test_stuck_guest_names_the_parked_task_its_token_and_what_the_host_knows(tmp_path, shm_leftovers):
    """The host holds the first page-ready for a minute: its task stays parked, everything else
    finishes, and the stuck detector fails the run within its timeout, naming the task, the token
    and the host's view of it (outstanding, with its page, no page-ready sent)."""
    report = os.path.join(str(tmp_path), "r.json")
    start = time.monotonic()
    proc = apf("run", "--guest-mem", "4MiB", "--host-mem", "1MiB", "--mode", "async", "--tasks", "4",
               "--accesses", "300", "--prefill", "--io-engine", "threads", "--stuck-timeout", "2s",
               "--inject", "page-ready:delay:delay=60s:n=1", "--report", report, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - start < 30
    found = re.search(r"guest is stuck: no access completed for \d+\.\ds; parked: (\S+) on token (0x[0-9a-f]+) "
                      r"\(host: outstanding \(page (\d+)\), no page-ready sent yet\)", proc.stderr)
    assert found, proc.stderr
    assert int(found.group(2), 16) & 0xFFF == 0          # vCPU 0's token


CPU_HOGS = 2
SOAK_RUNS = int(os.environ.get("APF_SOAK_RUNS", "200" if os.environ.get("APF_SLOW") else "3"))
SOAK_RUN_BOUND_S = 120


@pytest.mark.slow
@pytest.mark.timeout(60 + SOAK_RUNS * SOAK_RUN_BOUND_S)
def test_async_verify_under_cpu_load_never_hangs(tmp_path, shm_leftovers):
    """The configuration that once hung (async, 8 MiB guest, 2 MiB host, 1 vCPU, 8 tasks, no
    modelled latency, verified read-back) run repeatedly beside two CPU hogs: every run finishes
    verified. APF_SOAK_RUNS sets the count (default 3; APF_SLOW=1 makes it 200)."""
    runs = SOAK_RUNS
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(CPU_HOGS)]
    try:
        for i in range(runs):
            report = os.path.join(str(tmp_path), f"soak-{i}.json")
            proc = apf("run", "--guest-mem", "8MiB", "--host-mem", "2MiB", "--vcpus", "1", "--tasks", "8",
                       "--accesses", "400", "--mode", "async", "--seed", str(i), "--stuck-timeout", "20s",
                       "--report", report, timeout=SOAK_RUN_BOUND_S)
            assert proc.returncode == 0, f"run {i} of {runs}: {proc.stderr}"
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(5)
