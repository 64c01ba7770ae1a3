"""host/memory.py: the MemoryManager driven directly, over a real RAM file on tmpfs, a real stage-2
file and a real swap file. The callbacks do what the host daemon does, but under the test's control:
I/O is queued and performed (real preadv/pwritev) when the test delivers its completion, TLBIs
are recorded and acknowledged by the test, page-ins are recorded."""
from __future__ import annotations

import errno
import itertools
import os
import shutil
import tempfile
from collections import Counter

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from host.memory import (BATCHES_IN_FLIGHT_MAX, MIN_BUDGET_PAGES, READAHEAD, MemoryCounters, MemoryManager,
                         Outcome, PageState, Watermarks)
from host.swapio.device import SwapDevice
from host.swapio.engine import IoOp
from protocol.messages import PAGE_SIZE
from shared.files import GuestRam, Stage2, allocated_bytes
from shared.layout import Perm

GUEST_PAGES = 64
BUDGET = 16           # the smallest budget: low watermark 4, high 8


def pattern(gfn: int, tag: int) -> bytes:
    return (f"<page {gfn} v{tag}>".encode() * PAGE_SIZE)[:PAGE_SIZE]


class Harness:
    """A MemoryManager wired to real files; the test plays the I/O workers and the guest."""

    def __init__(self, shm_dir: str, swap_dir: str, guest_pages: int = GUEST_PAGES, budget: int = BUDGET,
                 page_cluster: int = 0):
        self.ram_path = os.path.join(shm_dir, "ram")
        self.stage2_path = os.path.join(shm_dir, "stage2")
        self.ram = GuestRam.create(self.ram_path, guest_pages)
        self.stage2 = Stage2.create(self.stage2_path, guest_pages)
        self.swap = SwapDevice(os.path.join(swap_dir, "swap"))
        self.jobs: list[tuple[IoOp, int]] = []              # submitted, not yet completed
        self.submitted: list[tuple[IoOp, int]] = []         # every submission, in order
        self.tlbis: list[tuple[int, list[int]]] = []        # (batch, victims) in send order
        self.valid_at_tlbi: dict[int, list[int]] = {}       # batch -> victims' valid bytes when sent
        self.unacked: dict[int, set[int]] = {}              # batch -> victims, until the test acks
        self.early_writes: list[tuple[int, int]] = []       # (gfn, batch): write-back before the ack
        self.page_ins: list[tuple[int, list, int]] = []
        self.freed: list[tuple[int, int]] = []
        self.fail: set[tuple[IoOp, int]] = set()            # the next I/O of these fails with EIO
        self.mm = MemoryManager(guest_pages, budget, self.stage2.valid, self.stage2.accessed,
                                free_ram=self._free_ram, submit_io=self._submit_io,
                                send_tlbi=self._send_tlbi, page_in=self._page_in, page_cluster=page_cluster)

    # -- callbacks -------------------------------------------------------------------------------
    def _free_ram(self, first: int, count: int) -> None:
        self.freed.append((first, count))
        self.ram.free_pages(first, count)

    def _submit_io(self, op: IoOp, gfn: int, ahead: list[int]) -> None:
        if op == IoOp.WRITE:
            for batch, victims in self.unacked.items():
                if gfn in victims:
                    self.early_writes.append((gfn, batch))
        for page in (gfn, *ahead):      # one request; the test completes each page on its own
            self.jobs.append((op, page))
            self.submitted.append((op, page))

    def _send_tlbi(self, batch: int, pages: int) -> None:
        victims = list(self.mm.batches[batch])
        assert len(victims) == pages
        assert len(set(victims)) == len(victims), f"batch {batch} names a victim twice: {victims}"
        self.valid_at_tlbi[batch] = [self.stage2.valid[g] for g in victims]
        self.tlbis.append((batch, victims))
        self.unacked[batch] = set(victims)

    def _page_in(self, gfn: int, waiters: list, err: int) -> None:
        self.page_ins.append((gfn, list(waiters), err))

    # -- the test's side ---------------------------------------------------------------------------
    def touch(self, gfn: int, waiter: object = None, tag: int | None = None, accessed: bool = False,
              write: bool | None = None) -> Outcome:
        """A guest access that traps (a write unless `write` is False); if it maps at once, the
        guest writes `tag` into the page."""
        write = True if write is None else write
        outcome = self.mm.request(gfn, waiter if waiter is not None else f"w{gfn}", write)
        if outcome == Outcome.MAPPED:
            if tag is not None:
                self.write(gfn, pattern(gfn, tag))
            self.stage2.accessed[gfn] = int(accessed)   # the access flag as the test wants it
        return outcome

    def write(self, gfn: int, data: bytes) -> None:
        assert self.stage2.perm[gfn] == Perm.RW, f"guest write to page {gfn} mapped {self.stage2.perm[gfn]}"
        with self.ram.page(gfn) as p:
            p[:] = data

    def content(self, gfn: int) -> bytes:
        with self.ram.page(gfn) as p:
            return bytes(p)

    def file_content(self, gfn: int) -> bytes:
        """The RAM file's bytes through read(2): does not fault a page in, unlike the mapping."""
        fd = os.open(self.ram_path, os.O_RDONLY)
        try:
            return os.pread(fd, PAGE_SIZE, gfn * PAGE_SIZE)
        finally:
            os.close(fd)

    def ack(self, batch: int) -> bool:
        self.unacked.pop(batch, None)
        return self.mm.tlbi_acked(batch)

    def ack_all(self) -> None:
        for batch in list(self.unacked):
            self.ack(batch)

    def complete(self, op: IoOp, gfn: int) -> int:
        """Play the worker: do the real I/O of that queued job now, then report it."""
        self.jobs.remove((op, gfn))
        err = 0
        if (op, gfn) in self.fail:
            self.fail.discard((op, gfn))
            err = errno.EIO
        else:
            slot = self.mm.slot_of(gfn)
            assert slot >= 0, f"{op.name} of page {gfn}, which has no swap slot"
            with self.ram.page(gfn) as p:
                if op == IoOp.READ:
                    self.swap.read_into(slot, p)
                else:
                    self.swap.write_from(slot, p)
        if op == IoOp.READ:
            self.mm.read_done(gfn, err, 1000)
        else:
            self.mm.write_done(gfn, err)
        return err

    def complete_all(self, op: IoOp | None = None) -> None:
        for job in [j for j in self.jobs if op is None or j[0] == op]:
            if job in self.jobs:
                self.complete(*job)

    def writes(self) -> list[int]:
        return [g for op, g in self.submitted if op == IoOp.WRITE]

    def reads(self) -> list[int]:
        return [g for op, g in self.submitted if op == IoOp.READ]

    def fill_until_reclaim(self, tag: int = 1) -> list[int]:
        """Touch fresh pages, stamping each, until the first TLBI batch is sent; return its victims."""
        gfn = 0
        while not self.tlbis:
            assert self.touch(gfn, tag=tag) == Outcome.MAPPED
            gfn += 1
        return self.tlbis[0][1]

    def ram_bytes(self) -> int:
        return allocated_bytes(self.ram_path)

    def close(self) -> None:
        self.ram.close()
        self.stage2.close()
        self.swap.close()


