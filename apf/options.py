"""Every command-line option, defined once: `apf host`, `apf guest` and `apf run` are built from
this table, and `apf run` forwards each daemon its own options. An option's `dest` is the name
of the config field it sets. Option names are an interface: extend, never rename.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from protocol.errors import ConfigError
from shared.chaos import ACTIONS as CHAOS_ACTIONS, parse_rule
from shared.dilation import DEFAULT_EXIT_COST_NS, EXIT_COST_PROFILES, parse_dilation, parse_exit_cost
from shared.prom import parse_listen
from shared.units import format_duration_ns, parse_duration_ns, parse_size
from guest.schedclass import DEFAULT_POLICY, POLICIES
from guest.think import CPU_WORK_MODELS
from guest.workload import COMPUTE_STEP_NS, PATTERNS

HOST, GUEST, RUN = "host", "guest", "run"


def _argument(check: Callable[[str], Any], keep_text: bool = False) -> Callable[[str], Any]:
    """An argparse type from a checker that raises ValueError (the project's ConfigError is one):
    its message becomes argparse's one-line error. Returns the checked value, or the text as
    given when `keep_text`."""
    def convert(text: str) -> Any:
        try:
            value = check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text if keep_text else value
    return convert


_size = _argument(parse_size)
# A command-line duration: the unit is required (`2` alone is refused, asking for one).
_duration = _argument(lambda text: parse_duration_ns(text, require_unit=True))


def _number_between(low: float, high: float, what: str) -> Callable[[str], float]:
    """An argparse type: a float from `low` to `high`; `what` names it when the text is no number."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {what}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low:.15g} and {high:.15g}")
        return value
    return parse


_fraction = _number_between(0.0, 1.0, "a number between 0 and 1")


def _whole_number(text: str, least: int, rule: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} {rule}")
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, 1, "must be at least 1")


def _count(text: str) -> int:
    return _whole_number(text, 0, "must not be negative")


def _positive_duration(text: str) -> int:
    ns = _duration(text)
    if ns <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be above 0")
    return ns


def _exact_ns(ns: int) -> str:
    return f"{ns}ns"


OUTPUT_FILES = ("report", "trace")   # options naming a file the run writes at its end


def check_output_files(values: dict[str, Any]) -> None:
    """Each file the run will write must have an existing, writable directory now, so that a run
    is not lost at its end for want of a place to put the result. Raises ConfigError."""
    for dest in OUTPUT_FILES:
        path = values.get(dest)
        if not path:
            continue
        flag = "--" + dest
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise ConfigError(f"{flag} {path} is a directory")
        if not os.path.isdir(folder):
            raise ConfigError(f"{flag} {path}: directory {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag} {path}: directory {folder} is not writable")


def _workload(text: str) -> str:
    """A synthetic pattern, or trace:FILE (made absolute, so that a daemon started elsewhere finds it)."""
    if text.startswith("trace:") and len(text) > len("trace:"):
        return "trace:" + os.path.abspath(text[len("trace:"):])
    if text not in PATTERNS:
        raise argparse.ArgumentTypeError(f"'{text}' is not one of {', '.join(PATTERNS)} or trace:FILE")
    return text


_ns_per_insn = _number_between(0.0, 1e6, "a number of nanoseconds")


_listen = _argument(parse_listen, keep_text=True)
_dilation = _argument(parse_dilation)
_exit_cost = _argument(parse_exit_cost)
_inject_spec = _argument(parse_rule, keep_text=True)


@dataclass(frozen=True)
class Opt:
    flag: str
    dest: str
    roles: tuple[str, ...]
    help: str
    type: Callable[[str], Any] | None = None
    default: Any = None
    required: bool = False
    flag_only: bool = False            # a switch (store_true)
    repeatable: bool = False           # may be given several times; the value is a list
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    format: Callable[[Any], str] = field(default=str)  # how `apf run` forwards the value


