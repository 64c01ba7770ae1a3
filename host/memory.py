"""The host's memory manager: which guest pages are resident, swapped, or on their way.

Per-page state is one byte in a flat array, one byte of flags beside it, and the page's swap
slot (plus the two stage-2 bytes in the shared file). The arrays are sparse anonymous mappings
(shared/sparse.py): memory is spent only on the parts holding pages that were touched, so a
terabyte guest starts at once and costs what its workload touches.

Stage-2 permissions follow the Linux host behind KVM (shared.layout.Perm):
- a first-touch *read* of a never-written page maps the shared zero page (ZERO), read-only and
  charging no memory; the first *write* allocates (a minor fault, and a permission fault if the
  zero page was mapped);
- a page read back from swap is *clean*: it keeps its swap slot (the swap cache) and is mapped
  read-only, so its first write is a permission fault (`write_protect`) that makes it dirty and
  gives up the slot's copy; evicting a clean page frees its RAM with no write (`clean_drops`);
- a dirty page (written since it was last written back, or never swapped) is mapped read-write
  and written back when evicted. This is dirty tracking by write protection, which KVM uses
  without hardware dirty bits (arm64 without FEAT_HAFDBS, x86 without EPT A/D bits).

Reclaim runs ahead of demand like kswapd: when free pages drop below the low watermark, a batch
of victims chosen by the clock (second chance on the guest-set access flag) is unmapped at once
(break), one TLBI for the whole batch is sent, and only once the guest has acknowledged it are
the pages written back and their memory freed (make). A fault that finds no free page waits in
the allocation queue (a direct-reclaim stall, counted).

    NEVER --first write--> RESIDENT --victim--> EVICTING --written / dropped--> SWAPPED --fault--> READING
      (read: ZERO mapped)     ^                     |                                               |
                              +------fault (rescue)-+                                               |
                              +--------------------------swap-in done (clean, RO)-------------------+

Per-page flags: DIRTY (the RAM copy is newer than any swap slot copy: mapped RW, written back on
eviction), WANT_WRITE (a write fault waits for this page's swap-in: map it RW when it is in),
READAHEAD (read ahead and not yet used: in RAM, in the swap cache, not mapped).

Swap readahead follows Linux's VMA-based readahead (mm/swap_state.c, swap_vma_ra_win and
__swapin_nr_pages, the default since 4.14): the guest's RAM is one VMA, and a major fault also
reads the swapped pages around it, by guest page number, in the same request. The window is
1 << page_cluster pages at most (capped, as Linux caps it, at 1 << SWAP_RA_ORDER_CEILING) and
adapts: it grows with the faults that found a read-ahead page (hits) since the last major fault,
is one page when there were no hits and the fault is not next to the previous one (a major
fault or a fault that found its page in the swap cache), and never falls below half the
previous window in one step. It is placed ahead of a forward-sequential
fault, behind a backward one, centred otherwise, and clamped to the fault's 2 MiB (PMD) block.
Read-ahead pages stay unmapped (a fault on one is minor, a `hit`); they are charged to the
budget, read only into pages above the low watermark, and are the first victims while unused
(dropped with no write and no TLBI: the guest never mapped them; a `miss`).
"""
from __future__ import annotations

import errno
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Callable

from host.swapio.engine import IoOp
from host.swapio.slots import SlotAllocator
from shared import sparse
from shared.layout import Perm
from shared.metrics import LatencyHistogram

log = logging.getLogger("apf.host")

WRITEBACK = 0x10             # flag bit: a write-back of this page is in flight
STATE_MASK = 0x0F
DIRTY = 0x01                 # `flags` bits: the RAM copy is not in the swap slot
WANT_WRITE = 0x02            # a write fault waits for this page's swap-in
READAHEAD = 0x04             # read ahead, not used since: in the swap cache, unmapped
NONE, RO, RW, ZERO = int(Perm.NONE), int(Perm.RO), int(Perm.RW), int(Perm.ZERO)
MIN_BUDGET_PAGES = 16
TLBI_BATCH_MAX = 256         # pages unmapped per TLBI
BATCHES_IN_FLIGHT_MAX = 4
DEFAULT_PAGE_CLUSTER = 3     # Linux's vm.page-cluster default: up to 8 pages per readahead
PAGE_CLUSTER_MAX = 6         # what --page-cluster accepts
SWAP_RA_ORDER_CEILING = 5    # Linux caps the VMA readahead window at 1 << 5 pages (64-bit)
RA_START_HITS = 4            # Linux's GET_SWAP_RA_VAL: a VMA with no readahead history counts 4 hits
PMD_PAGES = 512              # the window stays inside the fault's 2 MiB block


