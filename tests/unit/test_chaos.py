"""shared/chaos.py: the --inject spec syntax (each bad spec refused with its exact message), which
side keeps which rule, and when each trigger (none, every=, n=, after=, pages=, p=) fires."""
from __future__ import annotations

import errno
import re

import pytest

from shared.chaos import GUEST, HOST, Chaos, ChaosSpecError, parse_rule, validate_specs

KNOWN = ("swap-read:eio, swap-write:eio, swap-write:enospc, swap-latency:spike, swap-latency:pareto, "
         "swap-remote:timeout, swap-remote:disconnect, page-ready:delay, page-ready:duplicate, page-ready:reorder, host:mute, kill-host:mid-io, "
         "kill-host:mid-eviction, host:async-anywhere, host:ready-after-disable, ack:late, ack:never, "
         "kill-guest:parked, cpu-hotplug:offline, suspend:all")
KEYS = "every, p, pages, after, n, delay, scale, alpha, max"

BAD_SPECS = [
    ("bogus:x", f"unknown fault; known: {KNOWN}"),
    ("swap-read", f"unknown fault; known: {KNOWN}"),
    ("ack:sometimes", f"unknown fault; known: {KNOWN}"),
    ("swap-read:eio:every", f"'every' is not KEY=VALUE with KEY one of {KEYS}"),
    ("swap-read:eio:bogus=1", f"'bogus=1' is not KEY=VALUE with KEY one of {KEYS}"),
    ("swap-read:eio:every=0", "every: must be at least 1"),
    ("swap-read:eio:n=0", "n: must be at least 1"),
    ("swap-read:eio:after=-1", "after: must be at least 1"),
    ("swap-read:eio:every=x", "every: 'x' is not a whole number"),
    ("swap-read:eio:pages=1+x", "pages: 'x' is not a whole number"),
    ("swap-read:eio:pages=", "pages: names no page (e.g. pages=3+17)"),
    ("swap-read:eio:p=0", "p: must be in (0, 1]"),
    ("swap-read:eio:p=1.5", "p: must be in (0, 1]"),
    ("swap-read:eio:p=x", "p: 'x' is not a number"),
    ("swap-latency:pareto:scale=1ms:alpha=0", "alpha: must be positive"),
    ("page-ready:delay:delay=fast", "delay: 'fast' is not a duration: durations take ns, us, ms, s (examples: 150us, 2ms, 1.5s)"),
    ("swap-latency:spike", "needs delay=DUR (e.g. delay=20ms)"),
    ("page-ready:delay:p=0.5", "needs delay=DUR (e.g. delay=20ms)"),
    ("ack:late", "needs delay=DUR (e.g. delay=20ms)"),
    ("swap-latency:pareto", "needs scale=DUR (e.g. scale=200us)"),
    ("swap-latency:pareto:scale=1ms:max=1ms", "max=DUR bounds a pareto delay and must be above its scale"),
    ("swap-latency:spike:delay=1ms:max=2ms", "max=DUR applies to swap-latency:pareto only"),
    ("swap-latency:pareto:scale=36us:max=56ms:max=1s", "max= is given twice"),
]