@pytest.fixture
def h(shm_dir, tmp_path):
    harness = Harness(shm_dir, str(tmp_path))
    yield harness
    harness.close()


# -- watermarks ------------------------------------------------------------------------------------

def test_watermarks_are_ordered_within_the_budget():
    """For every budget from 16 to 10**6 pages: 0 < low < high <= budget."""
    for budget in range(MIN_BUDGET_PAGES, 10**6 + 1):
        wm = Watermarks.for_budget(budget)
        assert 0 < wm.low < wm.high <= budget, (budget, wm)


def test_budget_below_minimum_is_refused(shm_dir):
    """A budget under MIN_BUDGET_PAGES is a ValueError that names the minimum."""
    stage2 = Stage2.create(os.path.join(shm_dir, "stage2"), 32)
    try:
        with pytest.raises(ValueError, match=str(MIN_BUDGET_PAGES)):
            MemoryManager(32, MIN_BUDGET_PAGES - 1, stage2.valid, stage2.accessed,
                          lambda *a: None, lambda *a: None, lambda *a: None, lambda *a: None)
    finally:
        stage2.close()


# -- first touch -----------------------------------------------------------------------------------

def test_first_touch_write_allocates_a_zeroed_page_as_a_minor_fault(h):
    """A first-touch write to a never-touched page maps it read-write at once (MAPPED, no I/O),
    reads as zeros, counts one minor fault and one page of the budget, and is dirty."""
    assert h.mm.page_state(5) == PageState.NEVER
    assert h.touch(5, write=True) == Outcome.MAPPED
    assert h.mm.page_state(5) == PageState.RESIDENT
    assert h.stage2.perm[5] == Perm.RW
    assert h.content(5) == bytes(PAGE_SIZE)
    assert h.mm.counters.minor_faults == 1 and h.mm.counters.major_faults == 0
    assert h.mm.counters.write_protect == 0
    assert h.mm.resident == 1 and h.mm.free == BUDGET - 1
    assert h.submitted == [] and h.page_ins == []
    assert not h.mm.is_major(5)
    assert h.touch(5, write=True) == Outcome.MAPPED                      # a second fault costs nothing
    assert h.mm.counters.minor_faults == 1 and h.mm.resident == 1


def test_first_touch_read_maps_the_zero_page_and_charges_nothing(h):
    """A first-touch read maps the shared zero page (ZERO, read-only): no memory charged, no
    block allocated in the RAM file, no I/O; the first write then allocates the page (a
    permission fault and a minor fault) and maps it read-write."""
    for gfn in range(GUEST_PAGES):                 # more pages than the budget: none is charged
        assert h.touch(gfn, write=False) == Outcome.MAPPED
        assert h.stage2.perm[gfn] == Perm.ZERO
    assert h.mm.resident == 0 and h.ram_bytes() == 0 and h.submitted == [] and h.tlbis == []
    assert h.mm.counters.zero_maps == GUEST_PAGES and h.mm.counters.minor_faults == GUEST_PAGES
    assert all(h.mm.page_state(g) == PageState.NEVER for g in range(GUEST_PAGES))
    assert h.touch(3, write=False) == Outcome.MAPPED and h.mm.counters.zero_maps == GUEST_PAGES
    assert h.touch(3, tag=1) == Outcome.MAPPED
    assert h.stage2.perm[3] == Perm.RW and h.mm.page_state(3) == PageState.RESIDENT
    assert h.mm.counters.write_protect == 1 and h.mm.resident == 1
    assert h.content(3) == pattern(3, 1)


# -- reclaim ---------------------------------------------------------------------------------------

def test_reclaim_starts_below_low_watermark_with_break_before_make(h):
    """No TLBI while free pages >= low; the touch that takes free below low sends one TLBI for
    (high - free) victims whose stage-2 valid bytes were already cleared; nothing is written back
    before the ack; after the ack exactly the victims are written back."""
    wm = h.mm.wm
    gfn = 0
    while h.mm.free > wm.low:
        h.touch(gfn, tag=1)
        gfn += 1
    assert h.mm.free == wm.low and h.tlbis == []
    h.touch(gfn, tag=1)
    assert len(h.tlbis) == 1
    batch, victims = h.tlbis[0]
    assert len(victims) == wm.high - h.mm.free
    assert h.valid_at_tlbi[batch] == [0] * len(victims), "TLBI sent before stage 2 was cleared"
    assert all(h.mm.page_state(g) == PageState.EVICTING for g in victims)
    assert h.mm.evicting == len(victims)
    assert h.writes() == [], "a victim was written back before the TLBI ack"
    assert h.mm.counters.tlbi_batches == 1

    assert h.ack(batch) is True
    assert sorted(h.writes()) == sorted(victims)
    assert h.early_writes == []
    assert h.ack(batch) is False                             # a batch is acked once


def test_unknown_tlbi_batch_ack_is_refused(h):
    """An ack for a batch that is not waiting returns False and changes nothing."""
    h.fill_until_reclaim()
    before = bytes(h.mm.state)
    assert h.mm.tlbi_acked(999) is False
    assert bytes(h.mm.state) == before and h.submitted == []


def test_accessed_pages_get_a_second_chance(h):
    """Pages whose accessed byte is set are skipped by the clock (and their byte cleared) while
    enough unaccessed pages exist; the victims are the first unaccessed pages in clock order."""
    wm = h.mm.wm
    for gfn in range(BUDGET - wm.low):
        h.touch(gfn, tag=1, accessed=gfn in (0, 2, 3))
    assert h.tlbis == []
    h.touch(BUDGET - wm.low, tag=1)
    victims = h.tlbis[0][1]
    want = wm.high - h.mm.free
    assert victims == [g for g in range(BUDGET) if g not in (0, 2, 3)][:want]
    assert [h.stage2.accessed[g] for g in (0, 2, 3)] == [0, 0, 0]    # chance used up
    assert all(h.mm.page_state(g) == PageState.RESIDENT for g in (0, 2, 3))


def test_all_pages_accessed_still_yields_victims(h):
    """When every resident page was accessed, the clock's second pass still finds enough victims,
    each page at most once."""
    wm = h.mm.wm
    gfn = 0
    while not h.tlbis:
        h.touch(gfn, accessed=True)
        gfn += 1
    victims = h.tlbis[0][1]
    assert len(victims) == wm.high - h.mm.free
    assert len(set(victims)) == len(victims), "a page was picked twice in one batch"


