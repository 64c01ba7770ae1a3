"""Fault injection ("chaos", so that "inject" keeps its KVM meaning: interrupts and exceptions
put into the guest): one spec syntax for both daemons (`--inject SPEC`, repeatable).

    SPEC    := TARGET ":" ACTION { ":" KEY "=" VALUE }   (cpu-hotplug, suspend: ACTION may be left out)
    trigger := every=N | p=F | pages=G+G+... | after=N | n=N   (none: every time)

Triggers count the events a rule is asked about (swap I/O, completions, accesses, ...):
`every=N` fires on every Nth, `n=N` on the Nth only, `after=N` on the Nth and every one after,
`p=F` with probability F, `pages=G+G` only for those guest pages; several combine (all must hold).
For cpu-hotplug and suspend, `after=N` alone means once, at the Nth access.

| target        | action        | side  | what happens                                               |
|---------------|---------------|-------|------------------------------------------------------------|
| swap-read     | eio           | host  | the swap-in fails with EIO: the page is poisoned           |
| swap-write    | eio, enospc   | host  | the write-back fails: the page stays resident, over budget |
| swap-latency  | spike         | host  | add `delay=DUR` to the I/O (latency spikes)                |
| swap-latency  | pareto        | host  | add a heavy-tailed delay: `scale=DUR` x Pareto(`alpha`), at most `max=DUR` if given (a bounded Pareto) |
| swap-remote   | timeout       | host  | a remote swap request times out (ETIMEDOUT), sent or not   |
| swap-remote   | disconnect    | host  | the remote swap's connection breaks under its requests     |
| page-ready    | delay         | host  | hold the completion `delay=DUR` before queueing it         |
| page-ready    | duplicate     | host  | deliver the same token a second time                       |
| page-ready    | reorder       | host  | queue the completion at a random place, not last           |
| host          | mute          | host  | stop answering (and heartbeating); the process stays       |
| kill-host     | mid-io        | host  | SIGKILL the host as a swap-in starts                       |
| kill-host     | mid-eviction  | host  | SIGKILL the host as a write-back starts                    |
| ack           | late          | guest | wait `delay=DUR` before APF_ACK                            |
| ack           | never         | guest | clear the slot but never call APF_ACK                      |
| host          | async-anywhere| host  | a host bug: PAGE_NOT_PRESENT into a context that can't sleep |
| host          | ready-after-disable | host | a host bug: a wake-all delivered after APF_DISABLE     |
| kill-guest    | parked        | guest | SIGKILL the guest when a task parks (faults outstanding)   |
| cpu-hotplug   | (offline)     | guest | per access: the vCPU goes offline for `delay=DUR`, then online |
| suspend       | (all)         | guest | per access: every vCPU goes offline for `delay=DUR` (suspend/resume) |

Examples: `swap-read:eio:every=50`, `swap-write:enospc:p=0.2`, `swap-latency:spike:p=0.01:delay=20ms`,
`page-ready:duplicate:p=0.3`, `kill-host:mid-io:n=20`, `ack:never`, `kill-guest:parked:n=5`,
`cpu-hotplug:every=500:delay=20ms`, `suspend:after=2000:delay=100ms`.
Each daemon takes the rules of its side and ignores the others', so `apf run` passes every rule to both.
"""
from __future__ import annotations

import errno
import random
import threading
from collections import Counter
from dataclasses import dataclass, field

from shared.units import parse_duration_ns
from protocol.errors import ChaosSpecError

HOST, GUEST = "host", "guest"

