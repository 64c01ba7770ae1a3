"""guest/waittable.py: sleepers by token, the wake-before-wait placeholder, and wake-all."""
from __future__ import annotations

import random
import threading

import pytest

from guest.waittable import TOKEN_VCPU_MASK, WaitTable, Wake


def token(counter: int, vcpu: int) -> int:
    """A token as the host builds it: (counter << 12) | vcpu."""
    return (counter << 12) | vcpu


def test_park_then_wake_returns_the_sleeper():
    """A wake after a park returns exactly the parked sleeper and empties the table."""
    waits: WaitTable[str] = WaitTable()
    assert waits.park(token(1, 0), "task-a") is True
    assert waits.sleepers() == {token(1, 0): "task-a"}
    assert waits.wake(token(1, 0)) == (Wake.WOKEN, "task-a")
    assert len(waits) == 0
    assert waits.placeholders_left == 0 and waits.placeholders_consumed == 0


def test_wake_before_park_leaves_a_placeholder_and_park_does_not_sleep():
    """A wake that finds no sleeper leaves one placeholder; the later park consumes it and returns False."""
    waits: WaitTable[str] = WaitTable()
    assert waits.wake(token(7, 1)) == (Wake.EARLY, None)
    assert len(waits) == 1 and waits.sleepers() == {}
    assert waits.placeholders_left == 1
    assert waits.park(token(7, 1), "task-b") is False
    assert len(waits) == 0
    assert waits.placeholders_consumed == 1
    # The placeholder is gone: the next park on that token really sleeps.
    assert waits.park(token(7, 1), "task-c") is True
    assert waits.sleepers() == {token(7, 1): "task-c"}


def test_a_second_wake_for_an_unwaited_token_keeps_a_single_placeholder():
    """Two wakes for a token nobody waits on leave one placeholder, consumed by one park only."""
    waits: WaitTable[str] = WaitTable()
    assert waits.wake(token(3, 0)) == (Wake.EARLY, None)
    assert waits.wake(token(3, 0)) == (Wake.DUPLICATE, None)
    assert waits.duplicates == 1
    assert len(waits) == 1
    assert waits.park(token(3, 0), "first") is False
    assert waits.park(token(3, 0), "second") is True


def test_wake_of_one_token_does_not_touch_another():
    """Waking token A returns A's sleeper only; B's sleeper stays parked."""
    waits: WaitTable[str] = WaitTable()
    waits.park(token(1, 0), "a")
    waits.park(token(2, 0), "b")
    assert waits.wake(token(1, 0)) == (Wake.WOKEN, "a")
    assert waits.sleepers() == {token(2, 0): "b"}


def test_double_park_on_one_token_raises():
    """Parking a second sleeper on a token that already has one is an error naming the token."""
    waits: WaitTable[str] = WaitTable()
    assert waits.park(token(5, 2), "first")
    with pytest.raises(RuntimeError, match=hex(token(5, 2))):
        waits.park(token(5, 2), "second")
    assert waits.sleepers() == {token(5, 2): "first"}


def test_wake_all_wakes_exactly_that_vcpus_sleepers_and_drops_its_placeholders():
    """wake_all(v) returns (token, sleeper) for every sleeper whose token's low 12 bits equal v, and no
    other; it drops v's
    placeholders (a later park on one sleeps) and keeps other vCPUs' sleepers and placeholders."""
    waits: WaitTable[str] = WaitTable()
    mine = {token(1, 1): "v1-a", token(2, 1): "v1-b", token(0xFFFFF, 1): "v1-c"}
    others = {token(3, 2): "v2-a", token(1, 0x101): "v257-a", token(4, 0): "v0-a"}
    for t, s in {**mine, **others}.items():
        assert waits.park(t, s)
    waits.wake(token(9, 1))        # placeholder of vCPU 1
    waits.wake(token(9, 2))        # placeholder of vCPU 2
    waits.wake(token(9, 0x101))    # placeholder of vCPU 257: same low byte as vCPU 1, other vCPU

    woken = waits.wake_all(1)

    assert sorted(woken) == sorted(mine.items())
    assert waits.sleepers() == others
    assert waits.park(token(9, 1), "sleeps") is True          # vCPU 1's placeholder was dropped
    assert waits.park(token(9, 2), "no-sleep") is False       # vCPU 2's was kept
    assert waits.park(token(9, 0x101), "no-sleep") is False   # so was vCPU 257's
    assert all(t & TOKEN_VCPU_MASK != 1 for t in others)