def test_a_fault_answered_mapped_leaves_its_page_mapped(h):
    """Outcome.MAPPED means "the page is mapped now": the page a fault has just populated must not be
    picked as a victim by the reclaim that same fault triggers, even when every other resident page
    was recently accessed (the guest is about to access the faulting page; a swap-in marks it
    accessed for that reason)."""
    wm = h.mm.wm
    for gfn in range(BUDGET - wm.low):
        assert h.touch(gfn, accessed=True) == Outcome.MAPPED
    new = BUDGET - wm.low
    assert h.touch(new) == Outcome.MAPPED
    assert h.tlbis, "reclaim did not start"
    assert new not in h.tlbis[0][1], f"page {new} was answered MAPPED and unmapped by the same fault"
    assert h.stage2.valid[new] == Perm.RW


# -- swap round trip ---------------------------------------------------------------------------------

def test_swap_round_trip_through_real_files(h):
    """Stamped pages evicted (write-back, then MADV_REMOVE: the RAM file loses their blocks and reads
    zero there) and faulted back (major fault, real read) come back byte-identical, mapped and
    marked accessed."""
    victims = h.fill_until_reclaim(tag=7)
    ram_before = h.ram_bytes()
    h.ack(h.tlbis[0][0])
    h.complete_all(IoOp.WRITE)
    assert h.mm.counters.swap_writes == len(victims) == h.mm.counters.evictions
    assert sorted(g for g, _ in h.freed) == sorted(victims)
    assert ram_before - h.ram_bytes() == len(victims) * PAGE_SIZE
    assert h.swap.allocated_bytes() >= len(victims) * PAGE_SIZE
    for g in victims:
        assert h.mm.page_state(g) == PageState.SWAPPED and h.stage2.valid[g] == 0
        assert h.file_content(g) == bytes(PAGE_SIZE)
        assert h.mm.is_major(g)

    g = victims[0]
    assert h.touch(g, waiter="major") == Outcome.PENDING
    assert h.mm.page_state(g) == PageState.READING
    assert h.reads() == [g] and h.mm.counters.major_faults == 1
    assert h.page_ins == []
    h.complete(IoOp.READ, g)
    assert h.page_ins == [(g, ["major"], 0)]
    assert h.mm.page_state(g) == PageState.RESIDENT
    assert h.stage2.valid[g] == Perm.RW and h.stage2.accessed[g] == 1
    assert h.content(g) == pattern(g, 7)
    assert h.mm.counters.swap_reads == 1 and len(h.mm.counters.swap_in_ns) == 1


def test_second_fault_during_swap_in_joins_without_second_read(h):
    """A fault on a page whose swap-in is in flight joins the waiters: one read, both answered."""
    victims = h.fill_until_reclaim()
    h.ack(h.tlbis[0][0])
    h.complete_all(IoOp.WRITE)
    g = victims[0]
    assert h.touch(g, waiter="a") == Outcome.PENDING
    assert h.touch(g, waiter="b") == Outcome.PENDING
    assert h.reads() == [g] and h.mm.counters.joined_faults == 1
    h.complete(IoOp.READ, g)
    assert h.page_ins == [(g, ["a", "b"], 0)]


# -- rescue ------------------------------------------------------------------------------------------

def test_fault_on_evicting_page_before_ack_is_rescued_without_io(h):
    """A fault on a victim whose TLBI is not yet acked maps it back at once (no I/O), and the later
    ack does not write it back."""
    victims = h.fill_until_reclaim(tag=3)
    g = victims[1]
    assert h.touch(g) == Outcome.MAPPED
    assert h.mm.counters.rescued == 1
    assert h.mm.page_state(g) == PageState.RESIDENT and h.stage2.valid[g] == Perm.RW
    assert h.mm.evicting == len(victims) - 1
    assert h.submitted == []
    h.ack(h.tlbis[0][0])
    assert sorted(h.writes()) == sorted(set(victims) - {g})
    assert h.content(g) == pattern(g, 3)


def test_late_write_back_does_not_free_a_rescued_page(h):
    """A victim rescued while its write-back is in flight stays resident when the write completes:
    no hole punched, content (including writes after the rescue) intact, budget unchanged; and it can
    be reclaimed again later."""
    victims = h.fill_until_reclaim(tag=3)
    h.ack(h.tlbis[0][0])
    g = victims[0]
    io = list(h.submitted)
    assert h.touch(g) == Outcome.MAPPED
    assert h.mm.counters.rescued == 1 and h.submitted == io       # rescued without any I/O
    h.write(g, pattern(g, 4))
    resident, ram_before = h.mm.resident, h.ram_bytes()
    h.complete(IoOp.WRITE, g)
    assert h.mm.page_state(g) == PageState.RESIDENT
    assert h.stage2.valid[g] == Perm.RW
    assert g not in [f for f, _ in h.freed]
    assert h.ram_bytes() == ram_before
    assert h.mm.resident == resident
    assert h.content(g) == pattern(g, 4)
    assert h.mm.counters.evictions == 0
    # The in-flight flag is gone: the page is an ordinary candidate again.
    assert h.mm.state[g] == PageState.RESIDENT


# -- I/O errors --------------------------------------------------------------------------------------

def test_write_back_error_keeps_the_page_resident(h):
    """A failed write-back leaves the page resident and mapped with its content, does not free its
    memory, counts swap_write_errors, and puts the host one page over budget (overdraft)."""
    victims = h.fill_until_reclaim(tag=5)
    h.ack(h.tlbis[0][0])
    g = victims[0]
    h.fail.add((IoOp.WRITE, g))
    resident, ram_before = h.mm.resident, h.ram_bytes()
    assert h.complete(IoOp.WRITE, g) == errno.EIO
    assert h.mm.page_state(g) == PageState.RESIDENT and h.stage2.valid[g] == Perm.RW
    assert h.content(g) == pattern(g, 5)
    assert h.ram_bytes() == ram_before
    assert h.mm.resident == resident and h.mm.evicting == len(victims) - 1
    c = h.mm.counters
    assert (c.swap_write_errors, c.over_budget_events, c.evictions, c.swap_writes) == (1, 1, 0, 0)
    assert h.mm.overdraft == 1 and h.mm.free == h.mm.budget + 1 - h.mm.charged
    assert h.freed == []


