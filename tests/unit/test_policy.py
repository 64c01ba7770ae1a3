"""The host's fault policy: sync never, async always, adaptive when the measurements say async pays."""
import pytest

from host.policy import COST_FACTOR, IDLE_LIMIT, PROBE_EVERY, Policy


def test_fixed_policies():
    """`sync` never allows async and `async` always does; both count their choices."""
    sync, always = Policy("sync", 1), Policy("async", 1)
    assert [sync.allows_async(0) for _ in range(5)] == [False] * 5
    assert [always.allows_async(0) for _ in range(5)] == [True] * 5
    assert (sync.chosen_sync, always.chosen_async) == (5, 5)


def test_unknown_policy_is_an_error():
    """A policy name outside the three is refused with the list of names."""
    with pytest.raises(ValueError, match="sync, async, adaptive"):
        Policy("sometimes", 1)


def test_adaptive_tries_async_before_it_has_measured_anything():
    """With no figures yet, adaptive is optimistic."""
    assert Policy("adaptive", 1).allows_async(0)


def test_adaptive_refuses_when_swap_in_is_cheap_compared_with_notifications():
    """Swap-in no slower than COST_FACTOR notification round trips: synchronous, except one probe
    in PROBE_EVERY refusals."""
    p = Policy("adaptive", 1)
    p.swap_in_done(100_000)
    p.notified(100_000)
    choices = [p.allows_async(0) for _ in range(PROBE_EVERY * 2)]
    assert choices.count(True) == 2 and choices[PROBE_EVERY - 1] and choices[-1]
    p2 = Policy("adaptive", 1)
    p2.swap_in_done(int(COST_FACTOR * 100_000) + 10_000)
    p2.notified(100_000)
    assert all(p2.allows_async(0) for _ in range(10))


def test_adaptive_learns_that_async_leaves_the_vcpu_idle():
    """After async faults whose vCPU went idle (WFI) before its page was ready, the idle ratio
    climbs above IDLE_LIMIT and adaptive turns synchronous; overlapped faults bring it back."""
    p = Policy("adaptive", 2)
    p.swap_in_done(10_000_000)
    p.notified(100_000)
    token = 1
    while p.vcpus[0].idle_ratio <= IDLE_LIMIT:
        p.not_present(0, token)
        p.vcpu_idle(0, outstanding=1)
        token += 1
    assert not p.allows_async(0)
    assert p.allows_async(1)                     # per vCPU
    while p.vcpus[0].idle_ratio > IDLE_LIMIT:
        p.not_present(0, token)
        p.vcpu_active(0)
        p.page_ready(0, token)
        token += 1
    assert p.allows_async(0)


def test_idle_with_overlapping_faults_counts_as_useful():
    """Going idle with several faults in flight still overlapped their I/O: async stays on."""
    p = Policy("adaptive", 1)
    for token in range(1, 50):
        p.not_present(0, token)
        p.vcpu_idle(0, outstanding=4)
    assert p.vcpus[0].idle_ratio == 0.0 and p.allows_async(0)


def test_idle_flag_follows_wfi_and_activity():
    """`is_idle` is true from a WFI until the vCPU's next trap or hypercall."""
    p = Policy("adaptive", 1)
    assert not p.is_idle(0)
    p.vcpu_idle(0, outstanding=0)
    assert p.is_idle(0)
    p.vcpu_active(0)
    assert not p.is_idle(0)
