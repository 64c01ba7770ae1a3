"""The host's fault policy: sync never, async always, adaptive when the measurements say async pays."""
import pytest

from host.policy import MIN_GAIN, NOTIFY_SHARE, PROBE_EVERY, PROBE_MAX, WINDOW, Policy

MS = 1_000_000


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


def _async_faults(p: Policy, vcpu: int, count: int, idle_ns: int, clock: list[int]) -> None:
    """`count` async faults, after each of which the vCPU idles `idle_ns` until its page-ready."""
    for token in range(count):
        p.not_present(vcpu, token)
        p.vcpu_idle(vcpu, outstanding=1, now_ns=clock[0])
        clock[0] += idle_ns
        p.page_ready(vcpu, token)
        p.vcpu_active(vcpu, now_ns=clock[0])


def test_adaptive_refuses_when_swap_in_is_cheap_compared_with_notifications():
    """A swap-in that async would not shorten by MIN_GAIN of it, past the vCPU's part of the
    notification round trip: synchronous, except one probe in PROBE_EVERY refusals. A longer
    one: asynchronous."""
    break_even = NOTIFY_SHARE * 400_000 / (1 - MIN_GAIN)
    p = Policy("adaptive", 1)
    p.notified(400_000)
    p.swap_in_done(int(break_even) - 10_000)
    choices = [p.allows_async(0) for _ in range(PROBE_EVERY * 2)]
    assert choices.count(True) == 2 and choices[PROBE_EVERY - 1] and choices[-1]
    p2 = Policy("adaptive", 1)
    p2.notified(400_000)
    p2.swap_in_done(int(break_even) + 10_000)
    assert all(p2.allows_async(0) for _ in range(10))


def test_adaptive_does_not_take_async_for_a_saving_inside_the_noise():
    """One task: the vCPU idles nearly the whole swap-in after each not-present (idle 95% of
    it). Async would save 5%, less than MIN_GAIN: adaptive stays synchronous, whichever way
    the noise falls; at 80% idle it saves enough and async is taken."""
    for idle_share, expect_async in ((0.95, False), (0.8, True)):
        p = Policy("adaptive", 1)
        p.swap_in_done(10 * MS)
        _async_faults(p, 0, WINDOW, idle_ns=int(idle_share * 10 * MS), clock=[1])
        assert p.allows_async(0) is expect_async


def test_adaptive_learns_that_async_leaves_the_vcpu_idle():
    """One task: after each not-present the vCPU idles for the whole swap-in, so async costs
    more than the stall it saves and adaptive turns synchronous, on that vCPU only."""
    p = Policy("adaptive", 2)
    p.swap_in_done(2 * MS)
    clock = [1]
    _async_faults(p, 0, WINDOW, idle_ns=2 * MS + 200_000, clock=clock)
    assert p.vcpus[0].idle_per_fault_ns == pytest.approx(2.2 * MS)
    assert p.figures()["idle_ratio"] == [1.0, 0.0]
    assert not p.allows_async(0)
    assert p.allows_async(1)


def test_adaptive_returns_to_async_when_the_vcpu_stays_busy():
    """Once probes find the vCPU busy during the swap-ins (no idle), async pays again."""
    p = Policy("adaptive", 1)
    p.swap_in_done(2 * MS)
    clock = [1]
    _async_faults(p, 0, WINDOW, idle_ns=3 * MS, clock=clock)
    assert not p.allows_async(0)
    for _ in range(30):                      # busy vCPU: faults taken, never idle
        for token in range(WINDOW):
            p.not_present(0, token)
            p.page_ready(0, token)
            p.vcpu_active(0, now_ns=clock[0])
    assert p.vcpus[0].idle_per_fault_ns < MS and p.allows_async(0)


def test_idle_with_nothing_in_flight_is_not_charged_to_async():
    """A vCPU idle with no async fault outstanding and no page-ready on its way (say, every task
    has finished) does not make async look expensive."""
    p = Policy("adaptive", 1)
    p.swap_in_done(2 * MS)
    for token in range(WINDOW):
        p.not_present(0, token)
        p.page_ready(0, token)
        p.vcpu_active(0, now_ns=1)                 # the woken task ran
        p.vcpu_idle(0, outstanding=0, now_ns=1)
        p.vcpu_active(0, now_ns=1 + 50 * MS)
    assert p.vcpus[0].idle_per_fault_ns == 0.0 and p.allows_async(0)


def test_idle_waiting_for_a_delivered_page_ready_is_charged():
    """A WFI that began after the last fault's page-ready was sent (nothing outstanding, the
    interrupt still on its way) is time the vCPU spends waiting for async: it is charged."""
    p = Policy("adaptive", 1)
    for token in range(WINDOW):
        p.not_present(0, token)
        p.page_ready(0, token)
        p.vcpu_idle(0, outstanding=0, now_ns=10)
        p.vcpu_active(0, now_ns=10 + MS)
    assert p.vcpus[0].idle_per_fault_ns == pytest.approx(MS)


def test_idle_flag_follows_wfi_and_activity():
    """`is_idle` is true from a WFI until the vCPU's next trap or hypercall."""
    p = Policy("adaptive", 1)
    assert not p.is_idle(0)
    p.vcpu_idle(0, outstanding=0)
    assert p.is_idle(0)
    p.vcpu_active(0)
    assert not p.is_idle(0)


def test_one_slow_wake_up_does_not_swing_the_notification_cost():
    """A notification sample is capped at twice the estimate, so one scheduling hiccup of 10 ms
    moves the estimate by a tenth of the estimate, not by a millisecond."""
    p = Policy("adaptive", 1)
    p.notified(100_000)
    p.notified(10_000_000)
    assert p.notify_ns == pytest.approx(110_000)


def test_probes_thin_out_while_async_keeps_losing_and_resume_when_it_pays():
    """Each window of probes that finds the vCPU idle for the whole swap-in doubles the probe
    interval (up to PROBE_MAX); one window whose faults leave no idle brings it back at once."""
    p = Policy("adaptive", 1)
    p.swap_in_done(2 * MS)
    clock = [1]
    _async_faults(p, 0, WINDOW, idle_ns=3 * MS, clock=clock)
    intervals = []
    for _ in range(6):
        choices = [p.allows_async(0) for _ in range(PROBE_MAX * WINDOW)]
        probes = [i for i, allowed in enumerate(choices) if allowed][:WINDOW]
        intervals.append(probes[1] - probes[0])
        _async_faults(p, 0, WINDOW, idle_ns=3 * MS, clock=clock)
    assert intervals[0] == 2 * PROBE_EVERY and intervals[-1] == PROBE_MAX
    assert p.figures()["probe_every"] == [PROBE_MAX]
    assert intervals == sorted(intervals)
    for token in range(WINDOW):                 # the workload changed: other tasks keep it busy
        p.not_present(0, token)
        p.page_ready(0, token)
        p.vcpu_active(0, now_ns=clock[0])
    assert p.vcpus[0].probe_every == PROBE_EVERY
