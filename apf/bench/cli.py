"""`apf bench` on the command line: its options, and the command itself (run a plan, or redraw an
earlier run's plots with --replot)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

from apf.bench.orchestrate import run_plan
from apf.bench.output import RESULTS_JSON, RESULTS_MD, redraw

REMOTE_PRESET = "remote-memory"
from apf.bench import outdir
from apf.bench.plan import DEFAULT_REPEAT, POINT_TIMEOUT_S, PRESETS, BenchError, build_plan, count_runs
from apf.bench.validate import (DEFAULT_REPEAT as VALIDATE_REPEAT, EXPERIMENTS, VALIDATION_MD,
                                 count_validation_runs, run_validation)
from apf.options import _duration, _positive_duration, _positive_int, _size


def _list(parse: Callable[[str], Any]) -> Callable[[str], tuple]:
    """An argparse type: comma-separated values, each read by `parse`."""
    def parse_list(text: str) -> tuple:
        try:
            return tuple(parse(part.strip()) for part in text.split(",") if part.strip())
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse_list


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `apf bench`, on its subcommand parser."""
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="directory for results.json, results.md, the PNG plots and each run's report")
    parser.add_argument("--quick", action="store_true",
                        help="a reduced sweep (latency 0 and 2ms x 1 and 8 tasks, one repeat, an 8 MiB guest), "
                             "small presets and micro-benchmarks: a couple of minutes")
    parser.add_argument("--micro", action="store_true", help="only the micro-benchmarks")
    parser.add_argument("--preset", action="append", choices=sorted(PRESETS) + [REMOTE_PRESET], metavar="NAME",
                        help=f"only this published scenario (repeatable): {', '.join(sorted(PRESETS))}; or "
                             f"{REMOTE_PRESET}: swap to a local Redis it starts, against a file and "
                             "redis-benchmark (apf/bench/remote.py)")
    parser.add_argument("--only", type=_list(str), metavar="SECTIONS",
                        help="comma-separated sections to run: sweep, presets, micro, traces, haltpoll, scale-check, "
                             "real-scale (default: sweep, presets, micro, traces; --quick leaves traces out; traces "
                             "replays the shipped traces of real programs; haltpoll measures --halt-poll with one "
                             "task at short swap latencies; scale-check runs points at two dilation factors)")
    parser.add_argument("--real-scale", action="store_true",
                        help="only the break-even map at real-hardware scale: every point with --dilation auto, "
                             "real-equivalent swap latency 5us, 20us, 80us, 300us, 1ms (or --latencies) x tasks "
                             "1, 2, 4, 8 (or --tasks); see BENCHMARKS.md")
    parser.add_argument("--validate", action="store_true",
                        help="only the validation: the published APF experiments (arm64 v4 and v2, x86 2010) at "
                             "real scale under CFS, EEVDF and rr, against their published figures; writes "
                             "validation.json and validation.md (about 15 minutes; see BENCHMARKS.md 'Validation')")
    parser.add_argument("--experiments", type=_list(str), metavar="LIST",
                        help=f"with --validate: only these experiments ({', '.join(EXPERIMENTS)})")
    parser.add_argument("--repeat", type=_positive_int, metavar="N",
                        help=f"runs per point; the median is reported (default {DEFAULT_REPEAT}, quick 1)")
    parser.add_argument("--modes", type=_list(str), metavar="LIST",
                        help="modes to compare: sync, async, adaptive (default: sync,async, plus adaptive "
                             "when `apf host --help` offers --policy adaptive)")
    parser.add_argument("--latencies", type=_list(_duration), metavar="LIST",
                        help="swap latencies of the sweep, e.g. 0,100us,2ms (default 0,100us,500us,2ms,10ms)")
    parser.add_argument("--tasks", type=_list(_positive_int), metavar="LIST",
                        help="runnable task counts of the sweep (default 1,2,4,8,16)")
    parser.add_argument("--accesses", type=_positive_int, metavar="N",
                        help="total accesses per point, split over its tasks (default 2000)")
    parser.add_argument("--guest-mem", type=_size, metavar="SIZE", help="sweep guest memory (default 32MiB)")
    parser.add_argument("--host-mem", type=_size, metavar="SIZE", help="sweep host memory (default 8MiB)")
    parser.add_argument("--think", type=_duration, metavar="DUR", help="sweep think time (default 200us)")
    parser.add_argument("--vcpus", type=_positive_int, metavar="N", help="sweep vCPUs (default 1)")
    parser.add_argument("--point-timeout", type=_positive_duration, default=int(POINT_TIMEOUT_S * 1e9),
                        metavar="DUR", help=f"bound on one run (default {POINT_TIMEOUT_S:g}s)")
    parser.add_argument("--keep-traces", action="store_true", help="keep the traced runs' Perfetto files")
    parser.add_argument("--no-progress", action="store_true", help="print nothing while running")
    parser.add_argument("--replot", action="store_true",
                        help="run nothing: redraw the plots and results.md of an earlier run in --out")


