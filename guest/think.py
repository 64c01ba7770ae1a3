"""`--think` and compute steps: CPU work between accesses, spent one of two ways (`--cpu-work`).

`burn` (default, `Thinker`): real CPU work that releases the GIL, so vCPU threads run side by side.
`clock` (`ClockWork`): the vCPU is busy on the guest's clock but burns no core: the thread sleeps
the work's duration. For experiments with more vCPUs than this machine has cores, where burnt
work would compete for the cores and distort the result.

Hashing a buffer of more than 2 KiB with hashlib releases the GIL. The bytes-per-nanosecond
rate is calibrated once at start-up, so a think of D costs a fixed amount of work (about D on
an idle core), not a fixed amount of wall time: the CPU-bound lower limit of a run is then
simply accesses x D.
"""
from __future__ import annotations

import hashlib
import threading
import time

from shared.sleeps import precise_sleeps

CPU_WORK_MODELS = ("burn", "clock")
CHUNK = 64 * 1024
_BUFFER = bytes(range(256)) * (CHUNK // 256)


class Thinker:
    def __init__(self, bytes_per_ns: float):
        self.bytes_per_ns = bytes_per_ns

    @classmethod
    def calibrate(cls, rounds: int = 7) -> "Thinker":
        rates = []
        for _ in range(rounds):
            start = time.perf_counter_ns()
            hashlib.sha256(_BUFFER * 4).digest()
            rates.append(4 * CHUNK / max(1, time.perf_counter_ns() - start))
        rates.sort()
        return cls(rates[len(rates) // 2])

    def think(self, ns: int) -> None:
        remaining = int(ns * self.bytes_per_ns)
        h = hashlib.sha256()
        view = memoryview(_BUFFER)
        while remaining > 0:
            n = min(remaining, CHUNK)
            h.update(view[:max(n, 2049)])  # stay above hashlib's GIL-release threshold
            remaining -= n


class ClockWork:
    """`--cpu-work clock`: `think(ns)` keeps the calling vCPU busy for `ns` of the guest's clock
    by sleeping, with a 1 ns timer slack; what a sleep overshoots is taken off the thread's next
    work, so the work's total time is right however short its steps."""

    def __init__(self) -> None:
        self._local = threading.local()

    def think(self, ns: int) -> None:
        local = self._local
        if not getattr(local, "precise", False):
            precise_sleeps()
            local.precise, local.owed = True, 0
        want = ns - local.owed
        if want <= 0:
            local.owed = -want
            return
        start = time.monotonic_ns()
        time.sleep(want / 1e9)
        local.owed = time.monotonic_ns() - start - want