def test_wake_all_with_nothing_parked_returns_empty():
    """wake_all on a vCPU with no sleepers returns an empty list and leaves the table unchanged."""
    waits: WaitTable[str] = WaitTable()
    waits.park(token(1, 0), "a")
    assert waits.wake_all(3) == []
    assert waits.sleepers() == {token(1, 0): "a"}


@pytest.mark.timeout(60)
def test_concurrent_park_and_wake_never_lose_a_wake():
    """With parks and wakes of the same tokens racing on many threads, every token ends in exactly
    one of two ways: its park slept and its wake returned that sleeper (which then really wakes),
    or its wake left a placeholder that its park consumed without sleeping. No thread sleeps
    forever and the table ends empty."""
    rounds, tokens_per_round, threads_per_side = 6, 600, 4
    rng = random.Random(1234)
    outcomes = {True: 0, False: 0}
    for rnd in range(rounds):
        waits: WaitTable[threading.Event] = WaitTable()
        tokens = [token(rnd * tokens_per_round + i + 1, i % 8) for i in range(tokens_per_round)]
        events = {t: threading.Event() for t in tokens}
        park_result: dict[int, bool] = {}
        wake_result: dict[int, object] = {}
        slept_ok: dict[int, bool] = {}
        start = threading.Barrier(2 * threads_per_side)
        errors: list[BaseException] = []

        def parker(mine: list[int]) -> None:
            try:
                start.wait(timeout=10)
                for t in mine:
                    park_result[t] = waits.park(t, events[t])
                for t in mine:        # each task that went to sleep must be woken
                    if park_result[t]:
                        slept_ok[t] = events[t].wait(timeout=10)
            except BaseException as exc:  # reported below; a thread must not die silently
                errors.append(exc)

        def waker(mine: list[int]) -> None:
            try:
                start.wait(timeout=10)
                for t in mine:
                    outcome, sleeper = waits.wake(t)
                    assert (outcome is Wake.WOKEN) == (sleeper is not None), outcome
                    wake_result[t] = sleeper
                    if sleeper is not None:
                        sleeper.set()
            except BaseException as exc:
                errors.append(exc)

        park_order, wake_order = tokens[:], tokens[:]
        rng.shuffle(park_order)
        rng.shuffle(wake_order)
        threads = [threading.Thread(target=parker, args=(park_order[i::threads_per_side],))
                   for i in range(threads_per_side)]
        threads += [threading.Thread(target=waker, args=(wake_order[i::threads_per_side],))
                    for i in range(threads_per_side)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=30)
        assert not any(th.is_alive() for th in threads), "a parker never woke: a wake was lost"
        assert errors == []

        for t in tokens:
            if park_result[t]:
                assert wake_result[t] is events[t], f"token {t:#x}: slept but its wake found no sleeper"
                assert slept_ok[t], f"token {t:#x}: sleeper was never woken"
            else:
                assert wake_result[t] is None, f"token {t:#x}: park saw a placeholder yet wake found a sleeper"
        assert len(waits) == 0
        consumed = sum(1 for t in tokens if not park_result[t])
        assert waits.placeholders_consumed == consumed
        assert waits.placeholders_left == consumed
        for slept in park_result.values():
            outcomes[slept] += 1
    # The race must really have been run both ways, or the test proves nothing.
    assert outcomes[True] > 0 and outcomes[False] > 0, outcomes
