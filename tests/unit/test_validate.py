"""`apf bench --validate` plumbing, in-process: the experiments' command lines, the rows computed from
reports (medians, paired spread, error against the published range, runs kept) and the Markdown.
No timing is checked (they depend on the machine)."""
from __future__ import annotations

import pytest

from apf.bench.runner import RunResult
from apf.bench.validate import (EXPERIMENTS, V4_COMPUTE_PER_APF_NS, V4_HOG_CPU_PER_APF_NS, V4_SWAP_IN_NS,
                                _row, _summary, cells, markdown)


def _run(exp, mode: str, value: float, reliable: bool = True, ok: bool = True) -> RunResult:
    report = {"real_equivalent": {"wall_s": value}, "throughput": {"compute_per_s": value},
              "dilation": {"factor": 50.0, "reliable": reliable}, "faults": {"async": 140 if mode != "sync" else 0}}
    return RunResult(exp.point(mode, "cfs"), 1, ok, None if ok else "failed", 1.0, 0.5, report if ok else {})


def test_v4_derivation_adds_up_to_the_published_run_times():
    """The hog's CPU, the swap-in time and the compute CPU per APF, times 55,000 APFs, give back
    the three published v4 run times within 1 %."""
    apfs = 55_000
    hog, swap, comp = (x * apfs / 1e9 for x in (V4_HOG_CPU_PER_APF_NS, V4_SWAP_IN_NS, V4_COMPUTE_PER_APF_NS))
    assert hog + swap == pytest.approx(14.592, rel=0.01)
    assert hog + swap + comp == pytest.approx(27.880, rel=0.01)
    assert hog + comp == pytest.approx(16.539, rel=0.01)


def test_every_experiment_runs_at_real_scale_on_its_platform_with_its_scheduler():
    """Each point is an `apf run --dilation auto --exit-cost PLATFORM --sched S`, CPU work on the
    guest's clock; the 2010 x86 run has 4 vCPUs and runs for a fixed time."""
    for exp in EXPERIMENTS.values():
        for sched, mode in cells(exp):
            argv = exp.point(mode, sched).argv("/tmp/r.json", 60)
            joined = " ".join(argv)
            assert f"--exit-cost {exp.platform}" in joined and f"--sched {sched}" in joined
            assert "--dilation auto" in joined and "--cpu-work clock" in joined
    x86 = EXPERIMENTS["x86-2010-bm"].point("async", "cfs").argv("/tmp/r.json", 60)
    assert x86[x86.index("--vcpus") + 1] == "4" and "--duration" in x86 and "--compute-work" not in x86
    assert EXPERIMENTS["arm64-v4-compute"].platform == "arm64-nvhe" and EXPERIMENTS["x86-2010-bm"].platform == "x86"
    assert {s for s, _ in cells(EXPERIMENTS["arm64-v4-compute"])} == {"cfs", "eevdf", "rr"}
    fixed = EXPERIMENTS["arm64-v4-compute"].point("async", "cfs", factor=52.5).argv("/tmp/r.json", 60)
    assert fixed[fixed.index("--dilation") + 1] == "52.5"      # the probes' D, shared by every run


def test_a_row_takes_medians_pairs_the_spread_and_counts_kept_runs():
    """Run time -40 % against sync in the median; the spread pairs repeat i of sync with repeat i of
    async; error against the published range's middle (-41.25 %); drifted runs are counted, not used."""
    exp = EXPERIMENTS["arm64-v4-compute"]
    sync = _summary([_run(exp, "sync", w) for w in (10.0, 12.0, 11.0)] + [_run(exp, "sync", 99.0, reliable=False)],
                    exp.metric)
    mine = _summary([_run(exp, "async", w) for w in (6.0, 7.5, 6.6)], exp.metric)
    row = _row(exp, "cfs", "async", sync, mine)
    assert row["measured"] == pytest.approx(-40.0)
    assert row["spread"] == pytest.approx([-40.0, -37.5])
    assert row["error_pct"] == pytest.approx((-40.0 + 41.25) / 41.25 * 100)
    assert row["runs"] == {"sync": [3, 4], "async": [3, 3]} and row["apfs"] == 140
    md = "\n".join(markdown([row], 3, 60.0))
    assert "| arm64-v4-compute |" in md and "-40.0 %" in md and "3/4, 3/3" in md


def test_a_ratio_row_and_an_unpublished_figure():
    """x86-2010-bm reports the work count's ratio; with nothing published its error is empty."""
    exp = EXPERIMENTS["x86-2010-bm"]
    row = _row(exp, "cfs", "async", _summary([_run(exp, "sync", 1.0)], exp.metric),
               _summary([_run(exp, "async", 1.7)], exp.metric))
    assert row["measured"] == pytest.approx(1.7) and row["published"] is None and row["error_pct"] is None
    assert "1.70x" in "\n".join(markdown([row], 1, 1.0)) and "not published" in "\n".join(markdown([row], 1, 1.0))


def test_a_cell_without_a_usable_run_has_no_figure():
    exp = EXPERIMENTS["arm64-v2-compute"]
    row = _row(exp, "cfs", "async", _summary([_run(exp, "sync", 0, ok=False)], exp.metric),
               _summary([_run(exp, "async", 0.9)], exp.metric))
    assert row["measured"] is None and row["errors"] == ["failed"]
