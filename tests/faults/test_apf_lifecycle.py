"""The APF lifecycle as KVM lives it, against a real host: disable stops all delivery, enable
starts clean, a masked page-ready interrupt holds completions back, an untaken interrupt is
raised again, the guest's CPU hotplug and suspend keep every page and resume async faults, and
the guest's own checks catch a host that notifies a context that cannot take it."""
from __future__ import annotations

import re

import pytest

from protocol.hypercalls import DEFAULT_PAGE_READY_PPI, ApfFlags, FuncId, SmcccRet
from protocol.messages import InjectExc
from shared.layout import WAKE_ALL_TOKEN
from tests.helpers import RawGuest, apf, run_report

HEARTBEAT_S = 0.25


@pytest.fixture
def guest(raw_guest):
    """start(*host_args) -> a RawGuest on a host that keeps 16 of 64 touched pages."""
    return lambda *args: raw_guest("--guest-mem", "1MiB", "--host-mem", "64KiB", "--io-engine", "threads", *args)


def _swapped(g: RawGuest, n: int) -> list[int]:
    pages = [p for p in g.swapped_pages() if p < 64][:n]
    assert len(pages) == n
    return pages


def _block(g: RawGuest, vcpu: int = 0) -> bytes:
    start = 64 * (1 + vcpu)
    return bytes(g.control.mm[start:start + 64])


def test_disable_then_enable_without_taking_anything_brings_async_faults_back(guest):
    """The dialogue that hung APF for good: enable, leave the wake-all in the slot, disable (as a
    CPU going offline, which takes no interrupt), enable again. The second enable starts from a
    clean block, so its own wake-all arrives (enable() waits for it, bounded; with the old token
    left in the slot it never came), and the next major fault is asynchronous again (it was
    `wake_all_pending` forever)."""
    g = guest()
    g.enable(0, take_wake_all=False)
    g.pump_until(lambda: g.control.read(0, "ready_token") == WAKE_ALL_TOKEN, "the first wake-all")
    assert g.hvc(0, FuncId.APF_DISABLE).ret[0] == SmcccRet.SUCCESS
    g.irqs.clear()
    g.enable(0)                                  # waits for the new wake-all and takes it
    reply = g.trap(0, _swapped(g, 1)[0])
    assert isinstance(reply, InjectExc), reply
    assert g.stats()["faults"]["sync_reasons"].get("wake_all_pending", 0) == 0


def test_after_disable_nothing_is_delivered_and_the_block_is_not_written(guest):
    """APF_DISABLE with one page-ready in the slot and one fault in flight: no wake-all follows, the
    in-flight page's page-ready is dropped when its page comes in (`dropped_by_disable`), no
    interrupt arrives and the block stays byte for byte as the disable left it."""
    g = guest("--swap-latency", "50ms")
    g.enable(0)
    first, second = _swapped(g, 2)
    a = g.trap(0, first).token
    g.pump_until(lambda: g.control.read(0, "ready_token") == a, "a's page-ready")
    assert isinstance(g.trap(0, second), InjectExc)
    assert g.hvc(0, FuncId.APF_DISABLE).ret[0] == SmcccRet.SUCCESS
    g.irqs.clear()
    block = _block(g)
    g.pump_until(lambda: g.stats()["apf"]["dropped_by_disable"] == 1, "the in-flight page to come in")
    g.pump(int(3 * HEARTBEAT_S * 1000))         # three re-checks: none may deliver or re-raise
    assert g.irqs == [] and _block(g) == block
    assert g.stats()["apf"]["wake_all"] == 1     # the enable's only


