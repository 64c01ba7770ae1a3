"""`apf trace`: import, inspect and record memory traces of real programs.

    apf trace import IN [-o OUT]          any format (lackey, pageref, native; gz/xz/zst) -> memtrace
    apf trace info FILE [--json]          counts, footprint, working set, sizing hints
    apf trace record -o OUT -- CMD ...    run CMD under valgrind lackey, stream it into a memtrace

A malformed input is a one-line error naming the file and line, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from protocol.errors import MemtraceError

TRACE = "trace"


def add_trace_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(TRACE, help="import, inspect and record memory traces of real programs",
                            description="Memory traces of real programs for --workload trace:FILE. Input "
                            "formats are detected from the content: valgrind lackey (--trace-mem=yes), "
                            "page-reference text (ADDR R|W [INSNS]) and the native memtrace; .gz, .xz and "
                            ".zst compression is undone whatever the file name.")
    actions = parser.add_subparsers(dest="trace_command", metavar="ACTION", required=True)
    imp = actions.add_parser("import", help="convert a trace to the native memtrace (streaming)",
                             description="Convert a trace of any format to the native memtrace, streaming: "
                             "IN may be '-' (a pipe) and gigabytes long; memory stays bounded.")
    imp.add_argument("input", metavar="IN", help="trace file, or - for standard input")
    imp.add_argument("-o", "--output", metavar="OUT", help="memtrace to write (default: IN with its "
                     "extensions replaced by .apfmt)")
    imp.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    info = actions.add_parser("info", help="records, accesses, footprint and working set of a trace",
                              description="Print a trace's counts, footprint and working set (distinct pages "
                              "per window of records), and what they mean for --guest-mem and --host-mem.")
    info.add_argument("file", metavar="FILE")
    info.add_argument("--json", action="store_true", help="print JSON (the fields are an interface)")
    rec = actions.add_parser("record", help="record a command with valgrind lackey into a memtrace",
                             description="Run CMD once natively (timed: ns per instruction) and once under "
                             "valgrind --tool=lackey --trace-mem=yes, streaming the trace into a memtrace. "
                             "Needs valgrind.")
    rec.add_argument("-o", "--output", metavar="OUT", required=True, help="memtrace to write")
    rec.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    rec.add_argument("command_argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    return parser


def default_output(path: str) -> str:
    base = os.path.basename(path) if path != "-" else "stdin"
    for ext in (".gz", ".xz", ".zst", ".txt", ".trace", ".lackey", ".out", ".log"):
        base = base.removesuffix(ext)
    return os.path.join(os.path.dirname(path) if path != "-" else "", base + ".apfmt")


def main(values: dict[str, Any]) -> int:
    """`apf trace ACTION`; a file that cannot be read or written is a MemtraceError (one line)."""
    try:
        return _main(values)
    except OSError as exc:
        where = exc.filename if exc.filename is not None else "a trace file"
        raise MemtraceError(f"{where}: {exc.strerror or exc}") from None


def _main(values: dict[str, Any]) -> int:
    action = values["trace_command"]
    if action == "import":
        from apf.memtrace.importer import import_trace, stderr_progress
        out = values.get("output") or default_output(values["input"])
        progress = None if values.get("quiet") else stderr_progress("apf trace import")
        header = import_trace(values["input"], out, progress=progress)
        _end_progress(progress)
        print(f"{out}: {header.records:,} records, {header.accesses:,} accesses, {header.distinct_pages:,} "
              f"pages ({header.footprint_bytes / 2**20:.1f} MiB) from a {header.source_format} trace")
        return 0
    if action == "info":
        from apf.memtrace.importer import trace_info
        figures = trace_info(values["file"])
        print(json.dumps(figures, indent=2, sort_keys=True) if values.get("json") else format_info(figures))
        return 0
    from apf.memtrace.importer import stderr_progress
    from apf.memtrace.record import record
    argv = list(values.get("command_argv") or [])
    if argv[:1] == ["--"]:
        argv = argv[1:]
    progress = None if values.get("quiet") else stderr_progress("apf trace record")
    header = record(argv, values["output"], progress, notice=lambda text: print(f"apf trace record: {text}",
                                                                                  file=sys.stderr, flush=True))
    _end_progress(progress)
    print(f"{values['output']}: {header.records:,} records, {header.instructions:,} instructions, "
          f"{header.distinct_pages:,} pages ({header.footprint_bytes / 2**20:.1f} MiB), "
          f"{header.ns_per_insn:.3f} ns per instruction natively")
    return 0


def _end_progress(progress: Any) -> None:
    if progress is not None and sys.stderr.isatty():
        print(file=sys.stderr)


def format_info(f: dict[str, Any]) -> str:
    """`apf trace info` as text."""
    mib = lambda pages: pages * f["page_size"] / 2**20  # noqa: E731
    lines = [
        f"{f['path']}: {f['format']} memtrace" if f["format"] == "native" else f"{f['path']}: {f['format']} trace",
        f"  source format     {f['source_format']}",
        f"  records           {f['records']:,} (page-level: consecutive accesses to one page merged)",
        f"  accesses          {f['accesses']:,} ({f['reads']:,} reads, {f['writes']:,} writes)",
        f"  distinct pages    {f['distinct_pages']:,}",
        f"  footprint         {f['footprint_bytes']:,} bytes ({f['footprint_bytes'] / 2**20:.1f} MiB)",
        f"  instructions      {f['instructions']:,}" + ("" if f["has_instructions"] else " (no counts)"),
    ]
    if f.get("ns_per_insn"):
        lines.append(f"  ns/instruction    {f['ns_per_insn']:.3f} (measured on a native run)")
    lines.append("  working set       distinct pages per window of records (mean / max)")
    for window, ws in f["working_set"].items():
        lines.append(f"    {int(window):>9,} records  {ws['mean_pages']:>10,.0f} / {ws['max_pages']:,} pages "
                     f"({mib(ws['mean_pages']):.1f} / {mib(ws['max_pages']):.1f} MiB)")
    big = f["working_set"][max(f["working_set"], key=int)]
    guest_mib = -(-f["footprint_bytes"] // 2**20)
    lines.append(f"  sizing            --guest-mem {guest_mib}MiB or more per task (private pages); "
                 f"--host-mem below {max(1, round(mib(big['max_pages'])))}MiB swaps within the working set")
    prov = f.get("provenance") or {}
    if prov.get("command"):
        lines.append(f"  recorded from     {' '.join(prov['command'])}"
                     + (f" ({prov['package']['name']} {prov['package']['version']})" if prov.get("package") else ""))
    return "\n".join(lines)


def check_trace_fits(values: dict[str, Any]) -> None:
    """`apf run --workload trace:FILE`: the trace must exist, be a memtrace, and its footprint x
    tasks (once with --trace-shared) fit in --guest-mem, checked before any daemon starts.
    Raises ValueError with the one-line reason."""
    workload = values.get("workload") or ""
    if not workload.startswith("trace:"):
        return
    from guest.config import ConfigError, GuestConfig
    from guest.daemon import trace_misfit
    from shared.memtrace import PAGE_SIZE
    cfg = GuestConfig(run_dir="-", workload=workload)
    header = cfg._trace_header()
    tasks, shared = values.get("tasks") or 1, bool(values.get("trace_shared"))
    guest_pages = (values.get("guest_mem") or 0) // PAGE_SIZE
    if header.distinct_pages * (1 if shared else tasks) > guest_pages:
        raise ConfigError(trace_misfit(cfg.trace_path, header.distinct_pages, tasks, shared, guest_pages))