def test_failed_write_back_of_a_rescued_page_is_an_error_but_no_overdraft(h):
    """A victim rescued by a read while its write-back is in flight is mapped read-only (the slot
    is about to hold it); when that write-back fails, the error is counted, the page turns dirty
    (mapped RW, slot given up, written back when evicted again) and keeps its content, but the host
    goes no page over budget: the page was charged all along."""
    victims = h.fill_until_reclaim(tag=6)
    h.ack(h.tlbis[0][0])
    g = victims[0]
    assert h.touch(g, write=False) == Outcome.MAPPED
    assert h.mm.counters.rescued == 1 and h.stage2.perm[g] == Perm.RO
    h.fail.add((IoOp.WRITE, g))
    resident, free = h.mm.resident, h.mm.free
    assert h.complete(IoOp.WRITE, g) == errno.EIO
    assert h.mm.page_state(g) == PageState.RESIDENT and h.stage2.perm[g] == Perm.RW
    assert h.mm.slot_of(g) == -1 and h.content(g) == pattern(g, 6)
    c = h.mm.counters
    assert (c.swap_write_errors, c.over_budget_events, c.swap_writes, c.evictions) == (1, 0, 0, 0)
    assert h.mm.overdraft == 0 and (h.mm.resident, h.mm.free) == (resident, free)

def test_read_error_poisons_the_page(h):
    """A failed swap-in settles its waiters with an error, poisons the page, releases its budget,
    and every later fault on it returns POISONED at once without I/O."""
    victims = h.fill_until_reclaim(tag=2)
    h.ack(h.tlbis[0][0])
    h.complete_all(IoOp.WRITE)
    g = victims[0]
    assert h.touch(g, waiter="first") == Outcome.PENDING
    resident = h.mm.resident
    h.fail.add((IoOp.READ, g))
    h.complete(IoOp.READ, g)
    assert len(h.page_ins) == 1
    gfn, waiters, err = h.page_ins[0]
    assert (gfn, waiters) == (g, ["first"]) and err != 0
    assert h.mm.page_state(g) == PageState.POISONED and h.stage2.valid[g] == 0
    assert h.mm.resident == resident - 1
    c = h.mm.counters
    assert (c.swap_read_errors, c.poisoned, c.swap_reads) == (1, 1, 0)
    reads = len(h.reads())
    assert h.touch(g, waiter="later") == Outcome.POISONED
    assert h.touch(g, waiter="again") == Outcome.POISONED
    assert len(h.reads()) == reads and len(h.page_ins) == 1
    assert not h.mm.is_major(g)


# -- allocation stalls ---------------------------------------------------------------------------------

def test_fault_without_free_page_waits_and_is_served_by_write_back(h):
    """With no free page (victims still waiting for their ack), a fault is queued (PENDING,
    alloc_stalls counted, nothing mapped); the first completed write-back frees a page and the
    queued fault is mapped and reported through page_in, still within the budget."""
    gfn = 0
    while h.mm.free > 0:
        h.touch(gfn, tag=1)
        gfn += 1
    assert h.tlbis and h.mm.evicting > 0
    new = gfn
    assert h.touch(new, waiter="stalled") == Outcome.PENDING
    assert h.mm.counters.alloc_stalls == 1
    assert h.mm.page_state(new) == PageState.NEVER and h.stage2.valid[new] == 0
    assert h.page_ins == []
    h.ack(h.tlbis[0][0])
    assert h.page_ins == []
    op, victim = h.jobs[0]
    h.complete(op, victim)
    assert h.page_ins == [(new, ["stalled"], 0)]
    assert h.mm.page_state(new) == PageState.RESIDENT and h.stage2.valid[new] == Perm.RW
    assert h.mm.resident <= h.mm.budget


def test_stalled_major_fault_is_served_by_write_back(h):
    """A fault on a swapped page that finds no free page waits, then starts its swap-in when a
    write-back frees memory, and is answered once the read completes."""
    victims = h.fill_until_reclaim(tag=9)
    h.ack(h.tlbis[0][0])
    h.complete_all(IoOp.WRITE)
    swapped = victims[0]
    gfn = max(victims) + 1
    while h.mm.free > 0:
        if h.mm.page_state(gfn) == PageState.NEVER:
            h.touch(gfn, tag=1)
        gfn += 1
    assert h.touch(swapped, waiter="stalled") == Outcome.PENDING
    assert h.mm.counters.alloc_stalls == 1 and h.reads() == []
    for batch in list(h.unacked):
        h.ack(batch)
    op, victim = next(j for j in h.jobs if j[0] == IoOp.WRITE)
    h.complete(op, victim)
    assert h.reads() == [swapped] and h.mm.page_state(swapped) == PageState.READING
    h.complete(IoOp.READ, swapped)
    assert (swapped, ["stalled"], 0) in h.page_ins
    assert h.content(swapped) == pattern(swapped, 9)


def test_stalled_fault_is_not_stranded_by_a_write_back_error(h):
    """Liveness: a fault waiting for a free page must not wait forever when the write-backs in flight
    fail. After every pending write-back has failed (and every TLBI sent is acked), reclaim must
    go on (a new TLBI batch is sent) or the fault must be served."""
    gfn = 0
    while h.mm.free > 0:
        h.touch(gfn, tag=1)
        gfn += 1
    assert h.touch(gfn, waiter="stalled") == Outcome.PENDING
    for _ in range(20):                       # bounded: keep acking and failing what reclaim sends
        h.ack_all()
        if not h.jobs:
            break
        for op, g in list(h.jobs):
            h.fail.add((op, g))
            h.complete(op, g)
    served = any("stalled" in waiters for _, waiters, _ in h.page_ins)
    assert served or h.unacked or h.jobs, (
        "the stalled fault is stranded: every write-back failed and reclaim never ran again "
        f"(free={h.mm.free}, evicting={h.mm.evicting}, queue={list(h.mm.alloc_queue)})")


# -- break-before-make under overlapping batches --------------------------------------------------------

def _rescue_then_reevict(h: Harness) -> tuple[int, list[int], int]:
    """Batch 1 unmaps pages; the guest faults two of them back (rescue) and keeps working, acking
    later TLBIs promptly but not batch 1; continue until a later batch unmaps a rescued page again.
    Return (batch 1, the re-evicted rescued pages, the later batch)."""
    victims = h.fill_until_reclaim(tag=1)
    first = h.tlbis[0][0]
    rescued = victims[:2]
    for g in rescued:
        assert h.touch(g) == Outcome.MAPPED
        h.write(g, pattern(g, 2))
    fresh = itertools.count(max(victims) + 10)
    for _ in range(200):
        for batch, vs in h.tlbis[1:]:
            again = [g for g in rescued if g in vs]
            if again and batch in h.unacked:
                return first, again, batch
        for batch in [b for b in h.unacked if b != first]:
            h.ack(batch)
        h.complete_all(IoOp.WRITE)
        gfn = next(fresh) % GUEST_PAGES
        if h.mm.page_state(gfn) in (PageState.NEVER, PageState.SWAPPED):
            if h.touch(gfn) == Outcome.PENDING:
                h.complete_all(IoOp.READ)
            elif h.stage2.valid[gfn]:
                h.write(gfn, pattern(gfn, 1))
    pytest.fail("the clock never came back to a rescued page")


