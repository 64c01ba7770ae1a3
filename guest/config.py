"""Guest configuration, validated once."""
from __future__ import annotations

import os
from dataclasses import dataclass

from shared.chaos import validate_specs
from shared.prom import parse_listen
from guest.workload import PATTERNS
from protocol.messages import MAX_VCPUS, PAGE_SIZE
from protocol.errors import ConfigError

MODES = ("sync", "async")


@dataclass
class GuestConfig:
    run_dir: str
    vcpus: int = 1
    tasks: int = 1
    compute_tasks: int = 0                # tasks that only compute, never touch guest memory
    compute_work_ns: int | None = None   # CPU work of each (default: accesses x think_ns)
    workload: str = "random"
    accesses: int = 1000
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
    inject: list[str] | None = None
    trace: str | None = None
    name: str | None = None

    @property
    def compute_ns(self) -> int:
        """CPU work of one compute task: as much as a memory task thinks, unless given."""
        return self.accesses * self.think_ns if self.compute_work_ns is None else self.compute_work_ns

    def validate(self) -> "GuestConfig":
        if not 1 <= self.vcpus <= MAX_VCPUS:
            raise ConfigError(f"--vcpus must be between 1 and {MAX_VCPUS}")
        if not 1 <= self.tasks <= 100_000:
            raise ConfigError("--tasks must be between 1 and 100000")
        if not 0 <= self.compute_tasks <= 100_000:
            raise ConfigError("--compute-tasks must be between 0 and 100000")
        if self.compute_work_ns is not None and self.compute_work_ns <= 0:
            raise ConfigError("--compute-work must be above 0")
        if self.compute_tasks and self.compute_ns <= 0:
            raise ConfigError("--compute-tasks needs CPU work to do: give --compute-work, or --accesses and "
                              "--think above 0 (its default is --accesses x --think)")
        if self.workload not in PATTERNS:
            raise ConfigError(f"--workload must be one of {', '.join(PATTERNS)}")
        if self.accesses < 0:
            raise ConfigError("--accesses must not be negative")
        if self.metrics is not None:
            try:
                parse_listen(self.metrics)
            except ValueError as exc:
                raise ConfigError(f"--metrics: {exc}") from None
        if self.attach_wait_ns < 0:
            raise ConfigError("--attach-wait must not be negative")
        if self.think_ns < 0 or self.timeslice_ns <= 0:
            raise ConfigError("--think must not be negative and --timeslice must be positive")
        for name in ("write_frac", "kernel_frac", "irqoff_frac"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} must be between 0 and 1, got {value}")
        validate_specs(self.inject)
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)}")
        if self.working_set is not None and (self.working_set <= 0 or self.working_set % PAGE_SIZE):
            raise ConfigError("--working-set must be a positive whole number of pages")
        if self.report and not os.path.isdir(os.path.dirname(os.path.abspath(self.report))):
            raise ConfigError(f"--report {self.report}: its directory does not exist")
        return self