OPTIONS: list[Opt] = [
    Opt("--run-dir", "run_dir", (HOST, GUEST), "run directory: host.json, the ipc socket and the lock live here",
        required=True, metavar="DIR"),
    # host
    Opt("--guest-mem", "guest_mem", (HOST,), "guest memory size (e.g. 32MiB, 4GiB); whole 4 KiB pages",
        type=_size, required=True, metavar="SIZE"),
    Opt("--host-mem", "host_mem", (HOST,), "most guest memory the host keeps resident; the rest is swapped",
        type=_size, required=True, metavar="SIZE"),
    Opt("--swap", "swap", (HOST,), "swap file to create (default: RUN_DIR/swap; a path that does not exist "
        "yet: the host removes the file when it stops), or a remote memory service on Redis: "
        "redis://HOST:PORT[/DB], rediss://HOST:PORT[/DB] (TLS), unix:///PATH/redis.sock, "
        "redis+cluster://HOST:PORT[,HOST:PORT...]; an ACL user may come before the host (USER@HOST), the "
        "password only from --swap-password-file; see docs/remote-memory.md", metavar="FILE|URL"),
    Opt("--swap-password-file", "swap_password_file", (HOST,), "file whose first line is the remote swap's "
        "password (never on the command line)", metavar="FILE"),
    Opt("--swap-timeout", "swap_timeout_ns", (HOST,), "longest wait for one remote swap request: a swap-in "
        "that times out poisons its page, a write-back keeps its page resident", type=_positive_duration,
        default=1_000_000_000, metavar="DUR", format=_exact_ns),
    Opt("--swap-size", "swap_size", (HOST,), "swap device size (default: --guest-mem); slots are allocated "
        "in clusters, and a full device makes eviction fail as ENOSPC does", type=_size, metavar="SIZE"),
    Opt("--page-cluster", "page_cluster", (HOST,), "swap readahead: a major fault also reads up to 2^N "
        "swapped neighbouring pages in the same request (Linux's vm.page-cluster; the window adapts to "
        "hits as Linux's VMA readahead does, at most 32 pages; 0 turns it off)", type=int,
        default=3, metavar="N"),
    Opt("--swap-latency", "swap_latency_ns", (HOST,),
        "modelled device latency added to every swap I/O (e.g. 100us, 2ms)", type=_duration, default=0,
        metavar="DUR", format=_exact_ns),
    Opt("--direct-io", "direct_io", (HOST,), "open the swap file with O_DIRECT", flag_only=True, default=False),
    Opt("--io-depth", "io_depth", (HOST,), "swap I/O in flight at once (queue depth)", type=_positive_int,
        default=8, metavar="N"),
    Opt("--io-engine", "io_engine", (HOST,), "how swap I/O is issued: aio (Linux native AIO, no threads; "
        "needs --direct-io), threads (a pool of --io-depth workers; runs modelled latency and injected swap "
        "faults), auto (aio where it can run, else threads)", default="auto", choices=("auto", "threads", "aio")),
    Opt("--max-outstanding", "max_outstanding", (HOST,), "most asynchronous faults in flight per vCPU",
        type=_positive_int, default=64, metavar="N"),
    Opt("--policy", "policy", (HOST,), "which faults the host makes asynchronous: async (whenever allowed), "
        "sync (never), adaptive (when the measured swap-in time and guest idleness say async pays)",
        default="async", choices=("sync", "async", "adaptive")),
    Opt("--shared-memory", "shared_memory", (HOST,), "how guest RAM, stage 2 and the control blocks are "
        "shared: memfd (anonymous files handed to the guest over the run dir's lifeline socket; the kernel "
        "frees them when the last holder dies) or path (files in --shm-dir, for a guest that can only share "
        "/dev/shm, e.g. in another container; files of dead hosts are removed at start)",
        default="memfd", choices=("memfd", "path")),
    Opt("--shm-dir", "shm_dir", (HOST,), "tmpfs directory for guest RAM and the shared tables "
        "(--shared-memory path)",
        default="/dev/shm", metavar="DIR"),
    Opt("--once", "once", (HOST,), "exit after the first guest's session ends: status 0 when it powered off, "
        "3 when the host took it for lost (silent, gone, or a TLBI never acknowledged)", flag_only=True,
        default=False),
    Opt("--teardown-bound", "teardown_bound_ns", (HOST,),
        "how long a leaving guest's running swap I/O is awaited; I/O still running after that keeps new "
        "guests out (BUSY) until it ends", type=_duration, default=10_000_000_000, metavar="DUR",
        format=_exact_ns),
    Opt("--trap-delay", "trap_delay_ns", (HOST,), "add this much to every trap and hypercall the host "
        "handles: raises the emulator's own exit cost on purpose (for the scale-invariance check of "
        "--dilation); it is never dilated", type=_duration, default=0, metavar="DUR", format=_exact_ns),
    # both
    Opt("--dilation", "dilation", (HOST, GUEST), "time dilation: --swap-latency, --think, --compute-work, "
        "--ns-per-insn, --timeslice and injected latencies are real-equivalent and applied multiplied by "
        "D; auto: the guest measures the emulator's exit cost first and D = measured / --exit-cost; "
        "FACTOR: D given (at least 1). The report adds `dilation` and `real_equivalent` (figures / D). "
        "Needs a modelled --swap-latency, or a swap-latency --inject rule on every I/O", type=_dilation, metavar="auto|FACTOR"),
    Opt("--vcpus", "vcpus", (HOST, GUEST), "vCPUs (host: the most a guest may use; default 4 for "
        "`apf host`, 1 for `apf guest` and `apf run`)", type=_positive_int,
        metavar="N"),
    # guest
    Opt("--tasks", "tasks", (GUEST,), "guest tasks (processes) sharing the vCPUs", type=_positive_int,
        default=1, metavar="N"),
    Opt("--compute-tasks", "compute_tasks", (GUEST,), "compute-only tasks beside the memory tasks: each does "
        f"--compute-work of CPU work (the hashing of --think) in {format_duration_ns(COMPUTE_STEP_NS)} steps "
        "and never touches guest memory, so it runs whenever the scheduler gives it a vCPU; the workload "
        "phase ends when every task is done",
        type=_count, default=0, metavar="N"),
    Opt("--duration", "duration_ns", (GUEST,), "run the workload for this long instead of a fixed amount: every "
        "task (memory and compute) goes on until then and stops at its next instruction boundary; the report "
        "gives what each kind of task got done (`throughput`); real-equivalent with --dilation",
        type=_duration, default=0, metavar="DUR", format=_exact_ns),
    Opt("--compute-work", "compute_work_ns", (GUEST,), "CPU work of each compute task (default: --accesses x "
        "--think, as much as a memory task thinks)", type=_positive_duration, metavar="DUR", format=_exact_ns),
    Opt("--workload", "workload", (GUEST,), "access pattern of each task: random, zipf, sequential, mixed, or "
        "trace:FILE to replay a memtrace of a real program (see `apf trace`; docs/traces.md)",
        type=_workload, default="random", metavar="PATTERN"),
    Opt("--accesses", "accesses", (GUEST,), "memory accesses per task (default 1000; with trace:FILE, page-level "
        "records per task, default the whole trace once)", type=int, metavar="N"),
    Opt("--ns-per-insn", "ns_per_insn", (GUEST,), "trace:FILE compute: CPU work per traced instruction between "
        "records, in ns (default: what `apf trace record` measured, else 0.5; 0: none)", type=_ns_per_insn,
        metavar="NS"),
    Opt("--trace-shared", "trace_shared", (GUEST,), "trace:FILE tasks are threads of one program (one set of "
        "pages) instead of separate processes", flag_only=True, default=False),
    Opt("--think", "think_ns", (GUEST,), "CPU work before each access (e.g. 50us); releases the GIL",
        type=_duration, default=0, metavar="DUR", format=_exact_ns),
    Opt("--exit-cost", "exit_cost_ns", (GUEST,), "with --dilation auto: the target platform's cost of one "
        "stage-2 fault round trip resolved without I/O, as a duration or a platform: "
        + ", ".join(f"{p.name} ({p.ns} ns)" for p in EXIT_COST_PROFILES.values())
        + "; D = the emulator's measured cost / this (docs and SPEC give each platform's source)",
        type=_exit_cost, default=DEFAULT_EXIT_COST_NS, metavar="DUR|PLATFORM", format=_exact_ns),
    Opt("--sched", "sched", (GUEST,), "the guest's scheduler: cfs (Linux up to 6.5, whose kernels the "
        "published APF runs used: a woken sleeper preempts a CPU-bound task), eevdf (Linux 6.6 on), or rr "
        "(round-robin with --timeslice, no wake-up preemption: for comparison)", default=DEFAULT_POLICY,
        choices=POLICIES),
    Opt("--cpu-work", "cpu_work", (GUEST,), "how --think and compute steps spend their time: burn (real CPU "
        "work, hashing) or clock (the vCPU busy on the guest's clock, sleeping, no core burnt: for more "
        "vCPUs than this machine has cores)", default="burn", choices=CPU_WORK_MODELS),
    Opt("--seed", "seed", (GUEST,), "workload seed: the same seed is the same access sequence", type=int,
        default=1, metavar="N"),
    Opt("--report", "report", (GUEST, RUN), "write the JSON report here", metavar="FILE"),
    Opt("--mode", "mode", (GUEST, RUN), "sync: no APF; async: the guest enables APF on every vCPU",
        default="sync", choices=("sync", "async")),
    Opt("--write-frac", "write_frac", (GUEST,), "fraction of accesses that write", type=_fraction,
        default=0.5, metavar="F"),
    Opt("--kernel-frac", "kernel_frac", (GUEST,), "fraction of accesses made in kernel mode",
        type=_fraction, default=0.0, metavar="F"),
    Opt("--irqoff-frac", "irqoff_frac", (GUEST,), "fraction of accesses made with interrupts disabled",
        type=_fraction, default=0.0, metavar="F"),
    Opt("--working-set", "working_set", (GUEST,), "guest memory the workload touches (default: all)",
        type=_size, metavar="SIZE"),
    Opt("--send-always", "send_always", (GUEST,), "enable APF with SEND_ALWAYS (also in kernel mode)",
        flag_only=True, default=False),
    Opt("--halt-poll", "halt_poll_ns", (GUEST,), "halt polling: an idle vCPU polls for its interrupt up to "
        "this long before it blocks, the window adapting per vCPU as KVM's halt_poll_ns does (grown on short "
        "halts it missed, halved on halts longer than this); costs CPU while it polls (0: off)",
        type=_duration, default=0, metavar="DUR", format=_exact_ns),
    Opt("--timeslice", "timeslice_ns", (GUEST,), "the time slice of --sched rr (CFS and EEVDF take Linux's "
        "sched_latency and base slice instead)", type=_duration, default=2_000_000,
        metavar="DUR", format=_exact_ns),
    Opt("--reply-timeout", "reply_timeout_ns", (GUEST,), "longest wait for the host's answer to one trap",
        type=_duration, default=60_000_000_000, metavar="DUR", format=_exact_ns),
    Opt("--attach-wait", "attach_wait_ns", (GUEST,), "when the host is not up yet (no run dir or host.json: "
        "it is still starting) or busy (another guest attached, or the last guest's swap I/O still running), "
        "look or ask again for up to this long (default 0: fail at once)",
        type=_duration, default=0, metavar="DUR", format=_exact_ns),
    Opt("--stuck-timeout", "stuck_timeout_ns", (GUEST,), "fail the run when no access completes this long",
        type=_duration, default=30_000_000_000, metavar="DUR", format=_exact_ns),
    Opt("--no-verify", "verify", (GUEST,), "skip the final read-back of every written page",
        flag_only=True, default=True),
    Opt("--prefill", "prefill", (GUEST,), "write the whole working set once before the workload (not "
        "timed), so the workload starts on memory that is already partly swapped out",
        flag_only=True, default=False),
    Opt("--zero-fill", "zero_fill", (GUEST,), "trace:FILE only: do not write the trace's pages before the "
        "workload (by default they are, as --prefill does), so that pages the trace only reads map the zero "
        "page and never swap", flag_only=True, default=False),
    Opt("--name", "name", (GUEST,), "guest name (default: guest-PID-RANDOM)", metavar="NAME"),
    Opt("--inject", "inject", (HOST, GUEST), "inject a fault (repeatable): TARGET:ACTION[:KEY=VALUE...]; "
        "faults: " + ", ".join(f"{t}:{a}" for t, a in CHAOS_ACTIONS) + "; triggers: every=N (each Nth "
        "event), n=N (the Nth only), after=N (the Nth and each after; for cpu-hotplug and suspend: once), "
        "p=F (probability), pages=G+G; values: delay=DUR, scale=DUR, alpha=A, max=DUR (pareto's upper bound); e.g. swap-read:eio:every=50, "
        "cpu-hotplug:every=500:delay=20ms; see docs/fault-injection.md", type=_inject_spec,
        metavar="SPEC", repeatable=True),
    Opt("--metrics", "metrics", (HOST, GUEST), "serve Prometheus metrics at http://ADDR:PORT/metrics: PORT "
        "alone listens on 127.0.0.1 (port 0: one the kernel picks, named in host.json and the log); "
        "`apf run` gives it to the host", type=_listen, metavar="[ADDR:]PORT"),
    Opt("--trace", "trace", (HOST, GUEST, RUN), "write trace events (Chrome/Perfetto JSON) here",
        metavar="FILE"),
]