def test_no_write_back_before_the_ack_of_the_tlbi_that_unmapped_the_page(h):
    """Break-before-make with overlapping batches: a page unmapped by batch 1, rescued, then unmapped
    again by batch 2 must not be written back when batch 1 is acked (batch 2's TLBI, which removes
    the guest's newer mapping, is not acked yet)."""
    first, again, later = _rescue_then_reevict(h)
    assert h.early_writes == []
    h.ack(first)
    assert h.early_writes == [], (
        f"pages {[g for g, _ in h.early_writes]} were written back on the ack of batch {first} while "
        f"batch {later}, which unmapped them again, was still waiting for its ack")


def test_rescued_and_reevicted_page_keeps_its_data(h):
    """Data integrity across rescue and re-eviction: after both overlapping batches are acked and
    all I/O has completed in submission order, the page faults back with the data last written."""
    first, again, later = _rescue_then_reevict(h)
    g = again[0]
    h.ack(first)
    h.ack(later)
    for _ in range(100):
        if not h.jobs:
            break
        h.complete(*h.jobs[0])           # the workers' order: first submitted, first done
    assert not h.jobs
    assert h.mm.page_state(g) == PageState.SWAPPED
    assert h.touch(g, waiter="back") == Outcome.PENDING
    h.complete(IoOp.READ, g)
    assert h.content(g) == pattern(g, 2), "the page came back from swap with other data"


# -- reset ------------------------------------------------------------------------------------------------

# -- permissions, the swap cache and clean drops -----------------------------------------------------

def evict_all(h: Harness, pages: list[int]) -> None:
    """Write to other pages (which never makes a clean drop or a permission fault) until every
    page of `pages` is swapped out, acknowledging TLBIs and completing I/O as it goes."""
    others = [g for g in range(GUEST_PAGES) if g not in pages]
    for i in range(20 * GUEST_PAGES):
        if all(h.mm.page_state(g) == PageState.SWAPPED for g in pages):
            return
        for g in pages:
            h.stage2.accessed[g] = 0
        other = others[i % len(others)]
        if h.mm.page_state(other) in (PageState.NEVER, PageState.SWAPPED) and h.mm.free > 0:
            h.touch(other, waiter=f"evict{i}", write=True)
        h.ack_all()
        h.complete_all()
    raise AssertionError(f"pages {pages} were not evicted")


def test_swap_in_for_a_read_is_clean_and_write_protected(h):
    """A page swapped in for a read is mapped read-only (clean: its slot keeps its copy); the first
    write is a permission fault answered at once (no I/O) that maps it read-write."""
    h.touch(0, tag=1)
    evict_all(h, [0])
    io = len(h.submitted)
    assert h.touch(0, write=False) == Outcome.PENDING
    h.complete(IoOp.READ, 0)
    assert h.stage2.perm[0] == Perm.RO and h.content(0) == pattern(0, 1)
    assert h.mm.counters.write_protect == 0
    assert h.touch(0, tag=2) == Outcome.MAPPED
    assert h.stage2.perm[0] == Perm.RW and h.mm.counters.write_protect == 1
    assert len(h.submitted) == io + 1          # the swap-in only


def test_swap_in_for_a_write_is_mapped_read_write(h):
    """A write fault on a swapped page (or a write joining its swap-in) maps it read-write when it
    is in: no permission fault follows."""
    h.touch(0, tag=1)
    h.touch(1, tag=1)
    evict_all(h, [0, 1])
    assert h.touch(0, waiter="w", write=True) == Outcome.PENDING
    assert h.touch(1, waiter="r", write=False) == Outcome.PENDING
    assert h.touch(1, waiter="w", write=True) == Outcome.PENDING
    h.complete(IoOp.READ, 0)
    h.complete(IoOp.READ, 1)
    assert h.stage2.perm[0] == Perm.RW and h.stage2.perm[1] == Perm.RW
    assert h.mm.counters.write_protect == 0


# The life of one page: (step, then expected state, perm, swap reads, swap writes, clean drops,
# write-protect faults). Evictions happen through reclaim, driven by touching other pages.
LIFE = [
    ("read first", PageState.NEVER, Perm.ZERO, 0, 0, 0, 0),
    ("write", PageState.RESIDENT, Perm.RW, 0, 0, 0, 1),
    ("evict", PageState.SWAPPED, Perm.NONE, 0, 1, 0, 1),
    ("read", PageState.RESIDENT, Perm.RO, 1, 1, 0, 1),
    ("evict", PageState.SWAPPED, Perm.NONE, 1, 1, 1, 1),
    ("read", PageState.RESIDENT, Perm.RO, 2, 1, 1, 1),
    ("write", PageState.RESIDENT, Perm.RW, 2, 1, 1, 2),
    ("evict", PageState.SWAPPED, Perm.NONE, 2, 2, 1, 2),
    ("read", PageState.RESIDENT, Perm.RO, 3, 2, 1, 2),
]


def test_page_life_zero_written_evicted_clean_dropped_dirtied_written(h):
    """Table: a page read first maps the zero page; written, it is allocated; evicted, written
    back; read back, clean and read-only; evicted again, dropped without a write; written, a
    permission fault makes it dirty; evicted, written back again. Its content is right at every
    read, and only page 0's own I/O is counted."""
    g, version = 0, 0
    for step, state, perm, reads, writes, drops, wp in LIFE:
        if step == "read first":
            assert h.touch(g, write=False) == Outcome.MAPPED
        elif step == "write":
            version += 1
            assert h.touch(g, tag=version) == Outcome.MAPPED
        elif step == "evict":
            evict_all(h, [g])
        else:
            assert h.touch(g, write=False, waiter=step) == Outcome.PENDING
            h.complete(IoOp.READ, g)
            assert h.content(g) == pattern(g, version)
        got = (h.mm.page_state(g), h.stage2.perm[g], h.reads().count(g), h.writes().count(g),
               h.mm.counters.clean_drops, h.mm.counters.write_protect)
        assert got == (state, perm, reads, writes, drops, wp), step


def test_clean_drop_frees_ram_and_keeps_the_slot(h):
    """Evicting a clean page frees its RAM block without a write, counts an eviction and a clean
    drop, and the next swap-in reads the kept slot back intact."""
    h.touch(0, tag=5)
    evict_all(h, [0])
    h.touch(0, write=False, waiter="r")
    h.complete(IoOp.READ, 0)
    writes, evictions = h.writes().count(0), h.mm.counters.evictions
    evict_all(h, [0])
    assert h.writes().count(0) == writes and h.mm.counters.clean_drops == 1
    assert h.mm.counters.evictions > evictions
    assert h.file_content(0) == bytes(PAGE_SIZE)     # the RAM block was freed
    h.touch(0, write=False, waiter="r2")
    h.complete(IoOp.READ, 0)
    assert h.content(0) == pattern(0, 5)


