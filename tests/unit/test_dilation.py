"""Time dilation's pure parts: the exit-cost calibration on a fake clock, the factor, the scaling
of every dilated cost, the real-equivalent figures and the refusals of bad input."""
from __future__ import annotations

import pytest

from guest.config import GuestConfig
from guest.dilation import (CalibrationError, calibrate, dilated_config, drift_of, factor_of, real_equivalent,
                            reliable)
from host.config import HostConfig
from protocol.errors import ConfigError
from shared.chaos import Chaos
from shared.dilation import DRIFT_BOUND, decode_factor, encode_factor, parse_dilation


class FakeClock:
    """A clock (ns) that only a scripted round trip moves: each call of `round_trip` advances it
    by the next cost of `costs` (cycled)."""

    def __init__(self, costs: list[int]):
        self.now = 0
        self.costs = costs
        self.calls = 0

    def __call__(self) -> int:
        return self.now

    def round_trip(self) -> None:
        self.now += self.costs[self.calls % len(self.costs)]
        self.calls += 1


def test_calibration_is_the_median_of_the_burst_p50s():
    """Round trips of 100, 150 and 200 µs (p50 150 µs in every burst) calibrate to 150 µs after
    the warm-up and the first window of bursts, no more."""
    clock = FakeClock([100_000, 150_000, 200_000])
    cal = calibrate(clock.round_trip, clock, burst=9, window=3, warmup=2)
    assert cal.exit_ns == 150_000
    assert cal.burst_p50_ns == (150_000, 150_000, 150_000)
    assert cal.spread == 0.0 and cal.samples == 27
    assert clock.calls == 2 + 27


def test_calibration_waits_for_bursts_that_agree():
    """A slow first burst (a cold start) is outvoted: the calibration goes on until the last three
    burst p50s agree within the bound."""
    clock = FakeClock([400_000] * 4 + [150_000] * 12)   # bursts of 4: 400, 150, 150, 150 µs
    cal = calibrate(clock.round_trip, clock, burst=4, window=3, warmup=0, bound=0.25)
    assert cal.burst_p50_ns == (400_000, 150_000, 150_000, 150_000)
    assert cal.exit_ns == 150_000


def test_an_unstable_calibration_is_refused_with_its_spread():
    """Burst p50s of 100, 200 and 300 µs never agree: the error names them and the spread."""
    clock = FakeClock([100_000] * 3 + [200_000] * 3 + [300_000] * 3)
    with pytest.raises(CalibrationError, match=r"^--dilation auto: the exit-cost calibration got no stable p50: "
                       r"the last 3 burst p50s \(100, 200, 300 us\) spread 100% \(bound 25%\); the machine is "
                       r"too busy: try again, or give --dilation FACTOR$"):
        calibrate(clock.round_trip, clock, burst=3, window=3, max_bursts=3, warmup=0)


def test_factor_is_measured_over_target_and_never_below_one():
    """D = measured / target to the thousandth; a target above the measured cost (D < 1) or of 0
    is refused."""
    assert factor_of(150_000, 3_000) == 50.0
    assert factor_of(160_001, 3_000) == 53.334
    assert factor_of(3_000, 3_000) == 1.0
    with pytest.raises(ConfigError, match=r"^--exit-cost 200us is above the emulator's own measured exit cost "
                       r"\(150\.0us\): the dilation factor would be 0\.75, below 1; give a smaller --exit-cost$"):
        factor_of(150_000, 200_000)
    with pytest.raises(ConfigError, match=r"^--exit-cost must be above 0$"):
        factor_of(150_000, 0)


def test_every_guest_cost_is_scaled_by_the_factor():
    """--think, --compute-work, --timeslice and --ns-per-insn are multiplied by D; the rest of
    the configuration is left as given."""
    cfg = GuestConfig(run_dir="/tmp", think_ns=4_000, compute_work_ns=1_000_000, timeslice_ns=2_000_000,
                      ns_per_insn=0.5, accesses=10).validate()
    d = dilated_config(cfg, 50.0, None)
    assert (d.think_ns, d.compute_work_ns, d.timeslice_ns, d.ns_per_insn) == (200_000, 50_000_000, 100_000_000, 25.0)
    assert (d.accesses, d.reply_timeout_ns, d.stuck_timeout_ns) == (cfg.accesses, cfg.reply_timeout_ns,
                                                                    cfg.stuck_timeout_ns)
    assert cfg.think_ns == 4_000      # a copy: the given configuration stays as given


def test_default_compute_work_and_trace_rate_are_scaled_too():
    """Without --compute-work a compute task does accesses x think, scaled through think; without
    --ns-per-insn the trace's own rate is the one scaled."""
    cfg = GuestConfig(run_dir="/tmp", think_ns=1_000, accesses=100, compute_tasks=1).validate()
    d = dilated_config(cfg, 10.0, 0.4)
    assert d.compute_work_ns is None and d.compute_ns == 100 * 10_000
    assert d.ns_per_insn == pytest.approx(4.0)


