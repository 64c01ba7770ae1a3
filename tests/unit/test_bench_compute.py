"""`apf bench` with compute tasks and per-phase swap counts, in-process: the presets' runs, the
ideal, and old reports (no per-phase counts) still read. No timings are checked."""
import pytest

from apf.bench.analysis import ideal, summarise
from apf.bench.markdown import markdown
from apf.bench.plan import PRESETS, Point, Workload, build_plan
from apf.bench.runner import RunResult
from apf.cli import build_parser

W = Workload(guest_mem=32 << 20, host_mem=16 << 20, vcpus=1, think_ns=200_000, io_depth=8)


def _report(wall: float, whole_run_reads: int, workload: dict | None) -> dict:
    report = {"ok": True, "wall_s": wall, "vcpu_stall_s": 0.1, "vcpu_idle_s": 0.01,
              "fault_latency_us": {"p50": 200.0, "p99": 900.0}, "faults": {"total": 10, "async": 5},
              "swap": {"reads": whole_run_reads, "writes": 9999}, "prefill_s": 1.0,
              "host": {"rss_bytes": 1, "cpu_user_s": 1.0, "cpu_system_s": 0.5},
              "guest": {"rss_bytes": 1, "cpu_user_s": 1.0, "cpu_system_s": 0.5}}
    if workload is not None:
        report["workload_swap"] = workload
    return report


def _argv_value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_compute_preset_runs_one_memory_task_beside_one_compute_task():
    """The compute preset is one hog and one compute task whose CPU work is about the hog's
    synchronous swap-in wait: accesses x (1 - host/guest memory) x latency, 1000 x 1/2 x 2 ms = 1 s;
    the memory-only preset is the hog alone; --quick scales the work with its smaller hog (300
    accesses x 1/2 x 2 ms = 0.3 s)."""
    compute, alone = PRESETS["arm64-v4-compute"], PRESETS["arm64-v4-memory-only"]
    argv = compute.point("async").argv("/r.json", 60)
    assert _argv_value(argv, "--tasks") == "1" and _argv_value(argv, "--compute-tasks") == "1"
    assert _argv_value(argv, "--compute-work") == "1000000000ns"
    argv = alone.point("async").argv("/r.json", 60)
    assert _argv_value(argv, "--tasks") == "1" and "--compute-tasks" not in argv
    quick = {p.name: p for p in build_plan(vars(build_parser().parse_args(["bench", "--out", "/x", "--quick"])),
                                           adaptive_available=lambda: False).presets}
    q = quick["arm64-v4-compute"]
    assert q.accesses_per_task == 300 and q.point("sync").compute_work_ns == 300_000_000


def test_ideal_counts_compute_work_and_write_backs():
    """cpu = (memory accesses x think + compute tasks x compute work) / vCPUs;
    io = (swap-ins + write-backs) x latency / io-depth. Here 1,000 x 200 us + 200 ms = 0.4 s of
    CPU; (500 + 300) x 2 ms / 8 = 0.2 s of I/O."""
    p = Point("async", 2_000_000, 1, 1000, W, compute_tasks=1, compute_work_ns=200_000_000)
    got = ideal(p, major_faults=500, write_backs=300)
    assert got["cpu_limit_s"] == pytest.approx(0.4)
    assert got["io_limit_s"] == pytest.approx(0.2)
    assert got["ideal_s"] == pytest.approx(0.4)


def test_rows_use_the_workload_phase_swap_and_old_reports_fall_back():
    """A row takes the workload phase's swap-ins and write-backs (not the whole run's); a report
    without them (an older guest) gives the whole run's swap-ins and no write-backs. At 10 ms and
    depth 8: (800 + 400) x 10 ms / 8 = 1.5 s; 800 x 10 ms / 8 = 1.0 s."""
    p = Point("sync", 10_000_000, 1, 1000, W)
    new = summarise(p, [RunResult(p, 1, True, None, 1.0, 0.5, _report(4.0, 5000, {"reads": 800, "writes": 400}))])
    assert new["major_faults"] == 800 and new["write_backs"] == 400
    assert new["io_limit_s"] == pytest.approx(1.5)
    old = summarise(p, [RunResult(p, 1, True, None, 1.0, 0.5, _report(4.0, 800, None))])
    assert old["major_faults"] == 800 and old["write_backs"] is None
    assert old["io_limit_s"] == pytest.approx(1.0)


def test_markdown_describes_the_compute_task_and_write_backs():
    """The preset section names the compute task and its work; tables have a write-backs column,
    and an old results.json (no compute fields, no write-backs) still renders."""
    preset = PRESETS["arm64-v4-compute"]
    p = preset.point("sync")
    row = summarise(p, [RunResult(p, 1, True, None, 1.0, 0.5, _report(2.0, 900, {"reads": 700, "writes": 321}))])
    config = {"guest_mem": 32 << 20, "host_mem": 16 << 20, "vcpus": 1, "tasks": 1, "accesses_per_task": 1000,
              "think_ns": 200_000, "swap_latency_ns": 2_000_000}
    results = {"command": "apf bench", "duration_s": 1.0, "complete": True, "plan": {"modes": ["sync"]},
               "machine": {"nproc": 2, "cpu_model": "cpu", "memory_bytes": 1 << 30, "python": "3.11",
                           "kernel": "6", "loadavg_at_start": [0.5, 0, 0]},
               "presets": [{"name": preset.name, "title": preset.title, "published": preset.published,
                            "approximation": preset.approximation, "modes": {"sync": row},
                            "config": config | {"compute_tasks": 1, "compute_work_ns": 200_000_000}}]}
    md = markdown(results)
    assert "1 memory task(s) x 1000 accesses" in md and "1 compute task(s) x 200ms of CPU work" in md
    assert "| swap-ins | write-backs |" in md and "| (baseline) | 700 | 321 |" in md
    results["presets"][0]["config"] = config
    results["presets"][0]["modes"]["sync"] = {k: v for k, v in row.items() if k != "write_backs"}
    md = markdown(results)
    assert "compute task(s)" not in md and "| (baseline) | 700 | – |" in md
