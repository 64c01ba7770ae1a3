"""guest/haltpoll.py: the halt-poll window grows, shrinks and stays as KVM's `kvm_vcpu_halt()`
adjusts `vcpu->halt_poll_ns`, and the poll loop stops at the event or at the window's end."""
from __future__ import annotations

import pytest

from guest.haltpoll import GROW_START_NS, Adjust, HaltPollWindow, poll

US = 1_000


def test_a_new_window_is_zero_and_a_short_halt_grows_it_to_the_grow_start():
    """A vCPU starts without polling; its first halt shorter than the max grows the window to
    halt_poll_ns_grow_start (10 µs), not to 0 x 2."""
    w = HaltPollWindow(max_ns=200 * US)
    assert w.poll_ns() == 0
    assert w.reflect(50 * US) is Adjust.GREW
    assert w.window_ns == GROW_START_NS == 10 * US


def test_the_window_doubles_on_each_short_halt_it_missed_up_to_the_max():
    """Halts longer than the window but shorter than the max double it: 10, 20, 40, 80, 160 µs,
    then the max (200 µs), never above."""
    w = HaltPollWindow(max_ns=200 * US)
    seen = []
    for _ in range(7):
        w.reflect(199 * US)
        seen.append(w.window_ns // US)
    assert seen == [10, 20, 40, 80, 160, 200, 200]


def test_a_halt_the_poll_caught_keeps_the_window():
    """A halt no longer than the window (the poll caught the event) leaves the window as it is."""
    w = HaltPollWindow(max_ns=200 * US, window_ns=40 * US)
    assert w.reflect(40 * US) is Adjust.KEPT
    assert w.reflect(3 * US) is Adjust.KEPT
    assert w.window_ns == 40 * US


def test_a_halt_longer_than_the_max_halves_the_window_down_to_zero():
    """Halts longer than the max halve the window (halt_poll_ns_shrink = 2) until it reaches 0;
    a window of 0 is not shrunk further and the next short halt restarts from the grow start."""
    w = HaltPollWindow(max_ns=200 * US, window_ns=160 * US)
    sizes = []
    while w.window_ns:
        assert w.reflect(5_000 * US) is Adjust.SHRANK
        sizes.append(w.window_ns)
    assert sizes[:3] == [80 * US, 40 * US, 20 * US] and sizes[-1] == 0
    assert w.reflect(5_000 * US) is Adjust.KEPT
    assert w.reflect(30 * US) is Adjust.GREW and w.window_ns == GROW_START_NS


def test_shrink_zero_resets_the_window():
    """halt_poll_ns_shrink = 0 (older kernels' default) resets the window to 0 on a long halt."""
    w = HaltPollWindow(max_ns=200 * US, shrink=0, window_ns=160 * US)
    assert w.reflect(1_000 * US) is Adjust.SHRANK and w.window_ns == 0


def test_a_halt_of_exactly_the_max_neither_grows_nor_shrinks():
    """Between the bounds' strict comparisons: a halt of exactly the max keeps the window."""
    w = HaltPollWindow(max_ns=200 * US, window_ns=80 * US)
    assert w.reflect(200 * US) is Adjust.KEPT and w.window_ns == 80 * US


def test_a_max_below_the_grow_start_caps_the_first_growth():
    """With a max under 10 µs the window grows straight to the max."""
    w = HaltPollWindow(max_ns=4 * US)
    assert w.reflect(3 * US) is Adjust.GREW and w.window_ns == 4 * US


def test_a_lowered_max_clamps_the_window_before_the_next_poll():
    """As kvm_vcpu_halt() clamps vcpu->halt_poll_ns to a max lowered since: the poll uses the new max."""
    w = HaltPollWindow(max_ns=200 * US, window_ns=160 * US)
    w.max_ns = 50 * US
    assert w.poll_ns() == 50 * US


def test_max_zero_is_off():
    """A max of 0 never polls and never grows."""
    w = HaltPollWindow(max_ns=0)
    assert w.reflect(1 * US) is Adjust.KEPT
    assert w.poll_ns() == 0


@pytest.mark.parametrize("kwargs", [{"max_ns": -1}, {"max_ns": 1, "grow": 0}, {"max_ns": 1, "shrink": -1},
                                    {"max_ns": 1, "grow_start_ns": -5}])
def test_bad_parameters_are_refused(kwargs):
    """Negative durations or factors, or a growth factor below 1, are a ValueError naming them."""
    with pytest.raises(ValueError, match=r"^bad halt-poll parameters: "):
        HaltPollWindow(**kwargs)


class FakeClock:
    """A clock that advances `step` ns on every read; `relax()` counts the pauses."""

    def __init__(self, step: int):
        self.now, self.step, self.relaxed = 1_000_000, step, 0

    def __call__(self) -> int:
        self.now += self.step
        return self.now

    def relax(self) -> None:
        self.relaxed += 1


def test_poll_catches_an_event_that_comes_within_the_window():
    """The loop stops at the first ready() that is true and reports the time polled so far."""
    clock = FakeClock(step=1 * US)
    start = clock.now
    caught, polled = poll(50 * US, lambda: clock.now - start >= 20 * US, clock, clock.relax)
    assert caught is True
    assert 20 * US <= polled <= 22 * US
    assert clock.relaxed >= 9


def test_poll_gives_up_at_the_end_of_the_window():
    """An event that never comes: the loop ends once the window has passed, having polled it all."""
    clock = FakeClock(step=1 * US)
    caught, polled = poll(30 * US, lambda: False, clock, clock.relax)
    assert caught is False
    assert 30 * US <= polled <= 31 * US


def test_a_zero_window_still_looks_once():
    """A window of 0 checks once (an event already pending is caught) and does not pause."""
    clock = FakeClock(step=1 * US)
    assert poll(0, lambda: True, clock, clock.relax)[0] is True
    assert poll(0, lambda: False, clock, clock.relax) == (False, 0)
    assert clock.relaxed == 0
