"""The scheduler and validation options: bad names are refused in one line naming the choices (exit 2),
and a real run reports the scheduler it used."""
import json
import os

import pytest

from shared.dilation import EXIT_COST_PROFILES, parse_exit_cost
from tests.helpers import apf


def _refused_in_one_line(proc, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert all(n in lines[0] for n in needles), lines[0]


@pytest.mark.parametrize("args, needles", [
    (["--sched", "bfs"], ("--sched", "cfs", "eevdf", "rr")),
    (["--exit-cost", "arm65"], ("--exit-cost", "arm64-nvhe", "arm64-vhe", "x86", "user-exit")),
    (["--exit-cost", "0us"], ("--exit-cost", "above 0")),
    (["--cpu-work", "spin"], ("--cpu-work", "burn", "clock")),
])
def test_bad_scheduler_options_are_refused_naming_the_choices(tmp_path, args, needles):
    """`apf run` refuses each before starting a daemon."""
    proc = apf("run", "--guest-mem", "8MiB", "--host-mem", "4MiB", *args, timeout=60)
    _refused_in_one_line(proc, *needles)


def test_validate_refuses_an_unknown_experiment(tmp_path):
    proc = apf("bench", "--out", str(tmp_path / "v"), "--validate", "--experiments", "arm64-v9", timeout=60)
    _refused_in_one_line(proc, "arm64-v9", "arm64-v4-compute", "x86-2010-bm")
    assert not os.path.exists(tmp_path / "v" / "validation.json")


def test_exit_cost_platforms_are_their_cycles_at_their_clock():
    """Each profile is cycles / GHz ns; a duration still works."""
    assert parse_exit_cost("arm64-nvhe") == 2708 and parse_exit_cost("x86") == 684
    assert all(parse_exit_cost(p.name) == round(p.cycles / p.clock_ghz) for p in EXIT_COST_PROFILES.values())
    assert parse_exit_cost("3us") == 3000


@pytest.mark.parametrize("sched", ["cfs", "eevdf", "rr"])
def test_a_run_reports_its_scheduler_and_cfs_preempts_at_page_ready(tmp_path, sched):
    """A memory task beside a compute task on one vCPU, with APF: the report names the class; under
    the fair classes the woken memory task preempts the compute task (wake-up preemptions), under
    rr never. The compute work is time on the guest's clock, so its throughput is at most one vCPU."""
    report = tmp_path / "r.json"
    proc = apf("run", "--guest-mem", "8MiB", "--host-mem", "4MiB", "--tasks", "1", "--compute-tasks", "1",
               "--compute-work", "1s", "--think", "50us", "--accesses", "200", "--swap-latency", "2ms",
               "--prefill", "--mode", "async", "--no-verify", "--sched", sched, "--cpu-work", "clock",
               "--report", str(report), timeout=120)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    s = r["scheduler"]
    assert s["policy"] == sched and s["latency_ns"] == 6_000_000
    assert r["faults"]["async"] > 20
    if sched == "rr":
        assert s["preemptions"]["wakeup"] == 0
    else:
        assert s["preemptions"]["wakeup"] > r["faults"]["async"] // 2
    assert s["run_delay_us"]["memory"]["count"] > 0 and s["tasks"][0]["kind"] == "memory"
    assert 0 < r["throughput"]["compute_per_s"] <= 1.05
