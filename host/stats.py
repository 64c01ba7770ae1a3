"""The host's statistics (the STATS_REPLY map, protocol/SPEC.md §4.6) as typed, frozen dataclasses.

`HostStats.to_wire()` turns them into the nested map only at the wire, as trio's `statistics()`
returns a frozen object. The field names are the map's keys, an interface that reports and
scripts read: extend, never rename.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

Percentiles = dict[str, float]     # {"p50", "p99", "max", "mean", "count"}, µs (shared.metrics)


@dataclass(frozen=True)
class FaultFigures:
    total: int              # TRAPs handled
    spurious: int           # the page was mapped when the TRAP arrived (another vCPU faulted it in)
    async_: int             # answered PAGE_NOT_PRESENT ("async" on the wire)
    sync: int               # resolved synchronously (answered RESUME or MEMORY_FAILURE)
    minor: int              # resident or never touched: no swap read
    major: int              # needed a swap read
    joined: int             # joined a swap read already in flight
    rescued: int            # taken back while being evicted
    alloc_stalls: int       # waited for a free page
    poisoned: int           # pages whose swap-in failed
    sync_reasons: dict[str, int]   # SyncReason value -> count
    write_protect: int = 0  # writes to a read-only stage-2 entry (clean page or zero page): permission faults
    zero_page: int = 0      # first-touch reads answered by mapping the shared zero page


@dataclass(frozen=True)
class ApfFigures:
    not_present: int
    page_ready: int
    wake_all: int
    acks: int
    flushed: int            # an older name of dropped_by_disable, always equal to it (kept for scripts)
    duplicated: int         # chaos: page-readies sent twice
    reordered: int          # chaos: page-readies queued out of order
    reraised: int           # interrupts raised again for a slot left full
    dropped_by_disable: int # page-readies dropped because their vCPU disabled APF: queued + in flight
    outstanding: list[int]  # per vCPU: tokens issued, not yet in the slot
    queued: list[int]       # per vCPU: tokens in the done queue
    tokens: list[dict[str, Any]]   # per vCPU: where its tokens are (§4.5)
    dropped_queued: int = 0     # of dropped_by_disable: in the done queue at the disable
    dropped_in_flight: int = 0  # of dropped_by_disable: swap-in running at the disable, dropped when in


@dataclass(frozen=True)
class ReadaheadFigures:
    pages: int = 0           # pages read ahead of a major fault (their reads count in `reads`)
    hits: int = 0            # faults that found a read-ahead page: no I/O of their own
    misses: int = 0          # read-ahead pages evicted (or failed) unused


@dataclass(frozen=True)
class SwapFigures:
    reads: int
    writes: int
    evictions: int
    read_errors: int
    write_errors: int
    tlbi_batches: int
    swap_in_us: Percentiles  # each page's swap-in in the engine, modelled latency included (within 1 %)
    file_bytes: int          # bytes the swap file holds on disk
    io_engine: str           # "threads", "aio", or "redis" (a remote swap)
    clean_drops: int = 0     # evictions of clean pages (their swap slot holds them): RAM freed, no write
    slots_used: int = 0      # swap slots holding a page now (the allocator's count)
    read_device_ns: int = 0     # swap-ins: summed time on the real device (and the engine around it)
    read_modelled_ns: int = 0   # swap-ins: summed modelled time (--swap-latency, injected latency)
    backend: str = "file"    # "file", "redis" or "redis-cluster"
    endpoint: str = ""       # the swap file's path, or the service's URL without credentials
    remote: dict[str, Any] | None = None   # remote back-ends: {keys, bytes, timeouts, errors, rtt_us, nodes}
    readahead: ReadaheadFigures = ReadaheadFigures()
    io_in_flight: int = 0    # pages of swap I/O submitted to the engine and not completed
    io_queued: int = 0       # requests of those still in the engine's lanes: not started, cancellable


@dataclass(frozen=True)
class MemoryFigures:
    resident_pages: int      # pages charged to the budget: resident, reading and evicting (its old meaning)
    budget_pages: int
    free_pages: int
    evicting_pages: int      # unmapped victims: waiting for the TLBI ack or their write-back
    watermarks: list[int]    # [low, high] free pages
    over_budget_pages: int   # resident beyond the budget (failed write-backs)
    over_budget_events: int
    ram_file_bytes: int      # bytes the RAM file holds in the shared-memory file system
    resident_only_pages: int = 0   # pages in RAM and neither being read nor evicted
    reading_pages: int = 0         # pages whose swap-in is in flight (read-ahead pages included)


@dataclass(frozen=True)
class SessionFigures:
    sessions_served: int
    attached: bool
    last_end_reason: str
    stale_io_running: int    # swap I/O of an ended session still running (0 once it ended)
    guest: str | None = None # the attached guest, when `attached`
    pid: int | None = None
    vcpus: int | None = None
    uptime_s: float | None = None


@dataclass(frozen=True)
class HostStats:
    faults: FaultFigures
    apf: ApfFigures
    swap: SwapFigures
    memory: MemoryFigures
    session: SessionFigures
    bad_frames: dict[str, int]      # rejected frames by error code name
    injected: dict[str, Any]        # fault-injection (chaos) summary
    policy: dict[str, Any]          # the async policy's figures (host/policy.py)
    resources: dict[str, float]     # pid, rss_bytes, peak_rss_bytes (VmHWM), cpu_user_s, cpu_system_s
    control_block_bytes: int
    # Time dilation (shared/dilation.py): {"mode": None | "auto" | factor, "factor" in force,
    # "swap_latency_ns" as applied, "trap_delay_ns"}
    dilation: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        """The STATS_REPLY map: nested dicts with the field names as keys (`async_` as `async`);
        absent session fields (no guest attached) are left out."""
        wire = asdict(self)
        wire["faults"]["async"] = wire["faults"].pop("async_")
        wire["session"] = {k: v for k, v in wire["session"].items() if v is not None}
        return wire