ACTIONS: dict[tuple[str, str], str] = {
    ("swap-read", "eio"): HOST, ("swap-write", "eio"): HOST, ("swap-write", "enospc"): HOST,
    ("swap-latency", "spike"): HOST, ("swap-latency", "pareto"): HOST,
    ("swap-remote", "timeout"): HOST, ("swap-remote", "disconnect"): HOST,
    ("page-ready", "delay"): HOST, ("page-ready", "duplicate"): HOST, ("page-ready", "reorder"): HOST,
    ("host", "mute"): HOST, ("kill-host", "mid-io"): HOST, ("kill-host", "mid-eviction"): HOST,
    ("host", "async-anywhere"): HOST, ("host", "ready-after-disable"): HOST,
    ("ack", "late"): GUEST, ("ack", "never"): GUEST, ("kill-guest", "parked"): GUEST,
    ("cpu-hotplug", "offline"): GUEST, ("suspend", "all"): GUEST,
}
# Targets whose one action may be left out of the spec: `cpu-hotplug:every=500:delay=20ms`.
DEFAULT_ACTION = {"cpu-hotplug": "offline", "suspend": "all"}
NEEDS_DELAY = ("spike", "delay", "late", "offline", "all")
TRIGGERS = ("every", "p", "pages", "after", "n")
VALUES = ("delay", "scale", "alpha", "max")
ERRNO = {"eio": errno.EIO, "enospc": errno.ENOSPC}


@dataclass
class Rule:
    target: str
    action: str
    every: int = 0
    p: float = 1.0
    pages: frozenset[int] | None = None
    after: int = 0
    n: int = 0
    delay_ns: int = 0
    scale_ns: int = 0
    alpha: float = 1.5
    max_ns: int = 0        # pareto: the bounded Pareto's upper end (0: unbounded)
    seen: int = 0          # events this rule has been asked about
    fired: int = 0
    spec: str = ""

    @property
    def side(self) -> str:
        return ACTIONS[(self.target, self.action)]

    def decide(self, rng: random.Random, gfn: int | None) -> bool:
        self.seen += 1
        if self.pages is not None and gfn not in self.pages:
            return False
        if self.n and self.seen != self.n:
            return False
        if self.after and self.seen < self.after:
            return False
        if self.every and self.seen % self.every:
            return False
        if self.p < 1.0 and rng.random() >= self.p:
            return False
        self.fired += 1
        return True


def parse_rule(spec: str) -> Rule:
    """One `--inject` spec as a rule; raises ChaosSpecError naming what is wrong."""
    parts = spec.strip().split(":")
    if parts[0] in DEFAULT_ACTION and (len(parts) == 1 or "=" in parts[1]):
        parts.insert(1, DEFAULT_ACTION[parts[0]])
    if len(parts) < 2 or (parts[0], parts[1]) not in ACTIONS:
        known = ", ".join(f"{t}:{a}" for t, a in ACTIONS)
        raise ChaosSpecError(f"--inject '{spec}': unknown fault; known: {known}")
    rule = Rule(parts[0], parts[1], spec=spec)
    seen: set[str] = set()
    for item in parts[2:]:
        key, sep, value = item.partition("=")
        if not sep or key not in TRIGGERS + VALUES:
            raise ChaosSpecError(f"--inject '{spec}': '{item}' is not KEY=VALUE with KEY one of "
                                  f"{', '.join(TRIGGERS + VALUES)}")
        if key in seen:
            raise ChaosSpecError(f"--inject '{spec}': {key}= is given twice")
        seen.add(key)
        try:
            _set(rule, key, value)
        except ValueError as exc:
            raise ChaosSpecError(f"--inject '{spec}': {key}: {exc}") from None
    if rule.target in DEFAULT_ACTION and rule.after and not (rule.every or rule.n or rule.p < 1.0):
        rule.n = rule.after     # a hotplug or suspend "after N accesses" happens once, not on each one after
    if rule.action in NEEDS_DELAY and not rule.delay_ns:
        raise ChaosSpecError(f"--inject '{spec}': needs delay=DUR (e.g. delay=20ms)")
    if rule.action == "pareto" and not rule.scale_ns:
        raise ChaosSpecError(f"--inject '{spec}': needs scale=DUR (e.g. scale=200us)")
    if rule.max_ns and rule.action != "pareto":
        raise ChaosSpecError(f"--inject '{spec}': max=DUR applies to swap-latency:pareto only")
    if rule.max_ns and rule.max_ns <= rule.scale_ns:
        raise ChaosSpecError(f"--inject '{spec}': max=DUR bounds a pareto delay and must be above its scale")
    return rule