def test_write_after_rescue_during_write_back_is_not_lost(h):
    """A page rescued while its write-back runs is mapped read-only; written then (a permission
    fault) and unmapped again before that write-back ends, it is written back once more: the swap
    slot ends with the last write, not the copy the first write-back took."""
    victims = h.fill_until_reclaim(tag=3)
    h.ack(h.tlbis[0][0])
    g = victims[0]
    assert (IoOp.WRITE, g) in h.jobs
    assert h.touch(g, write=False) == Outcome.MAPPED and h.stage2.perm[g] == Perm.RO
    assert h.touch(g, tag=4) == Outcome.MAPPED and h.mm.counters.write_protect == 1
    h.mm.perm[g] = Perm.NONE                     # unmapped again by reclaim, with its own batch
    h.mm._set(g, PageState.EVICTING)
    h.mm.evicting += 1
    h.mm._unmap([g])
    h.ack(h.tlbis[-1][0])
    # The first write-back ran before the guest's write: what it wrote is the old copy.
    with h.ram.page(g) as p:
        p[:] = pattern(g, 3)
    h.complete(IoOp.WRITE, g)
    with h.ram.page(g) as p:
        p[:] = pattern(g, 4)
    assert h.writes().count(g) == 2 and h.mm.page_state(g) == PageState.EVICTING
    h.complete(IoOp.WRITE, g)
    assert h.mm.page_state(g) == PageState.SWAPPED
    assert h.touch(g, write=False, waiter="r") == Outcome.PENDING
    h.complete(IoOp.READ, g)
    assert h.content(g) == pattern(g, 4)


def test_full_swap_device_keeps_dirty_victims_resident(shm_dir, tmp_path):
    """With a swap device of 4 slots, the fifth dirty victim finds no slot: it stays resident and
    mapped read-write with its content, the host goes over budget as for ENOSPC, and nothing is
    written for it; a clean victim still drops (it needs no new slot)."""
    from host.swapio.slots import SlotAllocator
    h = Harness(shm_dir, str(tmp_path))
    h.mm.slots = SlotAllocator(4)
    try:
        victims = h.fill_until_reclaim(tag=2)
        assert len(victims) > 4
        h.ack(h.tlbis[0][0])
        assert len(h.writes()) == 4 and h.mm.slots.used == 4
        assert h.mm.counters.swap_write_errors == len(victims) - 4 == h.mm.overdraft
        for g in victims[4:]:
            assert h.mm.page_state(g) == PageState.RESIDENT and h.stage2.perm[g] == Perm.RW
            assert h.content(g) == pattern(g, 2)
    finally:
        h.close()


def test_guest_mmu_enforces_stage2_permissions(shm_dir):
    """The guest's MMU check: NONE traps every access; RO and ZERO let reads through and trap
    writes (nothing is written); RW lets both through. A ZERO read sees zeros without
    allocating the page's block in the RAM file."""
    from guest.memory import AccessResult, GuestMemory
    ram = GuestRam.create(os.path.join(shm_dir, "ram"), 8)
    stage2 = Stage2.create(os.path.join(shm_dir, "stage2"), 8)
    mem = GuestMemory(ram, stage2)
    try:
        assert mem.access(0, False) == mem.access(0, True) == AccessResult.MISS
        stage2.perm[1] = Perm.ZERO
        assert mem.access(1, False) == AccessResult.HIT and mem.access(1, True) == AccessResult.MISS
        assert allocated_bytes(os.path.join(shm_dir, "ram")) == 0 and mem.versions[1] == 0
        stage2.perm[2] = Perm.RW
        assert mem.access(2, True) == AccessResult.HIT and mem.versions[2] == 1
        stage2.perm[2] = Perm.RO
        assert mem.access(2, True) == AccessResult.MISS and mem.versions[2] == 1
        assert mem.access(2, False) == AccessResult.HIT
        stage2.perm[2] = Perm.ZERO                # a host bug: a written page mapped to zeros
        assert mem.access(2, False) == AccessResult.CORRUPT
    finally:
        ram.close()
        stage2.close()


def test_reset_forgets_everything(h):
    """reset() (with Stage2.reset(), as the host calls both) returns every page to NEVER, zeroes both
    stage-2 arrays in the shared file, empties the queues and batches, zeroes the counters and frees the whole budget; afterwards a page that was
    swapped is a plain minor fault again."""
    victims = h.fill_until_reclaim(tag=1)
    h.ack(h.tlbis[0][0])
    h.complete_all(IoOp.WRITE)
    gfn = max(victims) + 1
    while h.mm.free > 0:
        if h.mm.page_state(gfn) == PageState.NEVER:
            h.touch(gfn, tag=1, accessed=True)
        gfn += 1
    h.touch(gfn + 1, waiter="queued")
    h.touch(victims[0], waiter="queued-major")
    assert h.mm.alloc_queue and h.mm.batches
    old_batch = next(iter(h.mm.batches))

    h.mm.reset()
    h.stage2.reset()

    assert all(h.mm.page_state(g) == PageState.NEVER for g in range(GUEST_PAGES))
    other = Stage2.attach(h.stage2_path, GUEST_PAGES)      # what the guest would see in the file
    try:
        assert bytes(other.valid) == bytes(GUEST_PAGES) and bytes(other.accessed) == bytes(GUEST_PAGES)
    finally:
        other.close()
    assert h.mm.resident == 0 and h.mm.free == BUDGET and h.mm.evicting == 0
    assert not h.mm.alloc_queue and not h.mm.batches and not h.mm.waiters
    assert h.mm.counters == MemoryCounters()
    assert h.mm.tlbi_acked(old_batch) is False
    io = len(h.submitted)
    assert h.touch(victims[0]) == Outcome.MAPPED
    assert h.mm.counters.minor_faults == 1 and len(h.submitted) == io


# -- swap readahead ---------------------------------------------------------------------------------------

# (previous fault, hits since, previous window, this fault) -> window, as Linux's __swapin_nr_pages
# computes it with page_cluster 3 (8 pages at most).
WINDOWS = [
    ((10, 0, 0, 30), 1),     # no hits, not adjacent: no readahead
    ((10, 0, 0, 11), 2),     # no hits, forward-adjacent: two pages
    ((10, 0, 0, 9), 2),      # ... or backward-adjacent
    ((10, 1, 2, 30), 4),     # hits + 2 rounded up to a power of two, at least 4
    ((10, 3, 4, 30), 8),     # 5 -> 8
    ((10, 9, 8, 30), 8),     # capped at 1 << page_cluster
    ((10, 0, 8, 30), 4),     # no hits: shrinks, but to no less than half the previous window
    ((10, 4, 0, 30), 8),     # a VMA's first fault counts 4 hits
]