@pytest.mark.parametrize("call, args, expected", [
    (FuncId.APF_DISABLE, (), SmcccRet.NOT_REQUIRED),                        # disabled already
    (FuncId.GIC_PPI_DISABLE, (DEFAULT_PAGE_READY_PPI - 1,), SmcccRet.INVALID_PARAMETER),   # unknown PPI
    (FuncId.GIC_PPI_ENABLE, (), SmcccRet.INVALID_PARAMETER),                # no PPI given
    (FuncId.GIC_PPI_ENABLE, (DEFAULT_PAGE_READY_PPI, 0), SmcccRet.INVALID_PARAMETER),     # extra argument
    (FuncId.GIC_PPI_DISABLE, (DEFAULT_PAGE_READY_PPI,), SmcccRet.SUCCESS),
], ids=["disable-twice", "unknown-ppi", "no-ppi", "extra-arg", "mask"])
def test_lifecycle_hypercalls_answer_with_the_smccc_error(guest, call, args, expected):
    """Disabling twice is NOT_REQUIRED; a PPI other than the page-ready one, or a wrong argument
    count, is INVALID_PARAMETER; the host keeps serving."""
    g = guest()
    assert g.hvc(0, call, *args).ret[0] == expected
    assert g.stats()["session"]["attached"]


def test_enable_twice_is_not_required_and_changes_nothing(guest):
    """APF_ENABLE on an enabled vCPU answers NOT_REQUIRED and sends no second wake-all."""
    g = guest()
    g.enable(0)
    ipa = g.info["control_ipa"] + 64
    flags = ApfFlags.ENABLED | ApfFlags.DELIVERY_AS_INT | ApfFlags.SEND_ALWAYS
    assert g.hvc(0, FuncId.APF_ENABLE, ipa | int(flags), DEFAULT_PAGE_READY_PPI).ret[0] == SmcccRet.NOT_REQUIRED
    assert g.stats()["apf"]["wake_all"] == 1 and g.irqs == []


def test_masked_page_ready_ppi_delivers_every_token_after_the_unmask(guest):
    """With the page-ready PPI masked, two completed faults stay in the done queue (no interrupt,
    slot free); after GIC_PPI_ENABLE both are delivered in the done queue's order (completion
    order, which the I/O depth may make differ from trap order), one per ACK."""
    g = guest()
    g.enable(0)
    assert g.hvc(0, FuncId.GIC_PPI_DISABLE, DEFAULT_PAGE_READY_PPI).ret[0] == SmcccRet.SUCCESS
    tokens = [g.trap(0, gfn).token for gfn in _swapped(g, 2)]
    g.pump_until(lambda: g.stats()["apf"]["queued"][0] == 2, "both pages in")
    g.pump(int(2 * HEARTBEAT_S * 1000))
    assert g.irqs == [] and g.control.read(0, "ready_token") == 0
    done = g.stats()["apf"]["tokens"][0]["done"]
    assert sorted(done) == sorted(tokens)
    assert g.hvc(0, FuncId.GIC_PPI_ENABLE, DEFAULT_PAGE_READY_PPI).ret[0] == SmcccRet.SUCCESS
    taken = []
    for _ in tokens:
        g.pump_until(lambda: g.control.read(0, "ready_token"), "a page-ready")
        taken.append(g.take_page_ready(0))
    assert taken == done and g.stats()["apf"]["queued"][0] == 0


def test_an_untaken_page_ready_interrupt_is_raised_again(guest):
    """A guest that leaves the slot full after its interrupt gets the interrupt again from the
    host's re-check (counted `reraised`); taking the slot ends it."""
    g = guest()
    g.enable(0)
    g.irqs.clear()
    token = g.trap(0, _swapped(g, 1)[0]).token
    g.pump_until(lambda: len(g.irqs) >= 2, "two interrupts for one page-ready", bound_s=3.0)
    assert g.stats()["apf"]["reraised"] >= 1
    assert g.take_page_ready(0) == token


HOTPLUG = ["--guest-mem", "8MiB", "--host-mem", "2MiB", "--vcpus", "2", "--tasks", "6", "--accesses", "600",
           "--mode", "async", "--swap-latency", "1ms"]


