"""`apf`: the command line of apf-emu.

    apf host   run the host daemon (guest memory, stage 2, swap, APF delivery)
    apf guest  run a guest against a running host (vCPUs, tasks, APF handlers)
    apf run    start both as separate processes, wait, report, clean up
    apf stats  show the live counters of a running host
    apf bench  measure sync against async faults; write tables and plots
    apf trace  import, inspect and record memory traces of real programs (--workload trace:FILE)
"""
from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
from typing import NoReturn

from apf.bench.cli import add_arguments as add_bench_arguments
from apf.config_file import parse_args
from apf.options import GUEST, HOST, RUN, add_options, check_output_files, config_kwargs
from apf.memtrace.cli import TRACE, add_trace_parser
from apf.stats_cmd import STATS, add_stats_options
from shared import logrepeat

LOG_LEVELS = ("debug", "info", "warning", "error")

EPILOG = """examples (from a clone, the command is .venv/bin/apf):
  apf run --guest-mem 8MiB --host-mem 2MiB --swap-latency 2ms --tasks 8 --accesses 100 --think 200us --prefill --mode sync
  apf run --guest-mem 8MiB --host-mem 2MiB --swap-latency 2ms --tasks 8 --accesses 100 --think 200us --prefill --mode async
  apf host --run-dir /tmp/apf --guest-mem 16MiB --host-mem 4MiB --once &
  apf guest --run-dir /tmp/apf --tasks 4 --workload zipf --prefill --attach-wait 10s --report out.json

README.md reads the summary (wall / stall / idle); every option, the report, stats, metrics,
fault injection, remote memory, traces and time dilation have a page in docs/.

sizes take B, KiB, MiB, GiB, TiB (64MiB) or a bare number of bytes; durations take ns, us, ms, s
(150us, 2ms) and need the unit on the command line (a bare number in a --config file is seconds)."""


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (argparse prints the whole usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="apf", description="apf-emu: a testbed for asynchronous page faults between a host and a guest, "
                                "as two real processes sharing memory and talking over ZeroMQ.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--log-level", default=None, choices=LOG_LEVELS,
                        help="log verbosity on stderr (default: warning); also accepted after the command")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    host = sub.add_parser(HOST, help="run the host daemon", description="Run the host daemon: it owns guest "
                          "memory and stage 2, swaps to a real file and delivers asynchronous page faults. "
                          "It serves one guest at a time until SIGTERM (or, with --once, until the guest "
                          "powers off).")
    add_options(host, HOST)
    guest = sub.add_parser(GUEST, help="run a guest against a running host",
                           description="Run a guest: vCPU threads run seeded tasks whose every access is "
                           "checked against stage 2; misses trap to the host. At the end every written page "
                           "is read back and verified. Exit status 0 means no error and no corrupt page.")
    add_options(guest, GUEST)
    run = sub.add_parser(RUN, help="start host and guest, run a workload, print a summary",
                         description="Start a host and a guest as separate processes, wait for the guest, "
                         "print a summary and clean up the run dir and shared files, even on failure or "
                         "Ctrl-C.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(run, RUN)
    run.add_argument("--timeout", default="600s", help="give up on the run after this long (default: 600s)",
                     metavar="DUR")
    run.add_argument("--quiet", action="store_true", help="print nothing but errors")
    stats = sub.add_parser(STATS, help="show the live counters of a running host",
                           description="Ask the host serving a run dir for its counters (a STATS request) "
                           "and print them once, or refresh them with --watch until Ctrl-C or --count.")
    add_stats_options(stats)
    bench = sub.add_parser("bench", help="measure: sync vs async sweep, published scenarios, micro-benchmarks",
                           description="Run the benchmark: each point is a real `apf run`; writes results.json, "
                           "results.md and PNG plots to --out. See BENCHMARKS.md.")
    add_bench_arguments(bench)
    add_trace_parser(sub)
    for command in (host, guest, run):
        command.add_argument("--config", metavar="FILE", help="take option values from this TOML file "
                             "(keys are option names: guest-mem = \"32MiB\"); the command line overrides it")
    for command in sub.choices.values():
        if "--log-level" not in command._option_string_actions:
            command.add_argument("--log-level", default=argparse.SUPPRESS, choices=LOG_LEVELS,
                                 help="log verbosity on stderr (default: warning)")
    return parser


def _version() -> str:
    """The installed package's version (pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("apf-emu")
    except PackageNotFoundError:
        return "(not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)   # with --config, the file's values are the defaults
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    repeats = logrepeat.install(logging.getLogger().handlers[0])
    atexit.register(repeats.flush)     # runs before logging's own shutdown (registered earlier)
    values = vars(args)
    try:
        status = _dispatch(args, values)
        sys.stdout.flush()        # inside the try: a reader that went away is seen here, not at exit
        return status
    except BrokenPipeError:
        # The reader of stdout went away (`apf stats --json | head`): it had what it wanted, so end
        # quietly, and point stdout at /dev/null so that Python's own flush at exit finds no pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("apf: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if _is_user_error(exc):
            print(f"{_label(args.command)}: error: {exc}", file=sys.stderr)
            return 2
        raise


def _label(command: str) -> str:
    """Who says an error: `apf COMMAND`, or `apf run (host)` / `apf run (guest)` for a daemon that
    `apf run` started (rundir.RUN_ENV), so that the user reads the command they typed."""
    from shared import rundir
    if command in (HOST, GUEST) and rundir.under_apf_run():
        return f"apf run ({command})"
    return f"apf {command}"


def _dispatch(args: argparse.Namespace, values: dict) -> int:
    """Run the chosen command; its exit status."""
    if args.command in (HOST, GUEST, RUN):
        check_output_files(values)
    if args.command == HOST:
        from host.config import HostConfig
        from host.daemon import run_host
        return run_host(HostConfig(**config_kwargs(HOST, values)))
    if args.command == GUEST:
        from guest.config import GuestConfig
        from guest.daemon import run_guest
        return run_guest(GuestConfig(**config_kwargs(GUEST, values)))
    if args.command == STATS:
        from apf.stats_cmd import run_stats
        return run_stats(values)
    if args.command == TRACE:
        from apf.memtrace.cli import main as run_trace
        return run_trace(values)
    if args.command == "bench":
        from apf.bench.cli import main as run_bench
        return run_bench(values)
    from apf.run import run
    return run(values)


def _is_user_error(exc: Exception) -> bool:
    """Only the project's error vocabulary is the user's to act on; anything else is a bug."""
    from protocol.errors import ApfError
    return isinstance(exc, ApfError)


if __name__ == "__main__":
    sys.exit(main())
