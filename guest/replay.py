"""`--workload trace:FILE`: guest tasks that replay a real program's memtrace (shared/memtrace.py).

Mapping. The trace's distinct pages get guest frames in first-touch order (the first page the
program touched is frame 0 of its region, the next new page frame 1, ...), so a trace whose
addresses span terabytes (stack near 0x7ff..., heap, libraries) packs into `distinct_pages`
frames. Each memory task is its own process by default: task i's region starts at frame
i x distinct_pages, after the regions of tasks 0..i-1. With `--trace-shared` the tasks are threads
of one program: one region, shared.

Start point. Task 0 replays from the first record; task i > 0 starts at a rotation of the trace
drawn from `random.Random(seed * 1_000_003 + i)`, so tasks are not in lock step; the same seed
replays the same page sequence. Each task loops over the trace until it has made its number of
page-level records (`--accesses`, default the whole trace once).

Compute. Between records a task does the CPU work of the instructions the program executed
there: instructions x ns-per-instruction (what `apf trace record` measured on a native run of the
program, `--ns-per-insn` to override, or DEFAULT_NS_PER_INSN). The work is the hashing of
guest/think.py, owed per record and paid in pieces of at least THINK_QUANTUM_NS (the hashing has
a fixed cost of about a microsecond a call), so the total is the trace's and no record pays the
fixed cost alone. A trace without instruction counts has no compute of its own (`--think` adds
a fixed work per record to any workload).

Content. A real program's pages hold data before the trace window (its text, what it loaded), so
by default every page of the tasks' regions is written once before the workload, as `--prefill`
does for the generators (the guest's prefill phase), and a page the trace only reads swaps like
any other. With `--zero-fill` they are not: a page the trace reads before writing maps the shared
zero page, and one it only reads never swaps. The report's `workload.trace.prefilled` and the
run summary say which.

Memory. A loaded trace is three flat arrays of `records` entries: frame index (uint32), write
flag (one byte), instructions (uint32): 9 bytes a record.
"""
from __future__ import annotations

import random
from array import array
from dataclasses import dataclass
from typing import Callable, Iterator

from guest.workload import Access
from protocol.messages import Ctx
from shared.memtrace import MemtraceHeader, load
from shared.sparse import PageSet

DEFAULT_NS_PER_INSN = 0.5      # a 2-3 GHz core at about 0.7 instructions per cycle, when not measured
THINK_QUANTUM_NS = 20_000


@dataclass
class TraceReplay:
    """A memtrace ready to replay: record -> (frame index in the task's region, write, instructions)."""
    path: str
    header: MemtraceHeader
    frames: array          # uint32: first-touch index of the record's page
    writes: bytes          # 1: the record writes
    insns: array           # uint32: instructions before the record

    @classmethod
    def load(cls, path: str) -> "TraceReplay":
        """Load and map `path`. Raises shared.memtrace.MemtraceError or OSError."""
        trace = load(path)
        index: dict[int, int] = {}
        frames = array("I", bytes(4 * len(trace.pw)))
        for i, x in enumerate(trace.pw):
            page = x >> 1
            f = index.get(page)
            if f is None:
                f = index[page] = len(index)
            frames[i] = f
        writes = bytes(x & 1 for x in trace.pw)
        return cls(path, trace.header, frames, writes, trace.insns)

    @property
    def records(self) -> int:
        return len(self.frames)

    @property
    def distinct_pages(self) -> int:
        return self.header.distinct_pages

    def ns_per_insn(self, override: float | None) -> float:
        """The compute rate: `override`, else the measured one, else DEFAULT_NS_PER_INSN."""
        if override is not None:
            return override
        return self.header.ns_per_insn or DEFAULT_NS_PER_INSN

    def region_pages(self, tasks: int, shared: bool) -> int:
        """Guest pages all memory tasks need: distinct pages, once if shared, else per task."""
        return self.distinct_pages * (1 if shared else tasks)

    def start(self, task: int, seed: int) -> int:
        """The record task `task` starts at."""
        return 0 if task == 0 else random.Random(seed * 1_000_003 + task).randrange(self.records)

    def stream(self, task: int, accesses: int, seed: int, *, shared: bool = False, first_page: int = 0,
               ns_per_insn: float = 0.0, think: Callable[[int], None] | None = None,
               touched: PageSet | None = None, kernel_frac: float = 0.0,
               irqoff_frac: float = 0.0) -> Iterator[Access]:
        """Task `task`'s accesses: `accesses` records from its start point, looping."""
        frames, writes, insns, n = self.frames, self.writes, self.insns, self.records
        base = first_page + (0 if shared else task * self.distinct_pages)
        pos = self.start(task, seed)
        rng = random.Random(seed * 1_000_003 + task) if kernel_frac or irqoff_frac else None
        compute = think is not None and ns_per_insn > 0 and self.header.has_instructions
        owed = 0.0
        user = Ctx.USER
        for _ in range(accesses):
            gfn = base + frames[pos]
            if touched is not None:
                touched[gfn] = 1
            ctx = user
            if rng is not None:
                if rng.random() < kernel_frac:
                    ctx |= Ctx.KERNEL
                if rng.random() < irqoff_frac:
                    ctx |= Ctx.IRQS_OFF
            yield Access(gfn, writes[pos] == 1, ctx)
            pos += 1
            if pos == n:
                pos = 0
            if compute:
                owed += insns[pos] * ns_per_insn
                if owed >= THINK_QUANTUM_NS:
                    think(int(owed))
                    owed = 0.0

    def page_sequence(self, task: int, accesses: int, seed: int, shared: bool = False) -> list[int]:
        """The guest pages task `task` would touch, in order (no compute): for tests and tools."""
        return [a.gfn for a in self.stream(task, accesses, seed, shared=shared)]
