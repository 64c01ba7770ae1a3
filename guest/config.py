"""Guest configuration, validated once."""
from __future__ import annotations

import os
from dataclasses import dataclass

from shared.chaos import validate_specs
from shared.dilation import DEFAULT_EXIT_COST_NS, parse_dilation
from shared.memtrace import MemtraceError, MemtraceHeader, read_header
from shared.prom import parse_listen
from shared.units import format_duration_ns
from guest.schedclass import DEFAULT_POLICY, check_policy
from guest.think import CPU_WORK_MODELS
from guest.workload import PATTERNS
from protocol.messages import MAX_VCPUS, PAGE_SIZE
from protocol.errors import ConfigError

TRACE_PREFIX = "trace:"     # --workload trace:FILE replays a memtrace (guest/replay.py)
DEFAULT_ACCESSES = 1000

MODES = ("sync", "async")
HALT_POLL_MAX_NS = 100_000_000   # a longer poll window would spin past the idle vCPU's own re-check bound


@dataclass
class GuestConfig:
    run_dir: str
    vcpus: int = 1
    tasks: int = 1
    compute_tasks: int = 0                # tasks that only compute, never touch guest memory
    compute_work_ns: int | None = None   # CPU work of each (default: accesses x think_ns)
    workload: str = "random"
    accesses: int | None = None          # per task; default DEFAULT_ACCESSES, or a trace's records once
    think_ns: int = 0
    seed: int = 1
    report: str | None = None
    mode: str = "sync"
    write_frac: float = 0.5
    kernel_frac: float = 0.0
    irqoff_frac: float = 0.0
    working_set: int | None = None       # bytes of guest memory the workload touches
    send_always: bool = False
    timeslice_ns: int = 2_000_000
    reply_timeout_ns: int = 60_000_000_000
    stuck_timeout_ns: int = 30_000_000_000
    attach_wait_ns: int = 0
    metrics: str | None = None       # [ADDR:]PORT of the Prometheus endpoint
    verify: bool = True
    prefill: bool = False
    # A trace's pages are written (prefilled) before the workload unless this is set: its
    # read-only pages then map the zero page and never swap (guest/replay.py, "Content").
    zero_fill: bool = False
    inject: list[str] | None = None
    trace: str | None = None
    name: str | None = None
    ns_per_insn: float | None = None     # trace compute per instruction (default: the trace's measured rate)
    trace_shared: bool = False           # trace tasks are threads of one program (one region)
    dilation: str | float | None = None  # "auto" or a factor: modelled costs are real-equivalent (x D)
    exit_cost_ns: int = DEFAULT_EXIT_COST_NS   # the target's exit cost, for --dilation auto
    halt_poll_ns: int = 0                # most an idle vCPU polls before blocking (0: off; guest/haltpoll.py)
    sched: str = DEFAULT_POLICY          # the scheduling class (guest/schedclass.py)
    cpu_work: str = "burn"               # think and compute: burn a core, or sleep on the guest's clock
    duration_ns: int = 0                 # the workload phase ends after this long (0: when its tasks are done)

    @property
    def prefill_phase(self) -> bool:
        """Whether the working set is written once before the workload: --prefill, or a trace
        workload without --zero-fill."""
        return self.prefill or (self.trace_path is not None and not self.zero_fill)

    @property
    def trace_path(self) -> str | None:
        """The memtrace of `--workload trace:FILE`, or None for a synthetic pattern."""
        return self.workload[len(TRACE_PREFIX):] if self.workload.startswith(TRACE_PREFIX) else None

    @property
    def compute_ns(self) -> int:
        """CPU work of one compute task: as much as a memory task thinks, unless given."""
        return self.accesses * self.think_ns if self.compute_work_ns is None else self.compute_work_ns

    def validate(self) -> "GuestConfig":
        if self.trace_path is not None:
            header = self._trace_header()
            if self.accesses is None:
                self.accesses = header.records
        elif self.workload not in PATTERNS:
            raise ConfigError(f"--workload must be one of {', '.join(PATTERNS)} or trace:FILE")
        if self.accesses is None:
            self.accesses = DEFAULT_ACCESSES
        if not 1 <= self.vcpus <= MAX_VCPUS:
            raise ConfigError(f"--vcpus must be between 1 and {MAX_VCPUS}")
        if not 1 <= self.tasks <= 100_000:
            raise ConfigError("--tasks must be between 1 and 100000")
        if not 0 <= self.compute_tasks <= 100_000:
            raise ConfigError("--compute-tasks must be between 0 and 100000")
        if self.compute_work_ns is not None and self.compute_work_ns <= 0:
            raise ConfigError("--compute-work must be above 0")
        if self.duration_ns and self.trace_path is not None:
            raise ConfigError("--duration runs generated workloads endlessly until it ends; a trace:FILE replays "
                              "its records once: give --accesses instead")
        if self.compute_tasks and self.compute_ns <= 0 and not self.duration_ns:
            raise ConfigError("--compute-tasks needs CPU work to do: give --compute-work, or --accesses and "
                              "--think above 0 (its default is --accesses x --think)")
        if self.ns_per_insn is not None and self.ns_per_insn < 0:
            raise ConfigError("--ns-per-insn must not be negative")
        if self.accesses < 0:
            raise ConfigError("--accesses must not be negative")
        if self.metrics is not None:
            try:
                parse_listen(self.metrics)
            except ValueError as exc:
                raise ConfigError(f"--metrics: {exc}") from None
        if self.zero_fill and self.prefill:
            raise ConfigError("--zero-fill and --prefill contradict each other: --zero-fill leaves the pages "
                              "a workload only reads unwritten, --prefill writes them all first")
        if self.name is not None and "/" in self.name:
            raise ConfigError(f"--name {self.name}: a guest name may not contain '/' (it ends the name in the "
                              "guest's socket identities, NAME/ctl and NAME/vcpuN)")
        if self.attach_wait_ns < 0:
            raise ConfigError("--attach-wait must not be negative")
        if not 0 <= self.halt_poll_ns <= HALT_POLL_MAX_NS:
            raise ConfigError(f"--halt-poll must be between 0 (off) and {HALT_POLL_MAX_NS // 1_000_000}ms, "
                              f"not {format_duration_ns(self.halt_poll_ns)}")
        if self.think_ns < 0:
            raise ConfigError("--think must not be negative")
        if self.timeslice_ns <= 0:
            raise ConfigError("--timeslice must be longer than 0")
        for name in ("write_frac", "kernel_frac", "irqoff_frac"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} must be between 0 and 1, got {value}")
        validate_specs(self.inject)
        if self.dilation is not None:
            try:
                self.dilation = parse_dilation(self.dilation)
            except ValueError as exc:
                raise ConfigError(f"--dilation {exc}") from None
        if self.exit_cost_ns <= 0:
            raise ConfigError("--exit-cost must be above 0: no real platform resolves a fault in no time")
        check_policy(self.sched)
        if self.cpu_work not in CPU_WORK_MODELS:
            raise ConfigError(f"--cpu-work must be one of {', '.join(CPU_WORK_MODELS)}, not {self.cpu_work!r}")
        if self.duration_ns < 0:
            raise ConfigError("--duration must not be negative")
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)}")
        if self.working_set is not None and (self.working_set <= 0 or self.working_set % PAGE_SIZE):
            raise ConfigError("--working-set must be a positive whole number of pages")
        if self.report and not os.path.isdir(os.path.dirname(os.path.abspath(self.report))):
            raise ConfigError(f"--report {self.report}: its directory does not exist")
        return self

    def _trace_header(self) -> MemtraceHeader:
        path = self.trace_path
        if not path:
            raise ConfigError("--workload trace:FILE needs a file name after 'trace:'")
        try:
            return read_header(path)
        except MemtraceError as exc:
            raise ConfigError(str(exc)) from None
        except OSError as exc:
            raise ConfigError(f"--workload {self.workload}: {path}: {exc.strerror}") from None