def test_injected_latencies_are_scaled_from_the_values_given():
    """Every delay= and scale= of the injection rules is multiplied by D; setting D again scales
    the values given, not the scaled ones."""
    chaos = Chaos.from_specs(["swap-latency:spike:delay=10us", "swap-latency:pareto:scale=2us",
                              "page-ready:delay:delay=1ms", "swap-read:eio:n=3"], "host")
    chaos.dilate(50.0)
    assert [(r.delay_ns, r.scale_ns) for r in chaos.rules] == [(500_000, 0), (0, 100_000), (50_000_000, 0), (0, 0)]
    chaos.dilate(2.0)
    assert [(r.delay_ns, r.scale_ns) for r in chaos.rules] == [(20_000, 0), (0, 4_000), (2_000_000, 0), (0, 0)]
    guest = Chaos.from_specs(["ack:late:delay=5us", "cpu-hotplug:every=9:delay=1ms"], "guest")
    guest.dilate(3.0)
    assert [r.delay_ns for r in guest.rules] == [15_000, 3_000_000]


def test_real_equivalent_figures_are_the_measured_ones_over_the_factor():
    """Wall, stall, idle and the latency percentiles are divided by D; counts are not."""
    workload = {"wall_s": 5.0, "vcpu_stall_s": 1.0, "vcpu_idle_s": 0.5,
                "fault_latency_us": {"p50": 150.0, "p99": 300.0, "max": 600.0, "mean": 160.0, "count": 7},
                "parked_us": {"p50": 1000.0, "p99": 2000.0, "max": 3000.0, "mean": 1200.0, "count": 3}}
    r = real_equivalent(workload, 50.0)
    assert (r["wall_s"], r["vcpu_stall_s"], r["vcpu_idle_s"]) == (0.1, 0.02, 0.01)
    assert r["fault_latency_us"] == {"p50": 3.0, "p99": 6.0, "max": 12.0, "mean": 3.2, "count": 7}
    assert r["parked_us"]["p50"] == 20.0 and r["parked_us"]["count"] == 3


def test_drift_beyond_the_bound_makes_the_figures_unreliable():
    """The end-of-run exit cost against the start's: within DRIFT_BOUND holds; beyond, or not
    measured, does not."""
    assert drift_of(100_000, 110_000) == pytest.approx(0.1)
    assert reliable(drift_of(100_000, 110_000))
    assert not reliable(drift_of(100_000, round(100_000 * (1 + DRIFT_BOUND) + 1_000)))
    assert not reliable(drift_of(100_000, 60_000))
    assert drift_of(100_000, None) is None and not reliable(None)


def test_factor_round_trips_through_the_hypercall_word():
    """EMU_DILATION carries D in thousandths."""
    assert encode_factor(55.642) == 55_642 and decode_factor(55_642) == 55.642


@pytest.mark.parametrize("text, message", [
    ("0", r"^0: a dilation factor must be above 0 \(and at least 1\)$"),
    ("-3", r"^-3: a dilation factor must be above 0 \(and at least 1\)$"),
    ("0.5", r"^0\.5: a dilation factor below 1 would make"),
    ("fast", r"^'fast' is neither 'auto' nor a number$"),
])
def test_bad_dilation_factors_are_refused(text, message):
    """A factor of 0 or less, below 1, or not a number is refused, saying why."""
    with pytest.raises(ValueError, match=message):
        parse_dilation(text)
    assert parse_dilation("auto") == "auto" and parse_dilation("40") == 40.0


def test_dilation_without_modelled_latency_is_refused():
    """The real device alone cannot be dilated: the host refuses --dilation with --swap-latency 0,
    unless a swap-latency rule delays every I/O (one that fires on some only is not enough)."""
    with pytest.raises(ConfigError, match=r"^--dilation needs a modelled --swap-latency above 0 \(or a "
                       r"swap-latency --inject rule on every I/O\): the real device's own time cannot be "
                       r"dilated, and would be read as D times shorter than it is$"):
        HostConfig(run_dir="/tmp", guest_mem=1 << 20, host_mem=1 << 19, dilation="auto").validate()
    with pytest.raises(ConfigError, match="^--dilation needs a modelled"):
        HostConfig(run_dir="/tmp", guest_mem=1 << 20, host_mem=1 << 19, dilation="auto",
                   inject=["swap-latency:pareto:scale=36us:p=0.5"]).validate()
    HostConfig(run_dir="/tmp", guest_mem=1 << 20, host_mem=1 << 19, dilation="auto", swap_latency_ns=1).validate()
    HostConfig(run_dir="/tmp", guest_mem=1 << 20, host_mem=1 << 19, dilation="auto",
               inject=["swap-latency:pareto:alpha=1:scale=36us:max=56ms"]).validate()


def test_an_exit_cost_of_zero_is_refused():
    """No real platform resolves a fault in no time."""
    with pytest.raises(ConfigError, match=r"^--exit-cost must be above 0"):
        GuestConfig(run_dir="/tmp", dilation="auto", exit_cost_ns=0).validate()


def test_compare_reads_two_dilated_reports_on_both_clocks():
    """Two dilated reports compare on the emulator clock and on the real-equivalent one (each
    report's wall over its own D)."""
    from apf.compare import compare
    base = {"mode": "sync", "wall_s": 2.0, "vcpu_stall_s": 1.0, "real_equivalent": {"wall_s": 0.04},
            "dilation": {"factor": 50.0}}
    other = {"mode": "async", "wall_s": 1.5, "vcpu_stall_s": 0.1, "real_equivalent": {"wall_s": 0.02},
             "dilation": {"factor": 75.0}}
    assert compare(base, other).endswith("; real-equivalent wall 0.50 (40.000ms at D 50 -> 20.000ms at D 75)")
