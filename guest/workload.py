"""Seeded, reproducible access patterns for guest tasks.

Each task draws from its own `random.Random(seed, task)`, so a run is the same access sequence
every time whatever the interleaving. An access is `(gfn, write, ctx)`; `ctx` marks accesses
made from kernel mode and from sections with interrupts disabled, so every APF delivery rule
is exercised. A compute task's stream is CPU work only (`Compute` steps), no access at all.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterator, NamedTuple

from protocol.messages import Ctx
from shared.sparse import PageSet

PATTERNS = ("random", "zipf", "sequential", "mixed")
_ZIPF_MULTIPLIER = 2654435761   # Knuth's multiplicative hash: scatters hot ranks over memory


COMPUTE_STEP_NS = 100_000     # a compute task takes interrupts and may yield after each step
ENDLESS = 1 << 62             # accesses or work of a task that runs until --duration ends it


class Access(NamedTuple):
    gfn: int
    write: bool
    ctx: Ctx


class Compute(NamedTuple):
    ns: int               # CPU work (guest/think.py), never a memory access


def compute_stream(work_ns: int, step_ns: int = COMPUTE_STEP_NS) -> Iterator[Compute]:
    """`work_ns` of CPU work in steps of at most `step_ns`."""
    done = 0
    while done < work_ns:
        step = min(step_ns, work_ns - done)
        done += step
        yield Compute(step)


@dataclass(frozen=True)
class WorkloadSpec:
    pattern: str
    pages: int            # accesses fall in [first_page, first_page + pages)
    accesses: int         # per task
    write_frac: float = 0.5
    kernel_frac: float = 0.0
    irqoff_frac: float = 0.0
    seed: int = 1
    first_page: int = 0

    def stream(self, task: int, tasks: int, touched: PageSet | None = None) -> Iterator[Access]:
        """Task `task`'s accesses; each page accessed is marked in `touched` (if given)."""
        rng = random.Random(self.seed * 1_000_003 + task)
        pick = _PICKERS[self.pattern]
        state = {"next": task * self.pages // max(1, tasks)}
        for _ in range(self.accesses):
            gfn = self.first_page + pick(self, rng, state)
            ctx = Ctx.USER
            if rng.random() < self.kernel_frac:
                ctx |= Ctx.KERNEL
            if rng.random() < self.irqoff_frac:
                ctx |= Ctx.IRQS_OFF
            if touched is not None:
                touched[gfn] = 1
            yield Access(gfn, rng.random() < self.write_frac, ctx)


def _random(spec: WorkloadSpec, rng: random.Random, state: dict) -> int:
    return rng.randrange(spec.pages)


def _zipf(spec: WorkloadSpec, rng: random.Random, state: dict) -> int:
    # Inverse transform of a Zipf(s=1) rank, then a fixed bijection so hot pages are scattered.
    rank = min(spec.pages - 1, int(math.exp(rng.random() * math.log(spec.pages))) - 1)
    return (rank * _coprime_multiplier(spec.pages)) % spec.pages


def _sequential(spec: WorkloadSpec, rng: random.Random, state: dict) -> int:
    gfn = state["next"] % spec.pages
    state["next"] = gfn + 1
    return gfn


def _mixed(spec: WorkloadSpec, rng: random.Random, state: dict) -> int:
    r = rng.random()
    picker = _random if r < 0.4 else _zipf if r < 0.7 else _sequential
    return picker(spec, rng, state)


def _coprime_multiplier(n: int) -> int:
    m = _ZIPF_MULTIPLIER % n or 1
    while math.gcd(m, n) != 1:
        m += 1
    return m


_PICKERS = {"random": _random, "zipf": _zipf, "sequential": _sequential, "mixed": _mixed}
