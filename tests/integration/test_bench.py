"""`apf bench` end to end on a tiny sweep, and the micro-benchmarks at tiny sizes: real host and
guest processes, real files. Only the plumbing is checked (rows, fields, files), never timings."""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest

from apf import microbench
from tests.environment import require_native_aio
from tests.helpers import apf

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["--only", "sweep", "--modes", "sync,async", "--latencies", "0,1ms", "--tasks", "1,2", "--accesses", "40",
        "--repeat", "1", "--guest-mem", "2MiB", "--host-mem", "512KiB", "--think", "0", "--point-timeout", "60s"]
ROW_FIELDS = {"mode", "swap_latency_ns", "swap_latency", "tasks", "wall_s", "wall_min_s", "wall_max_s",
              "vcpu_stall_s", "vcpu_idle_s", "fault_latency_us", "speedup", "ideal_s", "efficiency", "host", "guest"}


@pytest.fixture
def private_tmp(monkeypatch):
    """TMPDIR (for this process and its children) is a fresh short directory, so run dirs and
    scratch files the benchmark makes can be checked for leftovers without counting other tests'.
    It must be empty at the end."""
    path = tempfile.mkdtemp(prefix="apf-bt-")
    monkeypatch.setenv("TMPDIR", path)
    monkeypatch.setattr(tempfile, "tempdir", path)
    yield path
    left = os.listdir(path)
    shutil.rmtree(path, ignore_errors=True)
    assert left == [], f"left behind in TMPDIR: {left}"