class PageState(IntEnum):
    NEVER = 0      # never written: no memory behind it, reads as zero (maybe ZERO-mapped)
    RESIDENT = 1   # in RAM and mapped in stage 2: RW if dirty, else RO
    SWAPPED = 2    # only in the swap file
    READING = 3    # swap-in in flight; waiters queued
    EVICTING = 4   # unmapped, waiting for the TLBI ack or the write-back
    POISONED = 5   # swap-in failed: the content is lost


class Outcome(IntEnum):
    MAPPED = 0     # the page is mapped now: resume the vCPU
    PENDING = 1    # the waiter will be called back
    POISONED = 2   # memory failure: the access cannot complete


@dataclass
class Watermarks:
    low: int
    high: int

    @classmethod
    def for_budget(cls, budget: int) -> "Watermarks":
        low = max(2, min(budget // 4, max(4, budget // 64)))
        high = max(low + 1, min(budget // 2, 2 * low))
        return cls(low, high)


@dataclass
class MemoryCounters:
    minor_faults: int = 0      # no swap read: zero page mapped, page allocated, or permission upgraded
    write_protect: int = 0     # a write to a read-only mapping (clean page or zero page)
    zero_maps: int = 0         # first-touch reads answered with the shared zero page
    clean_drops: int = 0       # evictions of clean pages: RAM freed, no write (the swap cache)
    major_faults: int = 0      # swap-in started for this fault
    joined_faults: int = 0     # fault on a page whose swap-in was already in flight
    rescued: int = 0           # fault on a page being evicted: mapped back, no I/O
    alloc_stalls: int = 0      # faults that waited for reclaim to free a page
    evictions: int = 0
    swap_reads: int = 0
    swap_writes: int = 0
    swap_read_errors: int = 0
    swap_write_errors: int = 0
    tlbi_batches: int = 0
    poisoned: int = 0
    over_budget_events: int = 0  # write-backs that failed, so their page stayed resident
    readahead_pages: int = 0     # pages read ahead of a major fault (their reads are in swap_reads)
    readahead_hits: int = 0      # faults that found a read-ahead page: minor (or joined) instead of major
    readahead_misses: int = 0    # read-ahead pages evicted (or failed) before any use
    swap_in_ns: LatencyHistogram = field(default_factory=LatencyHistogram)   # device time per swap-in (bounded)


class MemoryManager:
    """Owns page state; talks to the world only through the callbacks it is given."""

    def __init__(self, guest_pages: int, budget_pages: int, perm: memoryview, accessed: memoryview,
                 free_ram: Callable[[int, int], None], submit_io: Callable[[IoOp, int, list[int]], None],
                 send_tlbi: Callable[[int, int], None],
                 page_in: Callable[[int, list, int], None], slots: SlotAllocator | None = None,
                 page_cluster: int = DEFAULT_PAGE_CLUSTER):
        if budget_pages < MIN_BUDGET_PAGES:
            raise ValueError(f"host memory must hold at least {MIN_BUDGET_PAGES} pages")
        self.guest_pages = guest_pages
        self.budget = budget_pages
        self.wm = Watermarks.for_budget(budget_pages)
        self.state = sparse.byte_map(guest_pages)
        self.flags = sparse.byte_map(guest_pages)
        self.slots = slots or SlotAllocator(guest_pages)
        self._slot_mm, self._slot = sparse.word_map(guest_pages)   # gfn -> its swap slot + 1 (0: none)
        self.perm = perm                   # stage 2, shared with the guest's MMU
        self.accessed = accessed
        self._free_ram = free_ram
        self._submit_io = submit_io
        self._send_tlbi = send_tlbi
        self._page_in = page_in            # (gfn, waiters, err) once a pending page is settled
        self.charged = 0                   # RESIDENT + READING + EVICTING pages
        self.overdraft = 0                 # pages over budget: kept because write-back failed
        self.evicting = 0
        self.hand = 0                      # the clock hand
        self.waiters: dict[int, list] = {}        # gfn -> waiters, only while READING
        self.alloc_queue: deque[tuple[int, Any]] = deque()
        self.batches: dict[int, set[int]] = {}    # TLBI batch -> victims awaiting the ack
        self.batch_sent_ns: dict[int, int] = {}   # TLBI batch -> when it was sent
        self._next_batch = 1
        self.counters = MemoryCounters()
        self.max_window = 1 << min(page_cluster, SWAP_RA_ORDER_CEILING)
        self._ra_unused: deque[int] = deque()     # read-ahead pages in RAM, oldest first (some used since)
        # The VMA's swap_readahead_info: the last fault address (a major fault or a swap-cache
        # hit), the last window, and the read-ahead hits since; it starts at 4 hits, as Linux's
        # GET_SWAP_RA_VAL does, so the first window is already a few pages.
        self._ra_prev, self._ra_win, self._ra_hits = 0, 0, RA_START_HITS

    # -- queries -------------------------------------------------------------------------------
    def page_state(self, gfn: int) -> PageState:
        return PageState(self.state[gfn] & STATE_MASK)

    def is_major(self, gfn: int) -> bool:
        """Resolving a fault on this page needs (or waits for) a swap read."""
        return self.page_state(gfn) in (PageState.SWAPPED, PageState.READING)

    @property
    def free(self) -> int:
        return self.budget + self.overdraft - self.charged

    @property
    def resident(self) -> int:
        """Pages charged to the budget: RESIDENT, READING and EVICTING (STATS resident_pages)."""
        return self.charged

    @property
    def reading(self) -> int:
        """Pages READING: their swap-in is in flight (each has a waiters entry, maybe empty)."""
        return len(self.waiters)

    # -- faults --------------------------------------------------------------------------------
    def request(self, gfn: int, waiter: Any, write: bool = False) -> Outcome:
        """Make page `gfn` accessible for `waiter` (for writing if `write`): now (MAPPED) or later,
        through `page_in`."""
        st = self.page_state(gfn)
        if st == PageState.RESIDENT:
            if self.flags[gfn] & READAHEAD:
                self._readahead_hit(gfn)
                self.counters.minor_faults += 1     # found in the swap cache: no I/O
                self.accessed[gfn] = 1
                self._map(gfn, write)
                return Outcome.MAPPED
            if write and self.perm[gfn] != RW:
                self.counters.write_protect += 1     # clean page, write-protected: now dirty
                self.counters.minor_faults += 1
                self._make_dirty(gfn)
                self.perm[gfn] = RW
            return Outcome.MAPPED
        if st == PageState.EVICTING:
            self._set(gfn, PageState.RESIDENT)
            if self.flags[gfn] & READAHEAD:
                self._readahead_hit(gfn)
            self.accessed[gfn] = 1
            self.evicting -= 1
            for victims in self.batches.values():   # at most BATCHES_IN_FLIGHT_MAX small sets
                victims.discard(gfn)               # a later batch may unmap it again
            self._map(gfn, write)
            self.counters.rescued += 1
            return Outcome.MAPPED
        if st == PageState.READING:
            self.waiters[gfn].append(waiter)
            self._ra_prev = gfn                 # found in the swap cache: the VMA's last fault address
            if self.flags[gfn] & READAHEAD:
                self._readahead_hit(gfn)
            if write:
                self.flags[gfn] |= WANT_WRITE
            self.counters.joined_faults += 1
            return Outcome.PENDING
        if st == PageState.POISONED:
            return Outcome.POISONED
        if st == PageState.NEVER and not write:
            if not self.perm[gfn]:
                self.perm[gfn] = ZERO           # the shared zero page: no memory charged
                self.counters.zero_maps += 1
                self.counters.minor_faults += 1
            return Outcome.MAPPED
        if self.free <= 0:
            self.alloc_queue.append((gfn, waiter, write))
            self.counters.alloc_stalls += 1
            self.balance()
            return Outcome.PENDING
        self.charged += 1
        outcome = self._populate(gfn, st, waiter, write)
        self.balance()
        return outcome

    def _populate(self, gfn: int, st: PageState, waiter: Any, write: bool) -> Outcome:
        if st == PageState.NEVER:           # the first write: allocate (copy-on-write of the zero page)
            if self.perm[gfn] == ZERO:
                self.counters.write_protect += 1
            self._set(gfn, PageState.RESIDENT)
            self.flags[gfn] = DIRTY
            self.accessed[gfn] = 1      # just used: not the clock's next victim
            self.perm[gfn] = RW
            self.counters.minor_faults += 1
            return Outcome.MAPPED
        self._set(gfn, PageState.READING)
        self.flags[gfn] = WANT_WRITE if write else 0
        self.waiters[gfn] = [waiter]
        self.counters.major_faults += 1
        self._submit_io(IoOp.READ, gfn, self._read_ahead(gfn))
        return Outcome.PENDING

    # -- swap readahead --------------------------------------------------------------------------
    def readahead_window(self, gfn: int) -> int:
        """The window, in pages, for a major fault on `gfn` (__swapin_nr_pages); records the
        fault as the previous one and starts counting hits afresh."""
        pages = self._ra_hits + 2
        if pages == 2:
            if gfn not in (self._ra_prev + 1, self._ra_prev - 1):
                pages = 1       # no hits to judge by and not sequential: no readahead
        else:
            pages = 1 << (max(pages, 4) - 1).bit_length()   # rounded up to a power of two, at least 4
        pages = max(min(pages, self.max_window), self._ra_win // 2)   # never shrink by more than half
        self._ra_win, self._ra_hits = pages, 0
        return pages

    def _read_ahead(self, gfn: int) -> list[int]:
        """Start readahead around the major fault on `gfn`: the swapped neighbours in the window
        (swap_vma_ra_win), each charged and READING with no waiter, as far as free memory above
        the low watermark goes. Returns their gfns, to be read in the fault's own request."""
        if self.max_window == 1:
            return []
        prev = self._ra_prev
        win = self.readahead_window(gfn)
        self._ra_prev = gfn
        if win == 1:
            return []
        if gfn == prev + 1:
            left = gfn                      # forward-sequential: read ahead
        elif gfn == prev - 1:
            left = gfn - win + 1            # backward-sequential: read behind
        else:
            left = gfn - (win - 1) // 2     # centred
        block = gfn - gfn % PMD_PAGES
        start, end = max(left, block), min(left + win, block + PMD_PAGES, self.guest_pages)
        ahead = []
        swapped = PageState.SWAPPED
        for n in range(start, end):
            if self.free <= 0:
                break
            if n != gfn and self.state[n] == swapped:   # SWAPPED with no write-back flag
                self.charged += 1
                self._set(n, PageState.READING)
                self.flags[n] = READAHEAD
                self.waiters[n] = []
                ahead.append(n)
        self.counters.readahead_pages += len(ahead)
        return ahead

    def _readahead_hit(self, gfn: int) -> None:
        """A fault found read-ahead page `gfn` (in RAM or still being read): it is used now."""
        self.flags[gfn] &= ~READAHEAD & 0xFF
        self.counters.readahead_hits += 1
        self._ra_hits += 1
        self._ra_prev = gfn

    def _drop_unused_readahead(self, want: int) -> int:
        """Evict up to `want` read-ahead pages never used, oldest first: clean (their swap slot
        holds them) and never mapped, so freed with no write and no TLBI. Returns how many."""
        dropped = 0
        while dropped < want and self._ra_unused:
            gfn = self._ra_unused.popleft()
            if self.page_state(gfn) == PageState.RESIDENT and self.flags[gfn] & READAHEAD:
                self.counters.clean_drops += 1
                self._evicted(gfn, rebalance=False)
                dropped += 1
        return dropped

    def _set(self, gfn: int, st: PageState) -> None:
        self.state[gfn] = (self.state[gfn] & WRITEBACK) | st

    def _map(self, gfn: int, write: bool) -> None:
        """Map a resident page: read-write if it is (or now becomes) dirty, else write-protected."""
        if write:
            self._make_dirty(gfn)
        self.perm[gfn] = RW if self.flags[gfn] & DIRTY else RO

    def _make_dirty(self, gfn: int) -> None:
        """The page is written: its swap slot copy (if any) is stale from now on, and the slot is
        given up (at once, or when the write-back to it in flight ends)."""
        self.flags[gfn] |= DIRTY
        if not self.state[gfn] & WRITEBACK:
            self._drop_slot(gfn)

    def slot_of(self, gfn: int) -> int:
        """The swap slot holding (or about to hold) page `gfn`, or -1."""
        return self._slot[gfn] - 1

    def _drop_slot(self, gfn: int) -> None:
        if self._slot[gfn]:
            self.slots.free(self._slot[gfn] - 1)
            self._slot[gfn] = 0

    # -- I/O completions -------------------------------------------------------------------------
    def read_done(self, gfn: int, err: int, latency_ns: int) -> None:
        waiters = self.waiters.pop(gfn, [])
        if err and self.flags[gfn] & READAHEAD:
            # Nobody asked for it: the page stays in swap, for a fault to read again (Linux drops a
            # read-ahead page that is not uptodate from the swap cache).
            self.counters.swap_read_errors += 1
            self.counters.readahead_misses += 1
            self.flags[gfn] = 0
            self._set(gfn, PageState.SWAPPED)
            self._free_ram(gfn, 1)
            self.charged -= 1
            self._serve_alloc_queue()
            self.balance()
            return
        if err:
            self.counters.swap_read_errors += 1
            self.counters.poisoned += 1
            self._set(gfn, PageState.POISONED)
            self.flags[gfn] = 0
            self._drop_slot(gfn)
            self.charged -= 1
            self._serve_alloc_queue()
        else:
            self.counters.swap_reads += 1
            self.counters.swap_in_ns.record(latency_ns)
            self._set(gfn, PageState.RESIDENT)
            self.accessed[gfn] = 1
            if self.flags[gfn] & READAHEAD:     # unused so far: into the swap cache, unmapped
                self.flags[gfn] = READAHEAD
                self.accessed[gfn] = 0
                self._ra_unused.append(gfn)
                self.balance()
                return
            want_write = bool(self.flags[gfn] & WANT_WRITE)
            self.flags[gfn] = 0                 # clean: the swap slot holds this very content
            self._map(gfn, want_write)
        self._page_in(gfn, waiters, err)
        self.balance()   # the page is evictable now; a fault may be waiting for memory

    def write_done(self, gfn: int, err: int) -> None:
        self.state[gfn] &= ~WRITEBACK & 0xFF
        st = self.page_state(gfn)
        if st != PageState.EVICTING:
            # Rescued by a fault meanwhile: the slot's copy is good only if the page was not
            # written since the write-back began (it was mapped read-only while clean).
            if err:
                self.counters.swap_write_errors += 1
                self._make_dirty(gfn)
                if self.perm[gfn]:
                    self.perm[gfn] = RW
            else:
                self.counters.swap_writes += 1
            if self.flags[gfn] & DIRTY:
                self._drop_slot(gfn)
            self.balance()              # the page is a candidate victim again
            return
        if err:
            self.evicting -= 1
            self._write_failed(gfn, err)
            return
        self.counters.swap_writes += 1
        if self.flags[gfn] & DIRTY:
            # Rescued, written and unmapped again while this write ran: the copy is stale.
            if not any(gfn in victims for victims in self.batches.values()):
                self._write_back(gfn)   # its TLBI is acknowledged already (the slot is kept)
            return                      # else tlbi_acked() writes it
        self.evicting -= 1
        self._evicted(gfn)

    def _evicted(self, gfn: int, rebalance: bool = True) -> None:
        """An evicting page's content is in its swap slot: free its RAM."""
        if self.flags[gfn] & READAHEAD:
            self.counters.readahead_misses += 1
            self.flags[gfn] &= ~READAHEAD & 0xFF
        self.counters.evictions += 1
        self._free_ram(gfn, 1)
        self._set(gfn, PageState.SWAPPED)
        self.charged -= 1
        if self.overdraft:
            self.overdraft -= 1          # pay the overdraft back before freeing pages
        self._serve_alloc_queue()
        if rebalance:
            self.balance()

    def _write_back(self, gfn: int) -> bool:
        """Write the page to its slot (allocating one); False if the swap device is full."""
        if not self._slot[gfn]:
            slot = self.slots.alloc()
            if slot < 0:
                return False
            self._slot[gfn] = slot + 1
        self.state[gfn] |= WRITEBACK
        self.flags[gfn] &= ~DIRTY & 0xFF     # what is written now is the page's content
        self._submit_io(IoOp.WRITE, gfn, [])
        return True

    def _write_failed(self, gfn: int, err: int) -> None:
        """The page stays resident (its content is intact in RAM) and the host goes one page over
        budget, so that a fault waiting for memory is not stranded by a failing swap device."""
        self.counters.swap_write_errors += 1
        self.counters.over_budget_events += 1
        self.overdraft += 1
        self._set(gfn, PageState.RESIDENT)
        self.accessed[gfn] = 1      # pick other victims before retrying this one
        self._make_dirty(gfn)
        self._drop_slot(gfn)
        self.perm[gfn] = RW
        log.warning("swap write of page %d failed (%s): host is %d page(s) over its memory budget",
                    gfn, errno.errorcode.get(err, err), self.overdraft)
        self._serve_alloc_queue()
        self.balance()

    def tlbi_acked(self, batch: int) -> bool:
        victims = self.batches.pop(batch, None)
        if victims is None:
            return False
        del self.batch_sent_ns[batch]
        for gfn in victims:
            if self.page_state(gfn) != PageState.EVICTING or self.state[gfn] & WRITEBACK:
                continue                # rescued; or write_done() decides when the write ends
            if self.flags[gfn] & DIRTY:
                if not self._write_back(gfn):     # swap full: as a write failing with ENOSPC
                    self.evicting -= 1
                    self._write_failed(gfn, errno.ENOSPC)
            else:
                self.counters.clean_drops += 1   # its swap slot holds it: nothing to write
                self.evicting -= 1
                self._evicted(gfn)
        self.balance()
        return True

    def overdue_tlbi(self, now_ns: int, bound_ns: int) -> int | None:
        """A TLBI batch sent more than `bound_ns` ago and still unacknowledged, or None."""
        for batch, sent_ns in self.batch_sent_ns.items():   # in the order sent: the oldest first
            return batch if now_ns - sent_ns > bound_ns else None
        return None

    def _serve_alloc_queue(self) -> None:
        while self.alloc_queue and self.free > 0:
            gfn, waiter, write = self.alloc_queue.popleft()
            if self.request(gfn, waiter, write) == Outcome.MAPPED:
                self._page_in(gfn, [waiter], 0)
            elif self.page_state(gfn) == PageState.POISONED:
                self._page_in(gfn, [waiter], -1)

    # -- reclaim -------------------------------------------------------------------------------
    def balance(self) -> None:
        """kswapd: keep free pages (counting those already on their way out) above `low`."""
        while len(self.batches) < BATCHES_IN_FLIGHT_MAX:
            incoming = self.free + self.evicting
            if incoming >= self.wm.low:
                return
            want = min(TLBI_BATCH_MAX, self.wm.high - incoming)
            if self._ra_unused and self._drop_unused_readahead(want):
                continue
            victims = self._pick_victims(want)
            if not victims:
                return
            self._unmap(victims)

    def _pick_victims(self, want: int) -> list[int]:
        """Clock with second chance; each victim is unmapped as it is picked (so never picked twice)."""
        victims: list[int] = []
        resident_byte = bytes([PageState.RESIDENT])
        budget = 2 * self.charged + 2   # at most two passes of the clock
        while len(victims) < want and budget > 0:
            gfn = self.state.find(resident_byte, self.hand)
            if gfn < 0:
                if self.hand == 0:
                    break
                self.hand = 0
                continue
            budget -= 1
            self.hand = gfn + 1
            if self.accessed[gfn]:
                self.accessed[gfn] = 0          # second chance
                continue
            self.perm[gfn] = NONE               # break: unmapped before the TLBI goes out
            self._set(gfn, PageState.EVICTING)
            victims.append(gfn)
        return victims

    def _unmap(self, victims: list[int]) -> None:
        self.evicting += len(victims)
        batch = self._next_batch
        self._next_batch = (self._next_batch % 0xFFFFFFFF) + 1
        self.batches[batch] = set(victims)
        self.batch_sent_ns[batch] = time.monotonic_ns()
        self.counters.tlbi_batches += 1
        self._send_tlbi(batch, len(victims))

    # -- teardown ------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every page (the guest is gone): state, slots, queues. Stage 2 is the caller's to
        clear (Stage2.reset)."""
        for mm in (self.state, self.flags, self._slot_mm):
            sparse.clear(mm)
        self.slots.reset()
        self.charged = self.evicting = self.hand = self.overdraft = 0
        self.waiters.clear()
        self.alloc_queue.clear()
        self.batches.clear()
        self.batch_sent_ns.clear()
        self.counters = MemoryCounters()
        self._ra_unused.clear()
        self._ra_prev, self._ra_win, self._ra_hits = 0, 0, RA_START_HITS
