"""Host configuration, validated once, with errors a user can act on."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from shared.chaos import Chaos, delays_every_swap, validate_specs
from shared.dilation import parse_dilation
from host.apf import DEFAULT_MAX_OUTSTANDING
from host.memory import DEFAULT_PAGE_CLUSTER, MIN_BUDGET_PAGES, PAGE_CLUSTER_MAX
from host.policy import POLICIES
from host.swapio.choice import IO_ENGINES, why_threads
from host.swapio.endpoint import is_remote, parse_endpoint
from protocol.messages import MAX_VCPUS, PAGE_SIZE
from protocol.errors import ConfigError
from shared.prom import parse_listen

log = logging.getLogger("apf.host")
SHARED_MEMORY = ("memfd", "path")
MAX_SWAP_TIMEOUT_NS = 60_000_000_000


@dataclass
class HostConfig:
    run_dir: str
    guest_mem: int
    host_mem: int
    vcpus: int = 4
    swap: str | None = None
    swap_size: int | None = None      # bytes; None: the guest's size
    page_cluster: int = DEFAULT_PAGE_CLUSTER   # readahead of up to 2^N pages per major fault
    swap_latency_ns: int = 0
    direct_io: bool = False
    io_depth: int = 8
    io_engine: str = "auto"
    max_outstanding: int = DEFAULT_MAX_OUTSTANDING
    policy: str = "async"
    shm_dir: str = "/dev/shm"
    shared_memory: str = "memfd"
    metrics: str | None = None       # [ADDR:]PORT of the Prometheus endpoint
    trace: str | None = None
    once: bool = False
    teardown_bound_ns: int = 10_000_000_000
    inject: list[str] | None = None
    dilation: str | float | None = None   # "auto" (the guest says D) or a fixed factor
    trap_delay_ns: int = 0                # added to every trap and hypercall (never dilated)
    swap_password_file: str | None = None   # the remote swap's password (first line); never on the command line
    swap_timeout_ns: int = 1_000_000_000    # bound on one remote swap request

    def validate(self) -> "HostConfig":
        for name in ("guest_mem", "host_mem"):
            value = getattr(self, name)
            if value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least one {PAGE_SIZE}-byte page")
            if value % PAGE_SIZE:
                raise ConfigError(f"--{name.replace('_', '-')} {value} is not a whole number of "
                                  f"{PAGE_SIZE}-byte pages")
        if self.host_mem > self.guest_mem:
            raise ConfigError(f"--host-mem ({self.host_mem}) is above --guest-mem ({self.guest_mem}); "
                              "the host cannot keep more than the guest has")
        if self.host_mem < MIN_BUDGET_PAGES * PAGE_SIZE:
            raise ConfigError(f"--host-mem must be at least {MIN_BUDGET_PAGES} pages "
                              f"({MIN_BUDGET_PAGES * PAGE_SIZE} bytes)")
        if self.swap_size is not None and (self.swap_size <= 0 or self.swap_size % PAGE_SIZE):
            raise ConfigError(f"--swap-size {self.swap_size} is not a whole number of {PAGE_SIZE}-byte pages")
        if self.swap_bytes < self.guest_mem - self.host_mem:
            log.warning("--swap-size %d is below --guest-mem - --host-mem (%d): pages may not fit; "
                        "evictions that find the swap device full keep their page resident",
                        self.swap_bytes, self.guest_mem - self.host_mem)
        if not 0 <= self.page_cluster <= PAGE_CLUSTER_MAX:
            raise ConfigError(f"--page-cluster must be between 0 and {PAGE_CLUSTER_MAX} "
                              f"(readahead of up to 2^N pages), not {self.page_cluster}")
        if not 1 <= self.vcpus <= MAX_VCPUS:
            raise ConfigError(f"--vcpus must be between 1 and {MAX_VCPUS}")
        if not 1 <= self.io_depth <= 256:
            raise ConfigError("--io-depth must be between 1 and 256")
        if not 1 <= self.max_outstanding <= 4096:
            raise ConfigError("--max-outstanding must be between 1 and 4096")
        if self.swap_latency_ns < 0:
            raise ConfigError("--swap-latency must not be negative")
        if self.trap_delay_ns < 0:
            raise ConfigError("--trap-delay must not be negative")
        if self.dilation is not None:
            try:
                self.dilation = parse_dilation(self.dilation)
            except ValueError as exc:
                raise ConfigError(f"--dilation {exc}") from None
            if self.swap_latency_ns <= 0 and not delays_every_swap(self.inject):
                raise ConfigError("--dilation needs a modelled --swap-latency above 0 (or a swap-latency "
                                  "--inject rule on every I/O): the real device's own time cannot be "
                                  "dilated, and would be read as D times shorter than it is")
        if self.teardown_bound_ns < 0:
            raise ConfigError("--teardown-bound must not be negative")
        if self.policy not in POLICIES:
            raise ConfigError(f"--policy must be one of {', '.join(POLICIES)}")
        validate_specs(self.inject)
        self._validate_remote()
        if self.io_engine not in IO_ENGINES:
            raise ConfigError(f"--io-engine must be one of {', '.join(IO_ENGINES)}")
        if self.io_engine == "aio" and not self.remote_swap:
            reason = why_threads(self.direct_io, self.swap_latency_ns, Chaos.from_specs(self.inject, "host"))
            if reason:
                raise ConfigError(f"--io-engine aio cannot run this configuration: {reason}")
        if self.metrics is not None:
            try:
                parse_listen(self.metrics)
            except ValueError as exc:
                raise ConfigError(f"--metrics: {exc}") from None
        if self.shared_memory not in SHARED_MEMORY:
            raise ConfigError(f"--shared-memory must be one of {', '.join(SHARED_MEMORY)}")
        if not os.path.isdir(self.shm_dir):
            raise ConfigError(f"--shm-dir {self.shm_dir} is not a directory")
        return self

    def _validate_remote(self) -> None:
        if not 0 < self.swap_timeout_ns <= MAX_SWAP_TIMEOUT_NS:
            raise ConfigError(f"--swap-timeout must be above 0 and at most {MAX_SWAP_TIMEOUT_NS // 10**9}s")
        if not self.remote_swap:
            if self.swap is not None and os.path.lexists(self.swap):
                raise ConfigError(f"--swap {self.swap} exists: the host creates its swap file and removes it "
                                  "when it stops, so it takes only a path that does not exist yet")
            if self.swap_password_file:
                raise ConfigError("--swap-password-file is for a remote --swap (redis://...), not a swap file")
            if Chaos.from_specs(self.inject, "host").targets(("swap-remote",)):
                raise ConfigError("--inject swap-remote:... is for a remote --swap (redis://...), not a swap file")
            return
        parse_endpoint(self.swap)
        if self.direct_io:
            raise ConfigError("--direct-io is for a swap file; a remote --swap has no page cache to bypass")
        if self.io_engine != "auto":
            raise ConfigError(f"--io-engine {self.io_engine} is for a swap file; a remote --swap has its own "
                              "engine (redis): leave --io-engine at auto")
        if self.swap_password_file and not os.access(self.swap_password_file, os.R_OK):
            raise ConfigError(f"--swap-password-file {self.swap_password_file}: not a readable file")

    @property
    def remote_swap(self) -> bool:
        """--swap names a remote service (a Redis URL), not a file."""
        return is_remote(self.swap)

    @property
    def guest_pages(self) -> int:
        return self.guest_mem // PAGE_SIZE

    @property
    def budget_pages(self) -> int:
        return self.host_mem // PAGE_SIZE

    @property
    def swap_bytes(self) -> int:
        return self.guest_mem if self.swap_size is None else self.swap_size

    @property
    def swap_slots(self) -> int:
        return self.swap_bytes // PAGE_SIZE

    @property
    def swap_path(self) -> str:
        return self.swap or os.path.join(self.run_dir, "swap")
