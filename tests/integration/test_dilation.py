"""Time dilation end to end: a real `apf run --dilation auto` measures the exit cost, the host
applies D to its swap latency, and the report reads the run on both clocks; bad input is one
line and exit status 2."""
from __future__ import annotations

import pytest

from tests.helpers import apf, refusal, run_report

SMALL = ["--guest-mem", "8MiB", "--host-mem", "2MiB", "--mode", "async", "--tasks", "2", "--accesses", "100",
         "--prefill", "--no-verify"]


def test_auto_dilation_scales_the_modelled_costs_and_reports_both_clocks(tmp_path, shm_leftovers):
    """D is the measured exit cost (raised by --trap-delay) over --exit-cost; the host's swap
    latency and the guest's think are applied x D; the real-equivalent figures are the measured
    ones / D; the swap-in time is split into real device and modelled time."""
    proc, r = run_report(tmp_path, *SMALL, "--think", "2us", "--swap-latency", "10us", "--dilation", "auto",
                         "--exit-cost", "5us", "--trap-delay", "100us")
    assert proc.returncode == 0, proc.stderr
    d, real = r["dilation"], r["real_equivalent"]
    assert d["mode"] == "auto" and d["target_exit_ns"] == 5_000
    assert d["measured_exit_ns"] >= 100_000 and d["host"]["trap_delay_ns"] == 100_000
    assert d["factor"] == round(d["measured_exit_ns"] / 5_000, 3) > 20
    assert d["host"]["factor"] == d["factor"]
    assert d["host"]["swap_latency_ns"] == round(10_000 * d["factor"])
    assert d["applied"]["think_ns"] == round(2_000 * d["factor"])
    assert d["applied"]["timeslice_ns"] == round(2_000_000 * d["factor"])
    assert r["config"]["think_ns"] == 2_000 and r["config"]["dilation"] == "auto"     # as given
    assert d["end_exit_ns"] > 0 and d["drift"] == pytest.approx(d["end_exit_ns"] / d["measured_exit_ns"] - 1, abs=1e-4)
    assert d["reliable"] == (abs(d["drift"]) <= d["drift_bound"]) == real["reliable"]
    assert real["wall_s"] == pytest.approx(r["wall_s"] / d["factor"])
    assert real["vcpu_stall_s"] == pytest.approx(r["vcpu_stall_s"] / d["factor"])
    assert real["fault_latency_us"]["p50"] == pytest.approx(r["fault_latency_us"]["p50"] / d["factor"])
    swap_in = d["swap_in"]
    assert r["workload_swap"]["reads"] > 0 and swap_in["modelled_s"] > 0 and 0 < swap_in["device_share"] < 1
    # Each swap-in's modelled latency ends early by the measured completion path, at most by half.
    head_start = d["host"]["read_head_start_ns"]
    assert d["host"]["completion_path_ns"] > 0 and 0 < head_start <= d["host"]["swap_latency_ns"] / 2
    assert swap_in["modelled_s"] >= r["workload_swap"]["reads"] * d["host"]["swap_latency_ns"] / 2e9
    assert "real-equivalent clock (/ D" in proc.stdout and "emulator clock, mode async" in proc.stdout


TRAP_DELAY_NS = 3_000_000


def test_trap_delay_raises_the_measured_exit_cost(tmp_path, shm_leftovers):
    """--trap-delay slows every exit on purpose: two calibrations of the same run, without and
    with a 3 ms delay. The delay is spun to its deadline on every trap and hypercall, so the
    exit cost measured with it is at least the delay, and at least half the delay above the one
    measured without it (an exit here costs a few hundred µs at most, even on a loaded machine);
    the report of each says which delay the host applied."""
    measured = {}
    for delay in (0, TRAP_DELAY_NS):
        run = tmp_path / f"delay-{delay}"
        run.mkdir()
        proc, r = run_report(run, *SMALL, "--swap-latency", "10us", "--dilation", "auto", "--exit-cost", "5us",
                             "--trap-delay", f"{delay}ns")
        assert proc.returncode == 0, proc.stderr
        assert r["dilation"]["host"]["trap_delay_ns"] == delay
        measured[delay] = r["dilation"]["measured_exit_ns"]
    assert measured[TRAP_DELAY_NS] >= TRAP_DELAY_NS, measured
    assert measured[TRAP_DELAY_NS] - measured[0] >= TRAP_DELAY_NS / 2, measured


@pytest.mark.parametrize("args, message", [
    (["--dilation", "0", "--swap-latency", "10us"], "argument --dilation: 0: a dilation factor must be above 0"),
    (["--dilation", "auto"], "--dilation needs a modelled --swap-latency above 0"),
    (["--dilation", "auto", "--swap-latency", "10us", "--exit-cost", "0"], "--exit-cost: 0 must be above 0"),
    (["--dilation", "auto", "--swap-latency", "10us", "--guest-mem", "4MiB", "--host-mem", "1MiB"],
     "--dilation sets aside 520 pages of guest memory for its calibration and needs as many again for the "
     "workload; give --guest-mem 5MiB or more"),
    (["--dilation", "auto", "--swap-latency", "10us", "--exit-cost", "50ms"],
     "--exit-cost 50ms is above the emulator's own measured exit cost"),
])
def test_bad_dilation_input_is_one_line_and_exit_2(args, message):
    """A factor of 0, dilation of the real device alone, an exit cost of 0, a guest too small
    for the calibration's pages and an exit cost above the measured one (D < 1) are each one
    error line, with exit status 2."""
    assert message in refusal(apf("run", *SMALL, *args, timeout=60))
