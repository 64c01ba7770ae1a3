"""The guest's view of memory: the MMU check against stage 2, and verified accesses.

An access is: look at the page's stage-2 entry (`shared.layout.Perm`); if it allows the access
(a read: any mapping; a write: RW only), set the access flag and touch the page; if not, the
caller traps to the host with the access (a write to a RO or ZERO entry is a permission fault).
A ZERO entry maps the shared zero page: a read sees zeros and never touches the page's own frame
in the RAM file (which would allocate it). The whole check-and-touch runs under `self.lock`,
which is what a TLB invalidation waits for: once the guest acknowledges a TLBI (after taking
and dropping the lock), no access that saw the old mapping is still in progress, so the host
may copy the page out (break-before-make).
"""
from __future__ import annotations

import threading
from shared import sparse
from enum import IntEnum

from guest.pagedata import ZERO_PAGE, stamp, verify
from shared.files import GuestRam, Stage2
from shared.layout import Perm

_ZERO, _RW = int(Perm.ZERO), int(Perm.RW)


class AccessResult(IntEnum):
    HIT = 0
    MISS = 1       # not mapped in stage 2: trap
    CORRUPT = 2    # the page did not hold what was last written


class GuestMemory:
    def __init__(self, ram: GuestRam, stage2: Stage2):
        self.ram = ram
        self.perm = stage2.perm
        self.accessed = stage2.accessed
        self.pages = ram.guest_pages
        self.lock = threading.Lock()
        # Last version written, per page, and a byte per page ever written: sparse, so a huge
        # guest costs what its workload writes.
        self._versions_mm, self.versions = sparse.word_map(self.pages)
        self.written = sparse.PageSet(self.pages)
        self.corrupt: dict[int, str] = {}                   # gfn -> what was wrong (first seen)
        self.corrupt_count = 0

    def access(self, gfn: int, write: bool) -> AccessResult:
        with self.lock:
            perm = self.perm[gfn]
            if not perm or (write and perm != _RW):
                return AccessResult.MISS
            self.accessed[gfn] = 1
            expected = self.versions[gfn]
            if perm == _ZERO:
                problem = verify(memoryview(ZERO_PAGE), gfn, expected)
            else:
                page = self.ram.page(gfn)
                problem = verify(page, gfn, expected)
                if write:
                    self.versions[gfn] = expected + 1
                    if not expected:             # its first write: into the set, once
                        self.written[gfn] = 1
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
        """Every page written at least once, ascending."""
        return list(self.written)