@pytest.mark.parametrize("spec, says", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_a_bad_spec_is_refused_with_its_message(spec, says):
    """Each malformed spec raises ChaosSpecError (a ValueError) quoting the spec, then the reason;
    validate_specs() refuses it the same way."""
    expected = rf"^--inject '{re.escape(spec)}': {re.escape(says)}$"
    with pytest.raises(ChaosSpecError, match=expected):
        parse_rule(spec)
    with pytest.raises(ChaosSpecError, match=expected):
        validate_specs(["swap-read:eio", spec])
    assert issubclass(ChaosSpecError, ValueError)


GOOD_SPECS = [
    ("swap-read:eio", dict(target="swap-read", action="eio", every=0, n=0, after=0, p=1.0, pages=None)),
    ("swap-write:enospc:p=0.2", dict(p=0.2)),
    ("swap-read:eio:pages=3+5,8", dict(pages=frozenset({3, 5, 8}))),
    ("kill-host:mid-io:n=20", dict(n=20)),
    ("host:mute:after=300", dict(after=300)),
    ("swap-read:eio:every=50", dict(every=50)),
    ("swap-latency:spike:p=0.01:delay=20ms", dict(p=0.01, delay_ns=20_000_000)),
    ("swap-latency:pareto:scale=200us:alpha=2.5", dict(scale_ns=200_000, alpha=2.5)),
    ("ack:late:delay=1.5s", dict(delay_ns=1_500_000_000)),
]


@pytest.mark.parametrize("spec, fields", GOOD_SPECS, ids=[g[0] for g in GOOD_SPECS])
def test_a_good_spec_parses_into_its_fields(spec, fields):
    """Triggers and values land in the rule's fields, in their units (durations in ns)."""
    rule = parse_rule(spec)
    assert {k: getattr(rule, k) for k in fields} == fields
    assert rule.spec == spec


def test_each_side_keeps_only_its_rules():
    """from_specs() keeps the rules of one side, in order; the other side's rules are dropped,
    and a side with none is falsy."""
    specs = ["swap-read:eio", "ack:never", "page-ready:duplicate", "kill-guest:parked"]
    host = Chaos.from_specs(specs, HOST)
    guest = Chaos.from_specs(specs, GUEST)
    assert [r.spec for r in host.rules] == ["swap-read:eio", "page-ready:duplicate"]
    assert [r.spec for r in guest.rules] == ["ack:never", "kill-guest:parked"]
    assert host.targets(("swap-read",)) and not host.targets(("ack",))
    assert not Chaos.from_specs(["ack:never"], HOST) and not Chaos.from_specs(None, HOST)


def _fired(spec: str, gfns: list[int | None]) -> list[int]:
    """Ask a one-rule host Chaos about one event per item of `gfns`; the 1-based events it fired on."""
    chaos = Chaos.from_specs([spec], HOST)
    target, action = spec.split(":")[:2]
    return [i for i, gfn in enumerate(gfns, 1) if chaos.fires(target, action, gfn=gfn)]


TEN = [None] * 10
TRIGGERS = [
    ("swap-read:eio", TEN, list(range(1, 11))),                        # no trigger: every time
    ("swap-read:eio:every=3", TEN, [3, 6, 9]),
    ("swap-read:eio:n=4", TEN, [4]),                                   # the 4th event only
    ("swap-read:eio:after=7", TEN, [7, 8, 9, 10]),                     # from the 7th event on
    ("swap-read:eio:n=2:every=2", TEN, [2]),
    ("swap-read:eio:pages=4+7", [1, 4, 5, 7, 4, 9], [2, 4, 5]),        # only those pages, each time
    ("swap-read:eio:pages=4+7:n=2", [1, 4, 5, 7, 4, 9], [2]),           # n counts every event asked
    ("swap-read:eio:pages=4:after=3", [4, 4, 4, 1, 4], [3, 5]),
]


@pytest.mark.parametrize("spec, gfns, fired", TRIGGERS, ids=[t[0] for t in TRIGGERS])
def test_triggers_fire_on_exactly_these_events(spec, gfns, fired):
    """Each trigger fires on exactly the events listed: every=N on multiples of N, n=N on the N-th
    only, after=N on the N-th and later, pages= only for those pages (events on other pages still
    count for n/after/every), and triggers combine with AND."""
    assert _fired(spec, gfns) == fired


def test_probability_is_seeded_and_roughly_p():
    """p=F fires on a fraction near F of the events, the same events for the same seed and other
    events for another seed."""
    def run(seed: int) -> list[bool]:
        chaos = Chaos.from_specs(["swap-write:eio:p=0.3"], HOST, seed=seed)
        return [bool(chaos.fires("swap-write", "eio")) for _ in range(2000)]
    first, again, other = run(1), run(1), run(2)
    assert first == again and first != other
    assert 0.25 < sum(first) / len(first) < 0.35


def test_io_errors_latency_and_summary():
    """io_error() gives the rule's errno (EIO, ENOSPC) or 0, extra_latency_ns() the spike's delay or
    at least the Pareto scale, and summary() counts what fired, by TARGET:ACTION."""
    chaos = Chaos.from_specs(["swap-read:eio:n=2", "swap-write:enospc", "swap-latency:spike:every=2:delay=5ms"],
                             HOST)
    assert [chaos.io_error("swap-read", 1) for _ in range(3)] == [0, errno.EIO, 0]
    assert chaos.io_error("swap-write", 1) == errno.ENOSPC
    assert [chaos.extra_latency_ns() for _ in range(4)] == [0, 5_000_000, 0, 5_000_000]
    assert chaos.summary() == {"swap-read:eio": 1, "swap-write:enospc": 1, "swap-latency:spike": 2}
    pareto = Chaos.from_specs(["swap-latency:pareto:scale=100us"], HOST, seed=3)
    delays = [pareto.extra_latency_ns() for _ in range(200)]
    assert min(delays) >= 100_000 and max(delays) > 200_000


def test_a_bounded_pareto_delay_stays_in_its_range_with_a_heavy_tail():
    """`max=` bounds the Pareto: every delay is in [scale, max]; with alpha=1 over 36 µs..56 ms
    (the arm64 RFC v2 swap-in range) the median is near 2 x scale (72 µs) and the top percent
    reaches milliseconds; dilation scales both ends."""
    chaos = Chaos.from_specs(["swap-latency:pareto:alpha=1:scale=36us:max=56ms"], HOST, seed=5)
    delays = sorted(chaos.extra_latency_ns() for _ in range(20_000))
    assert delays[0] >= 36_000 and delays[-1] <= 56_000_000
    assert 60_000 < delays[len(delays) // 2] < 90_000 and delays[int(0.99 * len(delays))] > 1_500_000
    chaos.dilate(10)
    dilated = [chaos.extra_latency_ns() for _ in range(2_000)]
    assert min(dilated) >= 360_000 and max(dilated) <= 560_000_000