def options_for(role: str) -> list[Opt]:
    """The options of `role`; `run` takes every option (the run dir becomes optional)."""
    if role == RUN:
        seen: dict[str, Opt] = {}
        for opt in OPTIONS:
            seen.setdefault(opt.dest, opt)
        return list(seen.values())
    return [o for o in OPTIONS if role in o.roles]


def add_options(parser: argparse.ArgumentParser, role: str) -> None:
    groups: dict[str, Any] = {}
    for opt in options_for(role):
        group_name = opt.roles[0] if role == RUN else role
        group = groups.get(group_name) or groups.setdefault(
            group_name, parser.add_argument_group(f"{group_name} options"))
        kwargs: dict[str, Any] = {"dest": opt.dest, "help": opt.help + _default_text(opt)}
        if opt.flag_only:
            kwargs["action"] = "store_false" if opt.default is True else "store_true"
        elif opt.repeatable:
            kwargs.update(type=opt.type, action="append", metavar=opt.metavar)
        else:
            kwargs.update(type=opt.type, default=opt.default, metavar=opt.metavar)
            if opt.choices:
                kwargs["choices"] = opt.choices
            required = opt.required and not (role == RUN and opt.dest == "run_dir")
            kwargs["required"] = required
        group.add_argument(opt.flag, **kwargs)


def _default_text(opt: Opt) -> str:
    """' (default: X)' for --help, X as a user would type it; '' when there is no default to show."""
    if opt.default is None or opt.flag_only or opt.repeatable or "default" in opt.help:
        return ""
    if opt.metavar == "DUR":
        return f" (default: {format_duration_ns(opt.default)})"
    return f" (default: {opt.default})"


def forward(role: str, values: dict[str, Any], skip: tuple[str, ...] = ()) -> list[str]:
    """argv for `apf ROLE` carrying the values of that role's options (defaults left out)."""
    argv: list[str] = []
    for opt in options_for(role):
        if opt.dest in skip:
            continue
        value = values.get(opt.dest)
        if value is None or value == opt.default:
            continue
        if opt.flag_only:
            argv.append(opt.flag)
        elif opt.repeatable:
            argv += [f"{opt.flag}={opt.format(item)}" for item in value]
        else:
            argv.append(f"{opt.flag}={opt.format(value)}")  # '=' keeps a value starting with '-' a value
    return argv


def config_kwargs(role: str, values: dict[str, Any]) -> dict[str, Any]:
    return {o.dest: values[o.dest] for o in options_for(role) if values.get(o.dest) is not None}