def main(values: dict[str, Any], argv: list[str] | None = None) -> int:
    """`apf bench` with its parsed options (`vars()` of the namespace); `argv`, the options as
    given, is recorded in results.json (default: what follows "bench" in sys.argv). Returns the
    exit status: 0, 1 when a run or a verified run failed, 2 for a usage error."""
    if values.get("replot"):
        return replot(values["out"])
    if values.get("experiments") and not values.get("validate"):
        print("apf bench: error: --experiments needs --validate", file=sys.stderr)
        return 2
    try:
        outdir.check(values["out"], outdir.kind(values))    # one kind of results per --out
    except BenchError as exc:
        print(f"apf bench: error: {exc}", file=sys.stderr)
        return 2
    if values.get("validate"):
        return validate(values)
    if REMOTE_PRESET in (values.get("preset") or []):
        from apf.bench.remote import run_remote
        outdir.mark(values["out"], outdir.kind(values))
        try:
            run_remote(values["out"], bool(values.get("quick")))
        except BenchError as exc:
            print(f"apf bench: error: {exc}", file=sys.stderr)
            return 2
        print(f"apf bench: remote-memory results in {os.path.join(values['out'], 'remote-memory.md')}",
              file=sys.stderr)
        values = {**values, "preset": [p for p in values["preset"] if p != REMOTE_PRESET]}
        if not values["preset"]:
            return 0
    try:
        plan = build_plan(values)
    except BenchError as exc:
        print(f"apf bench: error: {exc}", file=sys.stderr)
        return 2
    out = values["out"]
    outdir.mark(out, outdir.kind(values))
    show = not values.get("no_progress")
    if show:
        print(f"apf bench: {count_runs(plan)} runs ({', '.join(plan.sections)}; modes {', '.join(plan.modes)}) "
              f"-> {out}", file=sys.stderr)
    if argv is None:
        argv = sys.argv[sys.argv.index("bench") + 1:] if "bench" in sys.argv else []
    results = run_plan(plan, out, argv, show_progress=show)
    sweep = results.get("sweep", {})
    failed = [r for r in sweep.get("rows", []) if r["repeats_ok"] < r["repeats"]]
    bad_verify = [v for v in sweep.get("verified", []) if not v["ok"] or v["pages_corrupt"]]
    if show:
        print(f"apf bench: done in {results['duration_s']:.0f}s; results in {os.path.join(out, RESULTS_MD)}",
              file=sys.stderr)
    if failed or bad_verify:
        print(f"apf bench: {len(failed)} point(s) had failed runs, {len(bad_verify)} verified run(s) failed; "
              "see results.json", file=sys.stderr)
        return 1
    return 0


def validate(values: dict[str, Any]) -> int:
    """`apf bench --validate`: returns 0, 1 when some cell has no usable run, 2 for a usage error."""
    names = list(values.get("experiments") or EXPERIMENTS)
    repeat = values.get("repeat") or VALIDATE_REPEAT
    show = not values.get("no_progress")
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        print(f"apf bench: error: --experiments: unknown {', '.join(unknown)}; choose from {', '.join(EXPERIMENTS)}",
              file=sys.stderr)
        return 2
    outdir.mark(values["out"], outdir.kind(values))
    try:
        if show:
            print(f"apf bench: validation, {count_validation_runs(names, repeat)} "
                  f"runs or more ({', '.join(names)}) -> {values['out']}", file=sys.stderr)
        rows = run_validation(names, repeat, values["out"], values["point_timeout"] / 1e9, show)
    except BenchError as exc:
        print(f"apf bench: error: {exc}", file=sys.stderr)
        return 2
    if show:
        print(f"apf bench: validation in {os.path.join(values['out'], VALIDATION_MD)}", file=sys.stderr)
    return 1 if any(r["measured"] is None for r in rows) else 0


def replot(out: str) -> int:
    """`apf bench --replot`: redraw the plots and results.md (and rewrite results.json) of an
    earlier run in `out`, running nothing. Returns the exit status: 2 when `out` has no results.json."""
    path = os.path.join(out, RESULTS_JSON)
    if not os.path.exists(path):
        print(f"apf bench: error: --replot: no {path}", file=sys.stderr)
        return 2
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    redraw(results, out)
    print(f"apf bench: redrew {', '.join(results['plots']) or 'no plots'} and results.md in {out}", file=sys.stderr)
    return 0