@pytest.mark.parametrize("before, window", WINDOWS)
def test_readahead_window_follows_linux(h, before, window):
    prev, hits, prev_win, gfn = before
    h.mm.max_window = 8
    h.mm._ra_prev, h.mm._ra_hits, h.mm._ra_win = prev, hits, prev_win
    assert h.mm.readahead_window(gfn) == window
    assert h.mm._ra_hits == 0


@pytest.fixture
def ra(shm_dir, tmp_path):
    harness = Harness(shm_dir, str(tmp_path), budget=32, page_cluster=3)
    yield harness
    harness.close()


def settle(h: Harness) -> None:
    """Acknowledge every TLBI and complete every I/O, until nothing is left in flight."""
    for _ in range(100):
        if not h.unacked and not h.jobs:
            return
        h.ack_all()
        h.complete_all()
    raise AssertionError("I/O and TLBIs did not settle")


def written_and_swapped(h: Harness, pages: range) -> None:
    """Write a tag into every page of `pages`, then touch the rest until all of them are swapped."""
    for g in pages:
        if h.touch(g, tag=1) != Outcome.MAPPED:
            settle(h)
            h.write(g, pattern(g, 1))
    evict_all(h, list(pages)[:1])
    for _ in range(20):
        if all(h.mm.page_state(g) == PageState.SWAPPED for g in pages):
            return
        for g in pages:
            h.stage2.accessed[g] = 0
        for g in range(40, GUEST_PAGES):
            if h.mm.page_state(g) in (PageState.NEVER, PageState.SWAPPED) and h.mm.free > 0:
                h.touch(g, write=True)
        settle(h)
    raise AssertionError("pages were not swapped out")


def test_readahead_reads_swapped_neighbours_unmapped_and_a_fault_on_one_is_minor(ra):
    """A major fault reads the swapped pages around it in its own request; they come in unmapped
    (in the swap cache), and a fault on one maps it at once, with no I/O, its content intact."""
    written_and_swapped(ra, range(0, 16))
    reads = len(ra.reads())
    assert ra.touch(8, waiter="major", write=False) == Outcome.PENDING
    ahead = ra.reads()[reads + 1:]
    assert ahead and set(ahead) <= set(range(5, 13)) - {8}      # centred window of 8 around page 8
    settle(ra)
    for g in ahead:
        assert ra.mm.page_state(g) == PageState.RESIDENT and ra.stage2.perm[g] == Perm.NONE
    io, majors = len(ra.submitted), ra.mm.counters.major_faults
    for g in ahead:
        assert ra.touch(g, waiter=f"hit{g}", write=False) == Outcome.MAPPED
        assert ra.stage2.perm[g] == Perm.RO and ra.content(g) == pattern(g, 1)
    assert len(ra.submitted) == io and ra.mm.counters.major_faults == majors
    assert ra.mm.counters.readahead_hits == len(ahead) == ra.mm.counters.readahead_pages


def test_sequential_faults_at_page_cluster_3_take_at_most_a_third_of_the_major_faults(ra):
    """Faulting pages 0..15 in order, each swap-in completed before the next access, takes at
    most a third of the 16 major faults that page-cluster 0 takes."""
    written_and_swapped(ra, range(0, 16))
    majors = ra.mm.counters.major_faults
    for g in range(16):
        if ra.touch(g, waiter=f"seq{g}", write=False) == Outcome.PENDING:
            settle(ra)
        assert ra.content(g) == pattern(g, 1)
    assert ra.mm.counters.major_faults - majors <= 16 // 3


def test_unused_readahead_pages_are_the_first_victims_dropped_without_write_or_tlbi(ra):
    """Under memory pressure, read-ahead pages never used are evicted before any mapped page:
    no write-back and no TLBI for them (the guest never mapped them); counted as misses."""
    written_and_swapped(ra, range(0, 16))
    reads = len(ra.reads())
    ra.touch(8, waiter="major", write=False)
    ahead = ra.reads()[reads + 1:]
    settle(ra)
    tlbis, writes = len(ra.tlbis), len(ra.writes())
    g = 40
    while any(ra.mm.page_state(a) == PageState.RESIDENT for a in ahead):
        assert g < GUEST_PAGES, "the read-ahead pages were never evicted"
        if ra.mm.page_state(g) in (PageState.NEVER, PageState.SWAPPED):
            ra.touch(g, write=True)
        g += 1
    assert all(ra.mm.page_state(a) == PageState.SWAPPED for a in ahead)
    assert not any(a in victims for _, victims in ra.tlbis[tlbis:] for a in [*ahead])
    assert not set(ra.writes()[writes:]) & set(ahead)
    assert ra.mm.counters.readahead_misses == len(ahead) and ra.mm.counters.readahead_hits == 0


def test_a_failed_readahead_read_leaves_the_page_in_swap_for_the_next_fault(ra):
    """A read-ahead page whose read fails is not poisoned (nobody asked for it): it stays
    swapped, its slot kept, and a later fault reads it back intact."""
    written_and_swapped(ra, range(0, 16))
    reads = len(ra.reads())
    ra.touch(8, waiter="major", write=False)
    victim = ra.reads()[reads + 1]
    ra.fail.add((IoOp.READ, victim))
    settle(ra)
    assert ra.mm.page_state(victim) == PageState.SWAPPED and ra.mm.slot_of(victim) >= 0
    assert ra.mm.counters.poisoned == 0 and ra.mm.counters.swap_read_errors == 1
    assert ra.touch(victim, waiter="again", write=False) == Outcome.PENDING
    settle(ra)
    assert ra.content(victim) == pattern(victim, 1)


# -- the budget under random sequences ---------------------------------------------------------------------

CHARGED = (PageState.RESIDENT, PageState.READING, PageState.EVICTING)
MACHINE_PAGES = 24


