"""What `apf bench` runs: the sweep's points, the published scenarios (presets) and the plan that
the command-line options make of them.

A point is one `apf run` configuration (mode x swap latency x runnable tasks, on a fixed
workload); a sweep is the grid of points, the same total work at every task count; a preset is a
published scenario run in every mode. Nothing here runs a benchmark: the only process started is
`apf host --help`, to ask whether the host offers the adaptive policy.
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

from shared.units import format_duration_ns, format_size
from protocol.errors import BenchError

MODES = ("sync", "async")
ADAPTIVE = "adaptive"
SWEEP_LATENCIES_NS = (0, 100_000, 500_000, 2_000_000, 10_000_000)
SWEEP_TASKS = (1, 2, 4, 8, 16)
DEFAULT_REPEAT = 3
FOCUS_LATENCY_NS = 2_000_000          # the point the verified, traced and timeline runs use
FOCUS_TASKS = 8
CDF_LATENCIES_NS = (100_000, 2_000_000)
POINT_TIMEOUT_S = 300.0               # default bound on one run (--point-timeout)
TRACES_SHIPPED = ("xz-9.apfmt", "sqlite-join.apfmt", "sort-external.apfmt", "sort-long.apfmt",
                  "sqlite-blobs.apfmt")   # the traces section (traces.py)
TRACES_LATENCIES_NS = (500_000, 5_000_000)
TRACES_TASKS = (1, 4)
SECTIONS = ("sweep", "presets", "micro", "traces", "haltpoll", "scale-check", "real-scale")
# The real-scale sections (apf/bench/realscale.py): real-equivalent swap latencies (far memory,
# NVMe, network block device) x runnable tasks; the scale-check's points and repeats.
REAL_LATENCIES_NS = (5_000, 20_000, 80_000, 300_000, 1_000_000)
REAL_TASKS = (1, 2, 4, 8)
SCALE_LATENCIES_NS = (20_000, 300_000)
SCALE_TASKS = (1, 4)
SCALE_REPEAT = 3
ARM64_REAL_REPEAT = 3                 # the arm64 presets at real scale: at least this many repeats
DELAY_PROBES = 9                      # scale-check probe runs: 3 at D, up to 6 setting the trap delay that doubles it
HALTPOLL_LATENCIES_NS = (0, 100_000, 500_000)   # the haltpoll section (haltpoll.py): where async loses today
HALTPOLL_WINDOWS_NS = (200_000, 1_000_000)       # KVM's x86 default, and one that covers this emulator's page-ready
QUICK_HALTPOLL_LATENCIES_NS = (0, 100_000)
MICRO_RUNS = 5                        # trap, swap_in, scale, sched, replay: one progress step each


@dataclass(frozen=True)
class Workload:
    """Everything about a run except mode, latency and tasks: fixed across a sweep."""
    guest_mem: int = 32 << 20
    host_mem: int = 8 << 20
    vcpus: int = 1
    think_ns: int = 200_000
    io_depth: int = 8
    seed: int = 1
    pattern: str = "random"


@dataclass(frozen=True)
class Point:
    """One `apf run` configuration: a mode at a swap latency (ns) with `tasks` memory tasks of
    `accesses_per_task` accesses each, on `workload`."""
    mode: str                 # sync | async | adaptive
    latency_ns: int
    tasks: int
    accesses_per_task: int
    workload: Workload
    verify: bool = False
    compute_tasks: int = 0        # beside `tasks` memory tasks; each does compute_work_ns of CPU work
    compute_work_ns: int = 0
    extra_args: tuple[str, ...] = ()   # more `apf run` options (e.g. --dilation auto)
    halt_poll_ns: int = 0         # --halt-poll of the guest (0: off)

    @property
    def total_accesses(self) -> int:
        return self.tasks * self.accesses_per_task

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.mode, self.latency_ns, self.tasks)

    def name(self, repeat: int | str) -> str:
        """The file name stem of one run's report: mode-latency-tTASKS-REPEAT, e.g. async-2ms-t8-1
        (with halt polling, mode-hpWINDOW-latency-...: async-hp200us-100us-t1-1)."""
        poll = f"-hp{format_duration_ns(self.halt_poll_ns)}" if self.halt_poll_ns else ""
        return f"{self.mode}{poll}-{short_latency_label(self.latency_ns)}-t{self.tasks}-{repeat}"

    def argv(self, report: str, timeout_s: float, trace: str | None = None) -> list[str]:
        """The `apf run` command line of this point: its report written to `report`, bounded by
        `timeout_s` seconds, traced to `trace` when given."""
        w = self.workload
        argv = [sys.executable, "-m", "apf", "run",
                "--guest-mem", format_size(w.guest_mem), "--host-mem", format_size(w.host_mem),
                "--vcpus", str(w.vcpus), "--tasks", str(self.tasks), "--accesses", str(self.accesses_per_task),
                "--think", f"{w.think_ns}ns", "--swap-latency", f"{self.latency_ns}ns",
                "--io-depth", str(w.io_depth), "--workload", w.pattern, "--seed", str(w.seed), "--prefill",
                "--mode", "sync" if self.mode == "sync" else "async",
                "--report", report, "--quiet", "--timeout", f"{timeout_s:g}s"]
        if self.compute_tasks:
            argv += ["--compute-tasks", str(self.compute_tasks)]
            if self.compute_work_ns:        # none: --duration runs the compute tasks until it ends
                argv += ["--compute-work", f"{self.compute_work_ns}ns"]
        if self.mode == ADAPTIVE:
            argv += ["--policy", "adaptive"]
        if self.halt_poll_ns:
            argv += ["--halt-poll", f"{self.halt_poll_ns}ns"]
        if not self.verify:
            argv.append("--no-verify")
        if trace:
            argv += ["--trace", trace]
        return argv + list(self.extra_args)


@dataclass(frozen=True)
class Sweep:
    """The grid of points: every mode x latency (ns) x task count, `total_accesses` split over the
    tasks of each point, each point run `repeat` times."""
    latencies_ns: tuple[int, ...] = SWEEP_LATENCIES_NS
    tasks: tuple[int, ...] = SWEEP_TASKS
    total_accesses: int = 2000
    repeat: int = DEFAULT_REPEAT
    workload: Workload = Workload()
    verify_latency_ns: int | None = None    # latency of the verified runs (default: the focus one)

    def points(self, modes: Iterable[str]) -> list[Point]:
        """The points in run order: latency, then tasks, then mode (the modes of a point back to back)."""
        return [Point(m, lat, t, max(1, self.total_accesses // t), self.workload)
                for lat in self.latencies_ns for t in self.tasks for m in modes]

    @property
    def focus(self) -> tuple[int, int]:
        """(latency, tasks) of the verified, traced and timeline runs: 2 ms x 8 tasks when swept."""
        lat = FOCUS_LATENCY_NS if FOCUS_LATENCY_NS in self.latencies_ns else max(self.latencies_ns)
        tasks = FOCUS_TASKS if FOCUS_TASKS in self.tasks else max(self.tasks)
        return lat, tasks

    @property
    def verify_point(self) -> tuple[int, int]:
        """(latency, tasks) of the verified runs: the focus, or verify_latency_ns when it was swept."""
        lat = self.focus[0] if self.verify_latency_ns is None else self.verify_latency_ns
        return (lat if lat in self.latencies_ns else self.focus[0]), self.focus[1]

    @property
    def cdf_latencies(self) -> tuple[int, ...]:
        """The latencies of the traced runs (per-fault latency CDF): those of CDF_LATENCIES_NS swept, else the focus."""
        chosen = tuple(lat for lat in CDF_LATENCIES_NS if lat in self.latencies_ns)
        return chosen or (self.focus[0],)


@dataclass(frozen=True)
class Preset:
    """A published scenario, approximated: `tasks` memory tasks (and `compute_tasks` compute-only
    ones) at one swap latency (ns), run in every mode of the plan."""
    name: str
    title: str
    published: str
    published_change_pct: tuple[float, float]   # the range the arm64 series reported
    tasks: int                                   # memory tasks
    accesses_per_task: int
    latency_ns: int
    workload: Workload
    approximation: str
    compute_tasks: int = 0

    @property
    def compute_work_ns(self) -> int:
        """A compute task's CPU work: about what the hog waits for swap-ins under synchronous faults
        (a random access finds its page swapped out with probability 1 - host/guest memory), so
        that there is as much to overlap as there is waiting to overlap it with."""
        w = self.workload
        return round(self.accesses_per_task * (1 - w.host_mem / w.guest_mem) * self.latency_ns)

    def point(self, mode: str) -> Point:
        """This scenario as a point in `mode`."""
        return Point(mode, self.latency_ns, self.tasks, self.accesses_per_task, self.workload,
                     compute_tasks=self.compute_tasks,
                     compute_work_ns=self.compute_work_ns if self.compute_tasks else 0)


_PRESET_WORKLOAD = Workload(guest_mem=32 << 20, host_mem=16 << 20, vcpus=1, think_ns=200_000)
_APPROX_COMPUTE = (
    "The memory hog is one task alternating --think (real CPU work) with one memory access over guest "
    "memory twice the host limit, as published; the CPU-bound thread is one compute-only task "
    "(--compute-tasks 1) that never touches guest memory. Its work is fixed: about as much CPU time as "
    "the hog waits for swap-ins under synchronous faults (accesses x (1 - host/guest memory) x swap "
    "latency). Run time is the workload phase (prefill not timed): until both tasks are done.")
_APPROX_MEMORY = (
    "The memory hog is one task alternating --think (real CPU work) with one memory access over guest "
    "memory twice the host limit; with nothing else runnable, an asynchronous fault can only idle the "
    "vCPU. Run time is the workload phase (prefill not timed).")
PRESETS = {
    p.name: p for p in (
        Preset("arm64-v4-compute", "memory hog beside a CPU-bound task, 1 vCPU",
               "arm64 APF v4 (1 vCPU, 1 GB guest, 512 MB limit): run time 27.9 s -> 16.6 s (-40 %)",
               (-40.5, -40.5), tasks=1, compute_tasks=1, accesses_per_task=1000, latency_ns=2_000_000,
               workload=_PRESET_WORKLOAD, approximation=_APPROX_COMPUTE),
        Preset("arm64-v4-memory-only", "memory hog alone, 1 vCPU",
               "arm64 APF v4 (1 vCPU, 1 GB guest, 512 MB limit): +2.8 to +3.5 % slower",
               (2.8, 3.5), tasks=1, accesses_per_task=1000, latency_ns=2_000_000,
               workload=_PRESET_WORKLOAD, approximation=_APPROX_MEMORY),
    )
}


@dataclass(frozen=True)
class Plan:
    """Everything one `apf bench` will run: the sections (sweep, presets, micro), the modes compared,
    the sweep, the presets and how often each runs, and the bound on one run (s)."""
    sections: tuple[str, ...]
    modes: tuple[str, ...]
    sweep: Sweep
    presets: tuple[Preset, ...]
    preset_repeat: int
    micro_quick: bool
    point_timeout_s: float
    keep_traces: bool = False
    quick: bool = False
    real_latencies_ns: tuple[int, ...] = ()    # real-scale: --latencies (default realscale.REAL_LATENCIES_NS)
    real_tasks: tuple[int, ...] = ()           # real-scale: --tasks (default realscale.REAL_TASKS)
    real_repeat: int = 1


QUICK_WORKLOAD = Workload(guest_mem=8 << 20, host_mem=2 << 20)
QUICK_SWEEP = Sweep(latencies_ns=(0, 2_000_000), tasks=(1, 8), total_accesses=600, repeat=1,
                    workload=QUICK_WORKLOAD, verify_latency_ns=0)   # reading back at 2 ms would take most of the budget
QUICK_PRESET_WORKLOAD = Workload(guest_mem=8 << 20, host_mem=4 << 20)
QUICK_PRESET_ACCESSES = 300


def number(value: Any, fmt: str = ".3f", none: str = "–") -> str:
    """A figure for a table: `value` formatted with `fmt`, or `none` where it is missing."""
    return none if value is None else format(value, fmt)


def latency_label(ns: int) -> str:
    """A swap latency (ns) for tables: "0 (device only)" or a duration such as "2ms"."""
    return "0 (device only)" if ns == 0 else format_duration_ns(ns)


def short_latency_label(ns: int) -> str:
    """A swap latency (ns) for file names and progress lines: "0" or a duration such as "2ms"."""
    return latency_label(ns).split()[0]



def host_accepts_adaptive() -> bool:
    """Whether this host has the adaptive policy: `apf host --help` mentions it."""
    try:
        proc = subprocess.run([sys.executable, "-m", "apf", "host", "--help"], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and ADAPTIVE in proc.stdout



def build_plan(values: dict[str, Any], adaptive_available: Callable[[], bool] = host_accepts_adaptive) -> Plan:
    """The plan of `apf bench` from its parsed options (`vars()` of the namespace the options of
    apf/bench/cli.py parse into); `adaptive_available` says whether the host has the adaptive
    policy, asked only when the modes depend on it.

    Raises BenchError for options that cannot run together: an unknown section or mode, modes
    without sync, adaptive on a host without it, --host-mem above --guest-mem."""
    quick = bool(values.get("quick"))
    sections = _sections(values, quick)
    modes = _modes(values, sections, adaptive_available)
    sweep = _sweep(values, QUICK_SWEEP if quick else Sweep())
    preset_repeat = values.get("repeat") or (1 if quick else DEFAULT_REPEAT)
    return Plan(sections=sections, modes=modes, sweep=sweep, presets=_presets(values, quick),
                preset_repeat=preset_repeat, micro_quick=quick, point_timeout_s=values["point_timeout"] / 1e9,
                keep_traces=bool(values.get("keep_traces")), quick=quick,
                real_latencies_ns=tuple(values.get("latencies") or ()), real_tasks=tuple(values.get("tasks") or ()),
                real_repeat=values.get("repeat") or 1)


def _sections(values: dict[str, Any], quick: bool) -> tuple[str, ...]:
    """--only, else --micro, else --preset, else the default: sweep, presets and micro, and traces
    unless --quick (its runs prefill, and some verify, whole footprints: 8 minutes on 2 cores)."""
    if values.get("only"):
        sections = tuple(values["only"])
        unknown = set(sections) - set(SECTIONS)
        if unknown:
            raise BenchError(f"--only: unknown section(s) {', '.join(sorted(unknown))}; "
                             f"choose from {', '.join(SECTIONS)}")
        return sections
    if values.get("real_scale"):
        return ("real-scale",)
    if values.get("micro"):
        return ("micro",)
    if values.get("preset"):
        return ("presets",)
    return ("sweep", "presets", "micro") + (() if quick else ("traces",))


def _modes(values: dict[str, Any], sections: tuple[str, ...],
           adaptive_available: Callable[[], bool]) -> tuple[str, ...]:
    if not values.get("modes"):
        needs_modes = any(s in sections for s in ("sweep", "presets", "traces", "scale-check", "real-scale"))
        return MODES + ((ADAPTIVE,) if needs_modes and adaptive_available() else ())
    modes = tuple(values["modes"])
    unknown = set(modes) - {*MODES, ADAPTIVE}
    if unknown:
        raise BenchError(f"--modes: unknown mode(s) {', '.join(sorted(unknown))}; choose from sync, async, adaptive")
    if "sync" not in modes:
        raise BenchError("--modes must include sync: every speedup is measured against it")
    if ADAPTIVE in modes and not adaptive_available():
        raise BenchError("--modes adaptive: this host does not accept --policy adaptive (see apf host --help)")
    return modes


def _sweep(values: dict[str, Any], base: Sweep) -> Sweep:
    """`base` (the full or the quick sweep) with the sweep options given replacing its values."""
    w = base.workload
    workload = Workload(guest_mem=values.get("guest_mem") or w.guest_mem, host_mem=values.get("host_mem") or w.host_mem,
                        vcpus=values.get("vcpus") or w.vcpus,
                        think_ns=w.think_ns if values.get("think") is None else values["think"],
                        io_depth=w.io_depth, seed=w.seed, pattern=w.pattern)
    if workload.host_mem > workload.guest_mem:
        raise BenchError("--host-mem must not be above --guest-mem")
    return Sweep(latencies_ns=tuple(values.get("latencies") or base.latencies_ns),
                 tasks=tuple(values.get("tasks") or base.tasks),
                 total_accesses=values.get("accesses") or base.total_accesses,
                 repeat=values.get("repeat") or base.repeat, workload=workload,
                 verify_latency_ns=base.verify_latency_ns)


def _presets(values: dict[str, Any], quick: bool) -> tuple[Preset, ...]:
    presets = tuple(PRESETS[n] for n in (values.get("preset") or sorted(PRESETS)))
    if quick:
        presets = tuple(replace(p, accesses_per_task=QUICK_PRESET_ACCESSES, workload=QUICK_PRESET_WORKLOAD)
                        for p in presets)
    return presets


def count_runs(plan: Plan) -> int:
    """How many runs (progress steps) `plan` makes: timed, verified and traced sweep runs, preset
    runs and the micro-benchmarks."""
    n = 0
    if "sweep" in plan.sections:
        n += len(plan.sweep.points(plan.modes)) * plan.sweep.repeat
        n += len(plan.modes)                                       # verified
        n += len(plan.modes) * len(plan.sweep.cdf_latencies)       # traced
    if "presets" in plan.sections:
        n += len(plan.presets) * len(plan.modes) * plan.preset_repeat
    if "micro" in plan.sections:
        n += MICRO_RUNS
    if "scale-check" in plan.sections:
        n += 2 * len(SCALE_LATENCIES_NS) * len(SCALE_TASKS) * len(plan.modes) * (1 if plan.quick else SCALE_REPEAT)
        n += DELAY_PROBES
    if "real-scale" in plan.sections:
        n += 3 + len(plan.real_latencies_ns or REAL_LATENCIES_NS) * len(plan.real_tasks or REAL_TASKS) \
            * len(plan.modes) * plan.real_repeat
        n += len(PRESETS) * len(plan.modes) * max(plan.real_repeat, ARM64_REAL_REPEAT)   # the arm64 presets
    if "traces" in plan.sections:
        n += len(TRACES_SHIPPED) * len(TRACES_LATENCIES_NS) * len(TRACES_TASKS) * len(plan.modes)
    if "haltpoll" in plan.sections:
        lats = QUICK_HALTPOLL_LATENCIES_NS if plan.quick else HALTPOLL_LATENCIES_NS
        n += len(lats) * (2 + len(HALTPOLL_WINDOWS_NS)) * plan.preset_repeat
    return n