def test_cpu_hotplug_keeps_every_page_and_async_faults_resume(tmp_path, shm_leftovers):
    """Every 300 accesses a vCPU goes offline for 50 ms (APF_DISABLE, waking its own sleepers)
    and comes back (APF_ENABLE): the run verifies every page, each offline is followed by a
    re-enable, and every vCPU that came back took asynchronous faults afterwards."""
    proc, r = run_report(tmp_path, *HOTPLUG, "--inject", "cpu-hotplug:every=300:delay=50ms")
    assert proc.returncode == 0, proc.stderr
    assert r["ok"] and r["pages_corrupt"] == 0 and r["pages_verified"] == r["pages_written"]
    offlines = r["injected"]["cpu-hotplug:offline"]
    rows = [row for phase in r["phases"].values() for row in phase["per_vcpu"]]
    assert offlines > 0 and sum(row["reenabled"] for row in rows) == offlines
    back = [row for row in r["per_vcpu"] if row["reenabled"]]
    assert back and all(row["async_after_reenable"] > 0 for row in back)
    assert r["apf"]["bad_notifications"] == 0


def test_suspend_and_resume_keeps_every_page_and_async_faults_resume(tmp_path, shm_leftovers):
    """After 1,000 accesses the whole guest suspends for 300 ms (every vCPU offline) and resumes:
    the run verifies every page and both vCPUs re-enable APF and fault asynchronously again."""
    proc, r = run_report(tmp_path, *HOTPLUG, "--inject", "suspend:after=1000:delay=300ms")
    assert proc.returncode == 0, proc.stderr
    assert r["ok"] and r["pages_verified"] == r["pages_written"]
    assert r["injected"] == {"suspend:all": 1}
    assert [row["reenabled"] for row in r["per_vcpu"]] == [1, 1]
    assert all(row["async_after_reenable"] > 0 for row in r["per_vcpu"])
    assert r["apf"]["offline_ns"] >= 300_000_000     # the vCPU that suspended; the other joins later


@pytest.mark.parametrize("chaos, extra, message", [
    ("host:async-anywhere:n=1", ["--irqoff-frac", "0.5"],
     r"host bug: PAGE_NOT_PRESENT \(token 0x[0-9a-f]+\) injected with interrupts off \(a Linux guest would panic\)"),
    ("host:ready-after-disable", ["--inject", "cpu-hotplug:every=200:delay=600ms"],
     r"host bug: a page-ready interrupt while APF is disabled on this vCPU \(a Linux guest would panic\)"),
])
def test_the_guest_catches_a_host_that_notifies_what_it_cannot_take(tmp_path, shm_leftovers, chaos, extra, message):
    """A misbehaving host (chaos on the host side): the guest counts the bad notification, fails
    the run and names it."""
    proc, r = run_report(tmp_path, "--guest-mem", "8MiB", "--host-mem", "2MiB", "--tasks", "4",
                         "--accesses", "400", "--mode", "async", "--inject", chaos, *extra)
    assert proc.returncode == 1
    assert re.search(r"^vCPU \d+: " + message + "$", r["error"]), r["error"]
    assert sum(p["apf"]["bad_notifications"] for p in r["phases"].values()) == 1


@pytest.mark.parametrize("spec, error", [
    ("cpu-hotplug:every=5", "--inject 'cpu-hotplug:every=5': needs delay=DUR (e.g. delay=20ms)"),
    ("suspend:after=5", "--inject 'suspend:after=5': needs delay=DUR (e.g. delay=20ms)"),
    ("hotplug:every=5:delay=1ms", "--inject 'hotplug:every=5:delay=1ms': unknown fault; known: "),
])
def test_lifecycle_chaos_specs_are_checked(spec, error):
    """A lifecycle spec without `delay`, or an unknown target, is a one-line error, exit 2."""
    proc = apf("guest", "--run-dir", "/nonexistent-apf", "--inject", spec)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert error in lines[-1] and not any("Traceback" in line for line in lines)
