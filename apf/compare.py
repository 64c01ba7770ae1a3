"""`python -m apf.compare BASE.json OTHER.json`: one line comparing two run reports, and a warning on
stderr for a report whose workload never swapped (it measures no page-fault cost)."""
from __future__ import annotations

import json
import sys


def compare(base: dict, other: dict) -> str:
    """One line: `other`'s workload wall time as a ratio of `base`'s, the vCPU stalls, and, when
    both reports have them, the guest's CPU time during the workload (report `cpu.guest_s`) and
    the idle polls that caught their interrupt (report `idle`, with --halt-poll).
    Raises KeyError when a report lacks `mode`, `wall_s` or `vcpu_stall_s`."""
    ratio = other["wall_s"] / base["wall_s"] if base["wall_s"] else float("nan")
    line = (f"{other['mode']} wall time is {ratio:.2f} of {base['mode']} "
            f"({base['wall_s']:.3f}s -> {other['wall_s']:.3f}s); vCPU stall "
            f"{base['vcpu_stall_s']:.3f}s -> {other['vcpu_stall_s']:.3f}s")
    cpu = [(r.get("cpu") or {}).get("guest_s") for r in (base, other)]
    if None not in cpu:
        line += f"; guest CPU {cpu[0]:.3f}s -> {cpu[1]:.3f}s"
    idle = [r.get("idle") or {} for r in (base, other)]
    if any(i.get("polls") for i in idle):
        line += "; idle polls caught " + " -> ".join(f"{i.get('poll_hits', 0)}/{i.get('polls', 0)}" for i in idle)
    real = [r.get("real_equivalent") for r in (base, other)]
    if all(real):    # both dilated: the real-equivalent clock too (wall / D of each)
        factors = [r["dilation"]["factor"] for r in (base, other)]
        ratio = real[1]["wall_s"] / real[0]["wall_s"] if real[0]["wall_s"] else float("nan")
        line += (f"; real-equivalent wall {ratio:.2f} ({real[0]['wall_s'] * 1e3:.3f}ms at D {factors[0]:g} -> "
                 f"{real[1]['wall_s'] * 1e3:.3f}ms at D {factors[1]:g})")
    return line


def never_swapped(report: dict) -> bool:
    """True when the report's workload phase read nothing from swap (`workload_swap.reads` 0): such
    a run had no major fault, so it measures no page-fault cost and its ratio says nothing about
    APF. False when the report does not say (an older report without `workload_swap`)."""
    reads = (report.get("workload_swap") or {}).get("reads")
    return reads == 0


def warnings(paths: list[str], reports: list[dict]) -> list[str]:
    """One line per report that never swapped in its workload, naming the file and what to change."""
    return [f"apf.compare: warning: {path} ({report.get('mode')}) never swapped in its workload phase "
            f"(workload_swap.reads 0): it measures no page-fault cost; give --host-mem less than the "
            f"working set, or --prefill" for path, report in zip(paths, reports) if never_swapped(report)]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m apf.compare BASE_REPORT.json OTHER_REPORT.json", file=sys.stderr)
        return 2
    try:
        reports = [json.load(open(path, encoding="utf-8")) for path in argv]
        print(compare(*reports))
        for line in warnings(argv, reports):
            print(line, file=sys.stderr)
    except (OSError, ValueError, KeyError) as exc:
        print(f"apf.compare: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
