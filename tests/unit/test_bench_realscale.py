"""The bench's real-scale sections, in-process: their points, the accesses each gets, the
break-even reading and the plan. No timings are checked here."""
from __future__ import annotations

from apf.bench.markdown import markdown
from apf.bench.plan import build_plan, count_runs
from apf.bench.plan import PRESETS
from apf.bench.realscale import (ACCESSES_BOUNDS, ARM64_WORKLOAD, MISS_FRACTION, REAL_THINK_NS, RealPoint,
                                 accesses_for, arm64_mean_latency_ns, arm64_point, break_even, markdown_real_scale)
from apf.cli import build_parser


def _values(*argv: str) -> dict:
    return vars(build_parser().parse_args(["bench", "--out", "/nonexistent", *argv]))


def test_a_real_point_runs_dilated_in_real_equivalent_units():
    """The point's latency and think go to `apf run` as given (real-equivalent), with --dilation
    auto, and --trap-delay only when asked."""
    argv = RealPoint("async", 20_000, 4, 400).point().argv("r.json", 60)
    assert argv[argv.index("--swap-latency") + 1] == "20000ns"
    assert argv[argv.index("--think") + 1] == f"{REAL_THINK_NS}ns"
    assert argv[argv.index("--dilation") + 1] == "auto" and "--trap-delay" not in argv
    assert argv[argv.index("--accesses") + 1] == "100"
    slowed = RealPoint("sync", 20_000, 1, 400, trap_delay_ns=150_000).point().argv("r.json", 60)
    assert slowed[slowed.index("--trap-delay") + 1] == "150000ns"


def test_accesses_keep_a_synchronous_point_within_its_budget():
    """Accesses x (D x think + miss fraction x (D x latency + exit)) is about the budget, within
    the bounds, a multiple of 8."""
    n = accesses_for(100_000, 50.0, exit_ns=150_000, budget_s=3.0)
    per = 50 * REAL_THINK_NS + MISS_FRACTION * (50 * 100_000 + 150_000)
    assert n % 8 == 0 and n * per <= 3e9 < (n + 8) * per
    assert accesses_for(5_000, 1.0) == ACCESSES_BOUNDS[1]
    assert accesses_for(10_000_000, 500.0) == ACCESSES_BOUNDS[0]


def test_break_even_is_where_the_mode_wins_from_then_on():
    """The smallest latency from which the mode beats sync at every larger latency measured; a
    loss above a win moves it up; no win at the top is 'never'."""
    rows = [{"mode": "async", "tasks": 4, "latency_ns": lat, "speedup_vs_sync": s}
            for lat, s in ((5_000, 1.2), (20_000, 0.9), (80_000, 1.5), (300_000, 2.0))]
    rows += [{"mode": "async", "tasks": 1, "latency_ns": lat, "speedup_vs_sync": s}
             for lat, s in ((5_000, 0.9), (300_000, 0.95))]
    assert break_even(rows, ("sync", "async"), (1, 4)) == {"async/1": None, "async/4": 80_000}
    section = {"probe_factor": 50.0, "think_ns": 4000, "workload": {"guest_mem": 8 << 20, "host_mem": 2 << 20},
               "repeat": 1, "rows": [], "break_even": {"async/1": None, "async/4": 80_000}}
    text = "\n".join(markdown_real_scale(section))
    assert "- async/4 tasks: 80 µs" in text and "- async/1 tasks: never in this range" in text


def test_real_scale_and_scale_check_are_sections_of_the_plan():
    """--real-scale runs only the map (3 probes for D, then latencies x tasks x modes); --only
    scale-check runs every point twice, after probes that set D and the trap delay. The map ends
    with the two arm64 presets in each mode, three times each."""
    plan = build_plan(_values("--real-scale", "--latencies", "20us,1ms", "--tasks", "1,4", "--modes", "sync,async"))
    assert plan.sections == ("real-scale",) and plan.real_latencies_ns == (20_000, 1_000_000)
    assert count_runs(plan) == 3 + 2 * 2 * 2 + 2 * 2 * 3
    check = build_plan(_values("--only", "scale-check", "--modes", "sync,async", "--quick"))
    assert check.sections == ("scale-check",) and count_runs(check) == 2 * 2 * 2 * 2 + 9
    results = {"command": "apf bench", "machine": {"nproc": 2, "cpu_model": "x", "memory_bytes": 1 << 30,
                                                "python": "3.11", "kernel": "6", "loadavg_at_start": [0.0]},
               "real-scale": {**{
        "probe_factor": 50.0, "think_ns": 4000, "workload": {"guest_mem": 8 << 20, "host_mem": 2 << 20},
        "repeat": 1, "rows": [], "break_even": {}}}}
    assert "Break-even map at real-hardware scale" in markdown(results)


def test_the_arm64_presets_at_real_scale_draw_every_swap_in_from_the_rfc_v2_range():
    """Each preset's point: no fixed latency, every swap-in's modelled latency from the bounded
    Pareto over 36 us..56 ms, dilated by the probes' D; the compute task's work is the hog's
    expected wait at the distribution's mean (about 265 us), in real-equivalent units."""
    mean = arm64_mean_latency_ns()
    assert 250_000 < mean < 280_000
    compute = arm64_point(PRESETS["arm64-v4-compute"], "async", 40.0, 150_000)
    argv = compute.argv("r.json", 60)
    assert argv[argv.index("--swap-latency") + 1] == "0ns" and argv[argv.index("--dilation") + 1] == "40"
    assert argv[argv.index("--inject") + 1] == "swap-latency:pareto:alpha=1:scale=36000ns:max=56000000ns"
    miss = 1 - ARM64_WORKLOAD.host_mem / ARM64_WORKLOAD.guest_mem
    assert compute.compute_tasks == 1 and compute.compute_work_ns == round(compute.accesses_per_task * miss * mean)
    memory_only = arm64_point(PRESETS["arm64-v4-memory-only"], "sync", 40.0, 150_000)
    assert memory_only.compute_tasks == 0 and "--compute-tasks" not in memory_only.argv("r.json", 60)
