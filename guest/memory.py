"""The guest's view of memory: the MMU check against stage 2, and verified accesses.

An access is: look at the stage-2 `valid` byte; if mapped, set the access flag and touch the
page; if not, the caller traps to the host. The whole check-and-touch runs under `self.lock`,
which is what a TLB invalidation waits for: once the guest acknowledges a TLBI (after taking
and dropping the lock), no access that saw the old mapping is still in progress, so the host
may copy the page out (break-before-make).
"""
from __future__ import annotations

import threading
from array import array
from enum import IntEnum

from guest.pagedata import stamp, verify
from shared.files import GuestRam, Stage2


class AccessResult(IntEnum):
    HIT = 0
    MISS = 1       # not mapped in stage 2: trap
    CORRUPT = 2    # the page did not hold what was last written


class GuestMemory:
    def __init__(self, ram: GuestRam, stage2: Stage2):
        self.ram = ram
        self.valid = stage2.valid
        self.accessed = stage2.accessed
        self.pages = ram.guest_pages
        self.lock = threading.Lock()
        self.versions = array("I", bytes(4 * self.pages))   # last version written, per page
        self.corrupt: dict[int, str] = {}                   # gfn -> what was wrong (first seen)
        self.corrupt_count = 0

    def access(self, gfn: int, write: bool) -> AccessResult:
        with self.lock:
            if not self.valid[gfn]:
                return AccessResult.MISS
            self.accessed[gfn] = 1
            page = self.ram.page(gfn)
            expected = self.versions[gfn]
            problem = verify(page, gfn, expected)
            if write:
                self.versions[gfn] = expected + 1
                stamp(page, gfn, expected + 1)
            page.release()
        if problem is not None:
            self._record(gfn, problem)
            return AccessResult.CORRUPT
        return AccessResult.HIT

    def _record(self, gfn: int, problem: str) -> None:
        self.corrupt_count += 1
        self.corrupt.setdefault(gfn, problem)

    def tlb_invalidate(self) -> None:
        """Wait until no access that might have seen a now-cleared stage-2 entry is running."""
        with self.lock:
            pass

    def written_pages(self) -> list[int]:
        versions = self.versions
        return [gfn for gfn in range(self.pages) if versions[gfn]]