class BudgetMachine(RuleBasedStateMachine):
    """Random faults, guest accesses and writes, TLBI acks (any order) and I/O completions (any
    order, some failing) against the real files."""
    shm_root = "/dev/shm"
    swap_root = "/tmp"
    page_cluster = 0

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="apf-unit-mem-", dir=self.shm_root)
        self.swap_dir = tempfile.mkdtemp(prefix="swap-", dir=self.swap_root)
        self.h = Harness(self.dir, self.swap_dir, guest_pages=MACHINE_PAGES, budget=BUDGET,
                         page_cluster=self.page_cluster)
        self.waiter_ids = itertools.count()
        self.outstanding: set[int] = set()      # waiters told PENDING, not yet answered
        self.answered: Counter = Counter()
        self.written: dict[int, int] = {}       # gfn -> the tag of its last write

    def teardown(self):
        c = self.h.mm.counters
        self.seen.update(ra_pages=c.readahead_pages, ra_hits=c.readahead_hits, ra_misses=c.readahead_misses)
        try:
            self.h.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            shutil.rmtree(self.swap_dir, ignore_errors=True)

    def _collect(self, before: int) -> None:
        for _, waiters, _ in self.h.page_ins[before:]:
            for w in waiters:
                self.answered[w] += 1
                assert self.answered[w] == 1, f"waiter {w} answered twice"
                assert w in self.outstanding, f"waiter {w} answered but was not waiting"
                self.outstanding.discard(w)

    @rule(gfn=st.integers(0, MACHINE_PAGES - 1), write=st.booleans())
    def fault(self, gfn, write):
        w = next(self.waiter_ids)
        before = len(self.h.page_ins)
        outcome = self.h.mm.request(gfn, w, write)
        if outcome == Outcome.PENDING:
            self.outstanding.add(w)
        elif outcome == Outcome.MAPPED and self.h.stage2.valid[gfn]:
            # (MAPPED with the page already unmapped again is checked by its own test.)
            self.h.stage2.accessed[gfn] = 1
            if write:
                assert self.h.stage2.perm[gfn] == Perm.RW, "a write fault answered without write access"
                self.h.write(gfn, pattern(gfn, w))
                self.written[gfn] = w
        elif outcome == Outcome.POISONED:
            assert self.h.mm.page_state(gfn) == PageState.POISONED
        self._collect(before)

    @precondition(lambda self: self.h.unacked)
    @rule(data=st.data())
    def ack(self, data):
        batch = data.draw(st.sampled_from(sorted(self.h.unacked)))
        before = len(self.h.page_ins)
        assert self.h.ack(batch) is True
        self._collect(before)

    @precondition(lambda self: self.h.jobs)
    @rule(data=st.data(), fail=st.integers(0, 7))
    def complete(self, data, fail):
        op, gfn = data.draw(st.sampled_from(self.h.jobs))
        if fail == 0:
            self.h.fail.add((op, gfn))
        before = len(self.h.page_ins)
        self.h.complete(op, gfn)
        self._collect(before)

    @rule(gfn=st.integers(0, MACHINE_PAGES - 1))
    def guest_access(self, gfn):
        if self.h.stage2.valid[gfn]:
            self.h.stage2.accessed[gfn] = 1

    @invariant()
    def resident_within_budget(self):
        mm = self.h.mm
        # Over budget only by the overdraft, and only after that many write-backs failed.
        assert 0 <= mm.overdraft <= mm.counters.swap_write_errors
        assert 0 <= mm.resident <= mm.budget + mm.overdraft
        states = Counter(mm.page_state(g) for g in range(MACHINE_PAGES))
        assert mm.resident == sum(states[s] for s in CHARGED)
        assert mm.evicting == states[PageState.EVICTING]
        assert len(mm.batches) <= BATCHES_IN_FLIGHT_MAX

    @invariant()
    def real_memory_within_budget(self):
        assert self.h.ram_bytes() <= (self.h.mm.budget + self.h.mm.overdraft) * PAGE_SIZE, (
            f"the RAM file holds {self.h.ram_bytes() // PAGE_SIZE} pages, budget {self.h.mm.budget}")

    @invariant()
    def mapped_iff_resident(self):
        mm, valid = self.h.mm, self.h.stage2.valid
        for g in range(MACHINE_PAGES):
            own_frame = valid[g] in (Perm.RO, Perm.RW)
            in_use = mm.page_state(g) == PageState.RESIDENT and not mm.flags[g] & READAHEAD
            assert own_frame == in_use, (g, mm.page_state(g), mm.flags[g])
            assert valid[g] != Perm.ZERO or mm.page_state(g) == PageState.NEVER, g

    @invariant()
    def slots_are_owned_once(self):
        """A swapped or reading page holds a slot; a clean resident page holds one unless its
        write-back is still deciding; no two pages share one; the allocator counts exactly these."""
        mm = self.h.mm
        owned = [mm.slot_of(g) for g in range(MACHINE_PAGES) if mm.slot_of(g) >= 0]
        assert len(owned) == len(set(owned)) == mm.slots.used
        for g in range(MACHINE_PAGES):
            if mm.page_state(g) in (PageState.SWAPPED, PageState.READING):
                assert mm.slot_of(g) >= 0, g

    @invariant()
    def no_write_is_lost(self):
        """Every page the guest can read holds its last write (zeros if never written)."""
        mm, perm = self.h.mm, self.h.stage2.perm
        for g in range(MACHINE_PAGES):
            if mm.page_state(g) == PageState.RESIDENT and mm.flags[g] & READAHEAD:
                assert perm[g] == Perm.NONE, f"read-ahead page {g} is mapped before any fault on it"
                want = pattern(g, self.written[g]) if g in self.written else bytes(PAGE_SIZE)
                assert self.h.content(g) == want, f"read-ahead page {g} does not hold its last write"
            elif perm[g] == Perm.ZERO:
                assert g not in self.written, f"page {g} was written, yet maps the zero page"
            elif perm[g]:
                want = pattern(g, self.written[g]) if g in self.written else bytes(PAGE_SIZE)
                assert self.h.content(g) == want, f"page {g} lost its last write ({mm.page_state(g)!r})"

    @invariant()
    def tlbi_only_after_unmap(self):
        for batch, bytes_ in self.h.valid_at_tlbi.items():
            assert not any(bytes_), f"batch {batch} was sent with mapped victims"

    @invariant()
    def no_write_back_before_ack(self):
        assert self.h.early_writes == []


@pytest.mark.parametrize("cluster", [0, 3], ids=["no-readahead", "readahead"])
def test_resident_never_exceeds_budget_under_random_sequences(shm_dir, tmp_path, cluster):
    """At every step of random fault / access / ack / completion sequences (completions in any order,
    one in eight failing): resident pages (and the RAM file's real blocks) stay within the budget,
    the accounting matches the per-page states, stage 2 maps exactly the resident pages, TLBIs are
    sent only for unmapped victims, no page is written back while a TLBI that unmapped it is
    unacknowledged, no waiter is answered twice, a write is only made through a read-write
    mapping and every mapped page holds its last write. Failed write-backs may put the host over
    budget by at most one page each (the overdraft), paid back by later evictions. With readahead,
    read-ahead pages stay unmapped until a fault uses them and hold the page's last write."""
    class Machine(BudgetMachine):
        shm_root = shm_dir
        swap_root = str(tmp_path)
        page_cluster = cluster
        seen: Counter = Counter()

    run_state_machine_as_test(Machine, settings=settings(
        max_examples=100, stateful_step_count=150, deadline=None, database=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow]))
    if cluster:     # the sequences did read ahead, use read-ahead pages and evict unused ones
        assert min(Machine.seen["ra_pages"], Machine.seen["ra_hits"], Machine.seen["ra_misses"]) > 0, Machine.seen
