"""`--think`: real CPU work between accesses that releases the GIL, so vCPU threads run side by side.

Hashing a buffer of more than 2 KiB with hashlib releases the GIL. The bytes-per-nanosecond
rate is calibrated once at start-up, so a think of D costs a fixed amount of work (about D on
an idle core), not a fixed amount of wall time: the CPU-bound lower limit of a run is then
simply accesses x D.
"""
from __future__ import annotations

import hashlib
import time

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
