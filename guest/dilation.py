"""The guest's side of time dilation (shared/dilation.py): measure the emulator's exit cost,
derive D, scale the guest's modelled costs, and read the run on the real-equivalent clock.

Calibration: bursts of BURST minor faults, each the first read of a page set aside for it (the
top CALIBRATION_PAGES of guest memory, which the workload never touches): MMU miss, TRAP, the
host maps the zero page, RESUME, the access completes: a stage-2 fault resolved without I/O, what
`--exit-cost` names on the target. Each round trip is timed; the p50 of each burst is kept, and
the calibration is stable when the last WINDOW burst p50s lie within SPREAD_BOUND of their median
(the measured exit cost). A no-op hypercall is 10-25 % cheaper than such a fault here
(BENCHMARKS.md), so it is not used. Gupta et al. (NSDI 2006) and DieCast (NSDI 2008) dilate by a
fixed, configured factor; measuring it from the emulator's own costs is this emulator's choice.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import Any, Callable

from guest.config import GuestConfig
from protocol.errors import ConfigError
from protocol.messages import PAGE_SIZE
from shared.dilation import DRIFT_BOUND, dilate_ns
from shared.units import format_duration_ns

BURST = 32             # round trips per burst
WINDOW = 3             # stable when the last WINDOW burst p50s agree
MAX_BURSTS = 8         # at most this many bursts (about 40 ms at 150 µs a round trip)
WARMUP = 4             # untimed round trips first (sockets, caches)
SPREAD_BOUND = 0.25    # (max - min) / median of the window's burst p50s
PAGES_PER_CALIBRATION = WARMUP + BURST * MAX_BURSTS
CALIBRATION_PAGES = 2 * PAGES_PER_CALIBRATION      # set aside: one calibration before the run, one after


def workload_pages(cfg: GuestConfig, pages: int) -> tuple[int, int]:
    """(usable, working) of a guest of `pages` pages: the pages the workload may use (all but
    the calibration's with --dilation) and its working set (--working-set, else all usable).
    Raises ConfigError when --dilation leaves too few pages or the working set does not fit:
    `apf run` asks before it starts a daemon, the guest again when it attaches."""
    usable = pages
    if cfg.dilation is not None:
        usable = pages - CALIBRATION_PAGES
        if usable < CALIBRATION_PAGES:
            raise ConfigError(f"--dilation sets aside {CALIBRATION_PAGES} pages of guest memory for its calibration "
                              f"and needs as many again for the workload; give --guest-mem "
                              f"{-(-2 * CALIBRATION_PAGES * PAGE_SIZE // (1 << 20))}MiB or more")
    working = cfg.working_set // PAGE_SIZE if cfg.working_set else usable
    if working > usable:
        raise ConfigError(f"--working-set ({working} pages) is larger than guest memory ({usable} pages"
                          + (", the rest set aside for --dilation" if usable < pages else "") + ")")
    return usable, working


class CalibrationError(ConfigError):
    """The exit-cost calibration could not get a stable p50 (the machine is too busy).
    `burst_p50_ns`: every burst's p50 (ns), for a caller that can decide without a stable figure."""
    burst_p50_ns: tuple[int, ...] = ()


@dataclass(frozen=True)
class Calibration:
    """One calibration: `exit_ns` the measured exit cost (median of the window's burst p50s, ns),
    `burst_p50_ns` every burst's p50 (ns), `spread` of the window, `samples` round trips timed."""
    exit_ns: int
    burst_p50_ns: tuple[int, ...]
    spread: float
    samples: int

    def figures(self) -> dict[str, Any]:
        return {"method": "minor-fault", "exit_ns": self.exit_ns, "burst_p50_ns": list(self.burst_p50_ns),
                "spread": round(self.spread, 4), "samples": self.samples}


def calibrate(round_trip: Callable[[], None], clock: Callable[[], int], burst: int = BURST,
              window: int = WINDOW, max_bursts: int = MAX_BURSTS, bound: float = SPREAD_BOUND,
              warmup: int = WARMUP) -> Calibration:
    """Time `round_trip()` (one no-op exit) with `clock()` (ns) in bursts until the last `window`
    burst p50s agree within `bound`; raises CalibrationError with the spread if they never do."""
    for _ in range(warmup):
        round_trip()
    p50s: list[int] = []
    spread = 0.0
    for _ in range(max_bursts):
        times = []
        for _ in range(burst):
            start = clock()
            round_trip()
            times.append(clock() - start)
        p50s.append(int(statistics.median(times)))
        if len(p50s) < window:
            continue
        last = p50s[-window:]
        mid = statistics.median(last)
        spread = (max(last) - min(last)) / mid if mid > 0 else float("inf")
        if mid > 0 and spread <= bound:
            return Calibration(int(mid), tuple(p50s), spread, burst * len(p50s))
    shown = ", ".join(f"{p / 1000:.0f}" for p in p50s[-window:])
    error = CalibrationError(f"--dilation auto: the exit-cost calibration got no stable p50: the last {window} "
                             f"burst p50s ({shown} us) spread {spread:.0%} (bound {bound:.0%}); the machine "
                             "is too busy: try again, or give --dilation FACTOR")
    error.burst_p50_ns = tuple(p50s)
    raise error


def factor_of(measured_ns: int, target_ns: int) -> float:
    """D = measured / target, to the thousandth. Raises ConfigError when the target is 0 or above
    the measured cost (D < 1: the emulator would have to be faster than the target)."""
    if target_ns <= 0:
        raise ConfigError("--exit-cost must be above 0")
    if target_ns > measured_ns:
        raise ConfigError(f"--exit-cost {format_duration_ns(target_ns)} is above the emulator's own measured exit "
                          f"cost ({measured_ns / 1000:.1f}us): the dilation factor would be "
                          f"{measured_ns / target_ns:.3g}, below 1; give a smaller --exit-cost")
    return round(measured_ns / target_ns, 3)


def dilated_config(cfg: GuestConfig, factor: float, trace_ns_per_insn: float | None) -> GuestConfig:
    """A copy of `cfg` with its real-equivalent costs multiplied by `factor`: --think,
    --compute-work, --timeslice and the trace compute (`trace_ns_per_insn`, the rate the replay
    would use when --ns-per-insn is not given; None without a trace)."""
    rate = cfg.ns_per_insn if cfg.ns_per_insn is not None else trace_ns_per_insn
    return replace(cfg, think_ns=dilate_ns(cfg.think_ns, factor),
                   compute_work_ns=None if cfg.compute_work_ns is None else dilate_ns(cfg.compute_work_ns, factor),
                   timeslice_ns=dilate_ns(cfg.timeslice_ns, factor),
                   ns_per_insn=None if rate is None else rate * factor)


def drift_of(start_ns: int, end_ns: int | None) -> float | None:
    """How far the end-of-run exit cost moved from the start's (a fraction), or None."""
    return None if not end_ns or not start_ns else round(end_ns / start_ns - 1.0, 4)


def reliable(drift: float | None) -> bool:
    """Whether the real-scale figures hold: the exit cost moved by at most DRIFT_BOUND."""
    return drift is not None and abs(drift) <= DRIFT_BOUND


def real_equivalent(workload: dict[str, Any], factor: float) -> dict[str, Any]:
    """The workload phase's figures (report fields) divided by `factor`: `wall_s`, `vcpu_stall_s`,
    `vcpu_idle_s` (s), `fault_latency_us` and `parked_us` ({p50, p99, max, ...}, µs)."""
    def scaled(percentiles: dict[str, Any]) -> dict[str, Any]:
        return {k: (v / factor if k != "count" and isinstance(v, (int, float)) else v)
                for k, v in percentiles.items()}
    return {"wall_s": workload["wall_s"] / factor, "vcpu_stall_s": workload["vcpu_stall_s"] / factor,
            "vcpu_idle_s": workload["vcpu_idle_s"] / factor,
            "fault_latency_us": scaled(workload["fault_latency_us"]), "parked_us": scaled(workload["parked_us"])}
