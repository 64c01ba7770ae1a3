"""Fault injection and the guest's access contexts end to end, through `apf run`: each option or
trigger has the documented effect on a real run, read from the report's interface fields
(README "The report", "Fault injection")."""
import re

import pytest

from tests.helpers import run_report

ASYNC = ["--guest-mem", "4MiB", "--host-mem", "1MiB", "--mode", "async", "--tasks", "4", "--accesses", "300",
         "--swap-latency", "2ms", "--prefill"]
SYNC = ["--guest-mem", "4MiB", "--host-mem", "1MiB", "--tasks", "2", "--accesses", "300", "--prefill"]
ACK_DELAY_MS = 500


def test_ack_late_contexts_and_the_report_timing_fields(tmp_path, shm_leftovers):
    """One vCPU, four tasks, 20 % kernel-mode and 10 % interrupts-off accesses, the third page-ready
    acknowledged 500 ms late (`ack:late:delay=500ms:n=3`):
    - the late ack fired once and held the only vCPU for its whole delay (the workload cannot take
      less wall time than that), yet every not-present still got its page-ready;
    - kernel-mode faults without SEND_ALWAYS and interrupts-off faults were made synchronous and
      counted, in shares near the fractions asked for;
    - `vcpu_idle_s`, `vcpu_hvc_s`, `page_ready` and `parked_us` {p50, p99, max} are filled in and
      consistent with each other and with the per-vCPU rows."""
    proc, r = run_report(tmp_path, *ASYNC, "--kernel-frac", "0.2", "--irqoff-frac", "0.1",
                         "--inject", f"ack:late:delay={ACK_DELAY_MS}ms:n=3")
    assert proc.returncode == 0, proc.stderr
    assert r["ok"] and r["pages_corrupt"] == 0
    assert r["injected"] == {"ack:late": 1}
    parked = r["parked_us"]
    assert parked["count"] == r["page_ready"] == r["faults"]["async"] > 0
    assert 0 < parked["p50"] <= parked["p99"] <= parked["max"]
    assert r["wall_s"] >= ACK_DELAY_MS / 1000, r["wall_s"]     # whether a task was parked then is luck
    assert r["host_apf"]["page_ready"] == r["host_apf"]["not_present"]
    reasons = r["faults"]["sync_reasons"]
    eligible = r["faults"]["async"] + reasons["kernel_context"] + reasons["irqs_disabled"]
    assert 0.04 <= reasons["irqs_disabled"] / eligible <= 0.2, reasons           # 10 % asked
    assert 0.1 <= reasons["kernel_context"] / eligible <= 0.3, reasons           # 20 % of the other 90 %
    [vcpu] = r["per_vcpu"]
    assert (vcpu["idle_s"], vcpu["hvc_s"], vcpu["page_ready"]) == (r["vcpu_idle_s"], r["vcpu_hvc_s"], r["page_ready"])
    assert 0 < r["vcpu_idle_s"] and 0 < r["vcpu_hvc_s"]
    assert r["vcpu_idle_s"] + r["vcpu_stall_s"] <= r["wall_s"]
    assert r["vcpu_hvc_s"] < r["wall_s"]


def test_send_always_lets_kernel_faults_be_asynchronous(tmp_path, shm_leftovers):
    """With --send-always, kernel-mode accesses fault asynchronously (no `kernel_context` refusal),
    while interrupts-off accesses are still synchronous."""
    proc, r = run_report(tmp_path, *ASYNC, "--kernel-frac", "0.5", "--irqoff-frac", "0.1", "--send-always")
    assert proc.returncode == 0, proc.stderr
    assert r["ok"] and r["faults"]["async"] > 0
    assert "kernel_context" not in r["faults"]["sync_reasons"]
    assert r["faults"]["sync_reasons"]["irqs_disabled"] > 0


def test_after_trigger_fails_every_write_back_from_the_nth_and_reports_the_overdraft(tmp_path, shm_leftovers):
    """`swap-write:eio:after=200`: the first 199 write-backs succeed and every later one fails; each
    failed victim stays resident one page over budget, so the report's `memory.over_budget_pages`
    is what resident and free pages take beyond the budget, and equals the overdraft events less
    the few that evictions paid back: successful write-backs still in flight (at most --io-depth,
    8) and clean drops (read-ahead pages dropped unused among them). A
    write-back whose page a fault took back meanwhile (`rescued`) also counts as a write error
    when it fails, but goes no page over budget: that page is resident and charged already, and
    only turns dirty (its swap copy is lost). No page is corrupted."""
    proc, r = run_report(tmp_path, *SYNC, "--inject", "swap-write:eio:after=200")
    assert proc.returncode == 0, proc.stderr
    assert r["ok"] and r["pages_corrupt"] == 0 and r["pages_verified"] == r["pages_written"]
    assert r["swap"]["writes"] == 199
    memory = r["host"]["memory"]
    assert memory["over_budget_events"] > 0
    assert 0 <= r["swap"]["write_errors"] - memory["over_budget_events"] <= r["host_faults"]["rescued"]
    assert memory["over_budget_pages"] == memory["resident_pages"] + memory["free_pages"] - memory["budget_pages"]
    paid_back = memory["over_budget_events"] - memory["over_budget_pages"]
    assert 0 <= paid_back <= 8 + r["swap"]["clean_drops"], (memory, r["swap"])
    assert "host is 1 page(s) over its memory budget" in proc.stderr


def test_pages_trigger_poisons_exactly_those_pages(tmp_path, shm_leftovers):
    """`swap-read:eio:pages=0+5`: swap-ins of pages 0 and 5 fail (both are evicted during the
    prefill and read again), others do not: two read errors, two poisoned pages, a task killed
    naming one of them, exit status 1."""
    # Without readahead: with it, a fault on page 0 reads page 5 in its window, and whether page 5
    # is read once or again later depends on how the two tasks interleave.
    proc, r = run_report(tmp_path, *SYNC, "--page-cluster", "0", "--inject", "swap-read:eio:pages=0+5")
    assert proc.returncode == 1
    assert r["swap"]["read_errors"] == r["pages_poisoned"] == r["host_faults"]["poisoned"] == 2
    assert r["pages_corrupt"] == 0
    [error] = r["tasks"]["errors"]
    assert re.fullmatch(r"task \S+ killed: memory failure: page (0|5) \(IPA 0x(0|5000)\) could not be read "
                        r"from swap \(like SIGBUS on a poisoned page\)", error), error
