"""Replaying a memtrace in guest tasks: trace pages map to guest frames in first-touch order, one
region per task (or one shared), each task from its own seeded start point, in the trace's order
of reads and writes, with the trace's compute between records."""
from __future__ import annotations

import os

import pytest

from apf.memtrace.importer import import_trace
from guest.replay import DEFAULT_NS_PER_INSN, THINK_QUANTUM_NS, TraceReplay

# Pages 0x500, 0x100, 0x500, 0x900, 0x100 (byte addresses), writes on the 2nd and 4th, 10 insns each.
TRACE = "0x500000 R 10\n0x100000 W 10\n0x500008 R 10\n0x900000 W 10\n0x100000 R 10\n"


@pytest.fixture
def replay(tmp_path) -> TraceReplay:
    src = os.path.join(str(tmp_path), "t.txt")
    with open(src, "w") as f:
        f.write(TRACE)
    out = os.path.join(str(tmp_path), "t.apfmt")
    import_trace(src, out)
    return TraceReplay.load(out)


def test_pages_map_to_frames_in_first_touch_order(replay):
    """The first page the program touched is frame 0, the next new one frame 1, and so on."""
    assert list(replay.frames) == [0, 1, 0, 2, 1]
    assert replay.distinct_pages == 3
    accesses = list(replay.stream(0, 5, seed=1))
    assert [(a.gfn, a.write) for a in accesses] == [(0, False), (1, True), (0, False), (2, True), (1, False)]


def test_each_task_has_its_own_region_after_the_previous_tasks(replay):
    """Task i's frames are [i x distinct, (i+1) x distinct); with shared=True all use region 0."""
    for task in range(4):
        pages = set(replay.page_sequence(task, 10, seed=3))
        assert pages == {3 * task, 3 * task + 1, 3 * task + 2}
        assert set(replay.page_sequence(task, 10, seed=3, shared=True)) == {0, 1, 2}
    assert replay.region_pages(4, shared=False) == 12 and replay.region_pages(4, shared=True) == 3


def test_tasks_loop_over_the_trace_from_seeded_start_points(replay):
    """Task 0 starts at record 0; others at a seeded rotation; every task loops in trace order."""
    order = [0, 1, 0, 2, 1]
    assert replay.page_sequence(0, 12, seed=9) == (order * 3)[:12]
    for task in range(1, 6):
        start = replay.start(task, 9)
        rotated = order[start:] + order[:start]
        assert [p - 3 * task for p in replay.page_sequence(task, 12, seed=9)] == (rotated * 3)[:12]


def test_the_same_seed_replays_the_same_page_sequence(tmp_path):
    """Determinism: the same seed gives every task the same sequence; another seed moves the starts."""
    src = os.path.join(str(tmp_path), "big.txt")
    with open(src, "w") as f:
        f.writelines(f"{(i * 7919 % 1000) << 12:x} {'W' if i % 3 == 0 else 'R'}\n" for i in range(5000))
    out = os.path.join(str(tmp_path), "big.apfmt")
    import_trace(src, out)
    a, b = TraceReplay.load(out), TraceReplay.load(out)
    for task in range(4):
        assert a.page_sequence(task, 3000, seed=5) == b.page_sequence(task, 3000, seed=5)
    assert [a.start(t, 5) for t in range(1, 8)] != [a.start(t, 6) for t in range(1, 8)]


def test_compute_between_records_is_the_trace_instructions(replay):
    """The work owed is instructions x ns per instruction, paid in pieces of at least the quantum."""
    paid: list[int] = []
    rate = THINK_QUANTUM_NS / 25     # 10 instructions per record: a quantum every 2.5 records
    list(replay.stream(0, 100, seed=1, ns_per_insn=rate, think=paid.append))
    assert all(p >= THINK_QUANTUM_NS for p in paid)
    owed = 99 * 10 * rate            # after each of the first 99 records, the next one's 10 instructions
    assert owed - THINK_QUANTUM_NS < sum(paid) <= owed


def test_a_trace_without_counts_has_no_compute(tmp_path):
    """Without instruction counts nothing is thought (the vCPU's --think applies instead)."""
    src = os.path.join(str(tmp_path), "n.txt")
    with open(src, "w") as f:
        f.write("1000 R\n2000 W\n" * 50)
    out = os.path.join(str(tmp_path), "n.apfmt")
    import_trace(src, out)
    replay = TraceReplay.load(out)
    paid: list[int] = []
    list(replay.stream(0, 100, seed=1, ns_per_insn=1000.0, think=paid.append))
    assert paid == [] and not replay.header.has_instructions
    assert replay.ns_per_insn(None) == DEFAULT_NS_PER_INSN and replay.ns_per_insn(2.0) == 2.0


def test_touched_pages_are_marked(replay):
    """Every guest page a task accesses is marked in `touched` (the report's pages_touched)."""
    touched = bytearray(16)
    list(replay.stream(2, 5, seed=1, touched=touched))
    assert [i for i, t in enumerate(touched) if t] == [6, 7, 8]


def test_replay_memory_is_flat_arrays(replay):
    """A loaded trace keeps 9 bytes per record in flat arrays (frame uint32, write byte, insns uint32)."""
    assert replay.frames.itemsize == 4 and replay.insns.itemsize == 4
    assert len(replay.writes) == len(replay.frames) == len(replay.insns) == replay.records == 5