@pytest.mark.timeout(120)
def test_tiny_sweep_writes_rows_markdown_and_valid_pngs(tmp_path, shm_leftovers, private_tmp):
    """A 2 latencies x 2 task counts x 2 modes sweep gives one row per point with every field,
    a verified run per mode with no corrupt page, results.md, and three loadable PNG plots at 150
    dpi with an SVG of each, which --replot draws again from the saved data without running anything. With --think 0 and no
    compute task the CPU limit is 0 s; at latency 0 the I/O limit is 0 s too, so the ideal and the
    efficiency are exactly 0; at 1 ms the ideal is the I/O limit, above 0 (swap-ins happen)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image

    out = tmp_path / "bench"
    proc = apf("bench", "--out", str(out), "--no-progress", *TINY, timeout=110)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and results["plan"]["sections"] == ["sweep"]
    rows = results["sweep"]["rows"]
    assert {(r["mode"], r["swap_latency_ns"], r["tasks"]) for r in rows} == {
        (m, lat, t) for m in ("sync", "async") for lat in (0, 1_000_000) for t in (1, 2)}
    for r in rows:
        assert ROW_FIELDS <= set(r), ROW_FIELDS - set(r)
        assert r["repeats_ok"] == r["repeats"] == 1 and r["total_accesses"] == 40
        assert r["wall_min_s"] <= r["wall_s"] <= r["wall_max_s"]
        assert set(r["fault_latency_us"]) == {"p50", "p99"}
        assert {"rss_bytes", "cpu_user_s", "cpu_system_s"} <= set(r["host"]) and r["host"]["rss_bytes"] > 0
        assert r["cpu_limit_s"] == 0.0
        if r["swap_latency_ns"] == 0:
            assert r["io_limit_s"] == r["ideal_s"] == r["efficiency"] == 0.0
        else:
            assert r["ideal_s"] == r["io_limit_s"] > 0 and r["efficiency"] > 0
        if r["mode"] == "sync":
            assert r["speedup"] == 1.0
    verified = results["sweep"]["verified"]
    assert [v["mode"] for v in verified] == ["sync", "async"]
    assert all(v["ok"] and v["pages_corrupt"] == 0 and v["pages_verified"] > 0 for v in verified)
    assert all(t["ok"] and t["stall_us_summary"]["count"] > 0 for t in results["sweep"]["traced"])
    md = (out / "results.md").read_text()
    assert "### Speedup of async over sync" in md and "### Every point" in md
    assert sorted(results["plots"]) == ["fault_latency_cdf.png", "speedup.png", "timeline.png"]
    for name in results["plots"]:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC)
        assert matplotlib.image.imread(str(out / name)).ndim == 3
        from PIL import Image
        with Image.open(out / name) as png:
            assert min(png.info["dpi"]) >= 149.9, png.info       # print quality, not 90 dpi
        svg = (out / name).with_suffix(".svg").read_text()
        assert "<svg" in svg and svg.rstrip().endswith("</svg>")
    assert json.loads((out / ".apf-bench.json").read_text()) == {"kind": "only=sweep"}
    assert not (out / "traces").exists()   # traced runs' files are removed unless --keep-traces
    for name in results["plots"]:
        (out / name).unlink()
    redraw = apf("bench", "--out", str(out), "--replot", timeout=60)
    assert redraw.returncode == 0, redraw.stderr
    assert all((out / name).read_bytes().startswith(PNG_MAGIC) for name in results["plots"])
    assert json.loads((out / "results.json").read_text())["sweep"]["rows"] == rows


@pytest.mark.timeout(120)
def test_adaptive_points_are_compared_with_the_better_of_sync_and_async(tmp_path, shm_leftovers, private_tmp):
    """This host offers --policy adaptive, so an adaptive point runs beside sync and async and its
    row says how much slower it is than the better of the two (plumbing only: any sign; the
    formulas are checked with figures worked by hand in tests/unit/test_bench.py)."""
    from apf.bench.plan import host_accepts_adaptive
    assert host_accepts_adaptive()
    out = tmp_path / "bench"
    proc = apf("bench", "--out", str(out), "--no-progress", "--only", "sweep", "--modes", "sync,async,adaptive",
               "--latencies", "1ms", "--tasks", "2", "--accesses", "40", "--repeat", "1", "--guest-mem", "2MiB",
               "--host-mem", "512KiB", "--think", "0", "--point-timeout", "60s", timeout=110)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    rows = {r["mode"]: r for r in results["sweep"]["rows"]}
    assert set(rows) == {"sync", "async", "adaptive"} and results["adaptive"]
    best = min(rows["sync"]["wall_s"], rows["async"]["wall_s"])
    assert rows["adaptive"]["best_other_wall_s"] == best
    assert (rows["adaptive"]["slower_than_best_pct"] > 0) == (rows["adaptive"]["wall_s"] > best)
    # one repeat: the paired figure is that repeat's ratio, the same as the medians'
    assert rows["adaptive"]["walls_by_repeat"] == {"1": rows["adaptive"]["wall_s"]}
    assert rows["adaptive"]["slower_than_best_paired_pct"] == pytest.approx(rows["adaptive"]["slower_than_best_pct"])
    assert rows["adaptive"]["better_mode"] in ("sync", "async")
    assert rows["adaptive"]["slower_than_better_mode_paired_pct"] == pytest.approx(rows["adaptive"]["slower_than_best_pct"])
    md = (out / "results.md").read_text()
    assert "### Adaptive: slower than the better of sync and async" in md and "Paired:" in md
    assert "Paired against the better mode" in md


@pytest.mark.timeout(60)
def test_bench_refuses_an_unknown_section_without_running_anything(tmp_path):
    """A bad --only is a usage error (status 2) naming the valid sections; no output is written."""
    proc = apf("bench", "--out", str(tmp_path / "x"), "--only", "sweep,bogus", timeout=50)
    assert proc.returncode == 2
    assert "unknown section(s) bogus" in proc.stderr and "sweep, presets, micro" in proc.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.timeout(120)
def test_micro_benchmarks_report_each_goal_with_its_measured_limit(shm_leftovers, private_tmp):
    """At tiny sizes each micro-benchmark returns its measurement, the limit measured beside it,
    the ratio and a met/missed status, and leaves no temporary directory behind."""
    require_native_aio()                   # the swap-in bench's main engine: O_DIRECT on TMPDIR
    sizes = microbench.MicroSizes(round_trips=200, trap_trials=1, minor_faults=100, swap_reads=400, swap_file_mib=4,
                                  swap_trials=1, scale_big=256 << 20, scale_small=16 << 20,
                                  scale_host_mem=16 << 20, scale_trials=1, replay_accesses=300, replay_trials=1)
    result = microbench.run_all(sizes)
    trap, swap, scale = result["trap"], result["swap_in"], result["scale"]
    assert "error" not in trap and "error" not in swap and "error" not in scale, result
    assert trap["minor_faults"] == 100 and trap["host_minor_faults"] == 100
    assert trap["zmq_round_trip_p50_us"] > 0 and trap["pipe_round_trip_p50_us"] > 0
    assert trap["met"] is (trap["ratio_vs_zmq"] <= microbench.TRAP_GOAL_RATIO)
    assert trap["status"] == ("met" if trap["met"] else "missed")
    assert trap["ratio_vs_zmq"] == pytest.approx(trap["minor_fault_p50_us"] / trap["zmq_round_trip_p50_us"])
    main = swap[f"direct_d{sizes.io_depth}"]
    assert main["raw_pages_per_s"] > 0 and main["host_pages_per_s"] > 0
    assert swap["fraction_of_raw"] == main["fraction_of_raw"]
    assert swap["met"] is (main["fraction_of_raw"] >= microbench.SWAP_IN_GOAL_FRACTION)
    assert swap["status"] == ("met" if swap["met"] else "missed")
    assert main["io_engine"] == "aio" and main["threads_pages_per_s"] > 0   # auto takes native AIO for O_DIRECT
    assert swap[f"buffered_d{sizes.io_depth}"]["io_engine"] == "threads"
    assert set(scale["goals"]) == {"latency", "metadata", "startup", "rss"}
    assert scale["big"]["startup_s"] > 0 and scale["big"]["host_rss_ready"] > 0
    limits = {"latency": microbench.SCALE_LATENCY_GOAL_RATIO, "metadata": microbench.SCALE_METADATA_GOAL_BYTES,
              "startup": microbench.SCALE_STARTUP_GOAL_S, "rss": microbench.SCALE_RSS_GOAL_BYTES}
    for name, goal in scale["goals"].items():
        assert goal["met"] is (goal["value"] <= limits[name]), (name, goal)
        assert goal["status"] == ("met" if goal["met"] else "missed"), (name, goal)
    assert scale["goals"]["startup"]["value"] == scale["big"]["startup_s"]
    assert scale["met"] is all(g["met"] for g in scale["goals"].values())
    replay = result["replay"]
    assert "error" not in replay, replay
    assert set(replay["synthetic_ns_per_access"]) == set(microbench.REPLAY_SYNTHETIC)
    assert replay["faults"] == 0 and replay["working_set_pages"] >= 1     # every page resident: nothing but access cost
    assert replay["ratio"] == pytest.approx(replay["trace_ns_per_access"] / replay["synthetic_mean_ns_per_access"])
    assert replay["met"] is (replay["ratio"] <= microbench.REPLAY_GOAL_RATIO)


@pytest.mark.parametrize("args, says", [
    (["--host-mem", "4mib"], "argument --host-mem: '4mib' is not a size: sizes take B, KiB, MiB, GiB, TiB"),
    (["--think", "2"], "argument --think: '2' has no unit: give one of ns, us, ms, s"),
    (["--repeat", "0"], "argument --repeat: 0 must be at least 1"),
    (["--point-timeout", "0s"], "argument --point-timeout: 0s must be above 0"),
])
def test_bad_bench_options_are_refused_in_apf_runs_words(args, says, tmp_path):
    """`apf bench` refuses what `apf run` refuses, in the same words (not argparse's "invalid
    parse_size value"), before any run: exit 2, one line, nothing written."""
    out = tmp_path / "out"
    proc = apf("bench", "--out", str(out), *args, timeout=60)
    assert proc.returncode == 2 and says in proc.stderr and "invalid" not in proc.stderr, proc.stderr
    assert not out.exists()
