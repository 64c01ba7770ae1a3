"""apf/bench/haltpoll.py: the haltpoll section's points, their command lines, and its ratios
paired per repeat against async without polling."""
from __future__ import annotations

from apf.bench.haltpoll import add_ratios, haltpoll_points, markdown_section
from apf.bench.plan import HALTPOLL_WINDOWS_NS, build_plan, count_runs
from tests.unit.test_bench import _values


def test_points_are_sync_async_and_each_window_at_one_task():
    """--only haltpoll --quick: at each latency, sync, async and async with each window, 1 task;
    the windowed points pass --halt-poll and name their reports apart."""
    plan = build_plan(_values("--only", "haltpoll", "--quick"), adaptive_available=lambda: False)
    points = haltpoll_points(plan)
    assert [(p.mode, p.halt_poll_ns) for p in points[:2 + len(HALTPOLL_WINDOWS_NS)]] == \
        [("sync", 0), ("async", 0), *(("async", w) for w in HALTPOLL_WINDOWS_NS)]
    assert {p.tasks for p in points} == {1}
    assert count_runs(plan) == len(points)
    argv = points[2].argv("r.json", 60)
    assert argv[argv.index("--halt-poll") + 1] == f"{HALTPOLL_WINDOWS_NS[0]}ns"
    assert "--halt-poll" not in points[1].argv("r.json", 60)
    assert len({p.name(1) for p in points}) == len(points)


def _row(mode, window, walls, cpus):
    return {"mode": mode, "halt_poll_ns": window, "swap_latency_ns": 0, "label": mode, "repeats": len(walls),
            "repeats_ok": len(walls), "by_repeat": {str(i): {"wall_s": w, "guest_cpu_s": c, "host_cpu_s": None}
                                                     for i, (w, c) in enumerate(zip(walls, cpus), 1)}}


def test_ratios_pair_each_repeat_with_async_without_polling():
    """wall_vs_async is the median of per-repeat ratios (not a ratio of medians); a CPU figure
    missing in every repeat gives None; speedup_vs_sync inverts the paired wall ratio to sync."""
    rows = [_row("sync", 0, [2.0, 2.0, 2.0], [1.0, 1.0, 1.0]),
            _row("async", 0, [2.0, 4.0, 3.0], [1.0, 1.0, 1.0]),
            _row("async", 1000, [1.0, 3.0, 3.0], [1.5, 1.2, 1.1])]
    add_ratios(rows)
    polled = rows[2]
    assert polled["wall_vs_async"] == 0.75          # ratios 0.5, 0.75, 1.0
    assert polled["guest_cpu_vs_async"] == 1.2
    assert polled["host_cpu_vs_async"] is None
    assert polled["speedup_vs_sync"] == 2 / 3      # ratios to sync 0.5, 1.5, 1.5
    assert rows[1]["wall_vs_async"] == 1.0
    lines = markdown_section({"tasks": 1, "accesses": 10, "repeat": 3, "rows": rows})
    assert lines[0] == "## Halt polling: one task, short swap latencies" and len(lines) == 6 + len(rows) + 1