def _set(rule: Rule, key: str, value: str) -> None:
    if key in ("every", "after", "n"):
        number = _whole(value)
        if number < 1:
            raise ValueError("must be at least 1")
        setattr(rule, key, number)
    elif key == "p":
        p = _number(value)
        if not 0.0 < p <= 1.0:
            raise ValueError("must be in (0, 1]")
        rule.p = p
    elif key == "pages":
        pages = frozenset(_whole(g) for g in value.replace(",", "+").split("+") if g)
        if not pages:
            raise ValueError("names no page (e.g. pages=3+17)")
        rule.pages = pages
    elif key == "alpha":
        rule.alpha = _number(value)
        if rule.alpha <= 0:
            raise ValueError("must be positive")
    else:
        setattr(rule, f"{key}_ns", parse_duration_ns(value))


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"'{text}' is not a whole number") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"'{text}' is not a number") from None


@dataclass
class Chaos:
    """The rules of one side, and the decisions taken (thread-safe: I/O workers ask too)."""
    rules: list[Rule] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self.fired: Counter = Counter()

    @classmethod
    def from_specs(cls, specs: list[str] | None, side: str, seed: int = 0) -> "Chaos":
        rules = [parse_rule(s) for s in specs or []]
        return cls([r for r in rules if r.side == side], seed)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def targets(self, targets: tuple[str, ...]) -> bool:
        """Whether any rule acts on one of these targets."""
        return any(rule.target in targets for rule in self.rules)

    def fires(self, target: str, action: str | None = None, gfn: int | None = None) -> Rule | None:
        """The first matching rule that fires for this event, or None."""
        if not self.rules:
            return None
        with self._lock:
            for rule in self.rules:
                if rule.target == target and (action is None or rule.action == action) \
                        and rule.decide(self._rng, gfn):
                    self.fired[f"{rule.target}:{rule.action}"] += 1
                    return rule
        return None

    def io_error(self, target: str, gfn: int) -> int:
        """errno to fail this swap I/O with, or 0."""
        rule = self.fires(target, gfn=gfn)
        return ERRNO[rule.action] if rule else 0

    def extra_latency_ns(self) -> int:
        rule = self.fires("swap-latency")
        if rule is None:
            return 0
        if rule.action == "spike":
            return rule.delay_ns
        with self._lock:
            u = self._rng.random()
        if rule.max_ns:
            return bounded_pareto_ns(u, rule.scale_ns, rule.max_ns, rule.alpha)
        return int(rule.scale_ns / (1.0 - u) ** (1.0 / rule.alpha))

    def dilate(self, factor: float) -> None:
        """Time dilation (shared/dilation.py): every rule's `delay=` and `scale=` are real-equivalent,
        applied multiplied by `factor` from now on (relative to the values given, so setting it
        again replaces the factor)."""
        with self._lock:
            if not hasattr(self, "_given"):
                self._given = {id(r): (r.delay_ns, r.scale_ns, r.max_ns) for r in self.rules}
            for rule in self.rules:
                delay, scale, top = self._given[id(rule)]
                rule.delay_ns, rule.scale_ns, rule.max_ns = (round(delay * factor), round(scale * factor),
                                                             round(top * factor))

    def random(self) -> float:
        with self._lock:
            return self._rng.random()

    def summary(self) -> dict[str, int]:
        return dict(self.fired)


def bounded_pareto_ns(u: float, low_ns: int, high_ns: int, alpha: float) -> int:
    """The bounded Pareto distribution on [low, high] with shape `alpha`, at quantile `u` in
    [0, 1): its inverse CDF, x = L / (1 - u (1 - (L/H)^a))^(1/a) (a heavy tail that stops at H,
    without the mass at H that clipping would put there)."""
    tail = 1.0 - (low_ns / high_ns) ** alpha
    return int(low_ns / (1.0 - u * tail) ** (1.0 / alpha))


def delays_every_swap(specs: list[str] | None) -> bool:
    """True if some swap-latency rule adds a modelled delay to every swap I/O (no trigger that
    skips any): modelled device time that time dilation can scale, as --swap-latency is."""
    for spec in specs or []:
        rule = parse_rule(spec)
        if (rule.target == "swap-latency" and rule.p == 1.0 and not (rule.every or rule.n or rule.after)
                and rule.pages is None):
            return True
    return False


def validate_specs(specs: list[str] | None) -> None:
    for spec in specs or []:
        parse_rule(spec)
