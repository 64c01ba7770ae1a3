"""A replayed trace's pages hold content before the workload by default, as a real program's
do (its text, the data it loaded): the pages it only reads swap like any other. `--zero-fill`
keeps the old meaning, pages never written map the zero page; the summary says which."""
from __future__ import annotations

from tests.helpers import apf, run_report

TRACE_RUN = ["--workload", "trace:traces/sqlite-join.apfmt", "--tasks", "2", "--guest-mem", "4MiB",
             "--host-mem", "512KiB", "--ns-per-insn", "0", "--accesses", "3000", "--no-verify"]


def test_a_trace_replays_on_written_pages_by_default(tmp_path, shm_leftovers):
    """Without options a prefill phase writes every page of the tasks' regions first, so the
    workload on 512 KiB of host memory reads pages back from swap; the report and the summary say
    the pages were written."""
    proc, r = run_report(tmp_path, *TRACE_RUN)
    assert proc.returncode == 0, proc.stderr
    assert "prefill" in r["phases"] and r["workload"]["trace"]["prefilled"] is True
    assert r["workload_swap"]["reads"] > 0, r["workload_swap"]
    assert ("trace sqlite-join.apfmt: every page written before the workload (its read-only pages hold data "
            "and swap)") in proc.stdout


def test_zero_fill_leaves_a_traces_pages_unwritten(tmp_path, shm_leftovers):
    """With --zero-fill there is no prefill phase: this stretch of the trace reads back nothing from
    swap (its pages are first touched in the workload, the read-only ones map the zero page), and
    the summary names --zero-fill."""
    proc, r = run_report(tmp_path, *TRACE_RUN, "--zero-fill")
    assert proc.returncode == 0, proc.stderr
    assert "prefill" not in r["phases"] and r["workload"]["trace"]["prefilled"] is False
    assert r["workload_swap"]["reads"] == 0, r["workload_swap"]
    assert "pages not written before the workload (--zero-fill: read-only pages map the zero page" in proc.stdout


def test_zero_fill_with_prefill_is_one_line_and_exit_2():
    """--zero-fill and --prefill together contradict each other: one error line, exit status 2."""
    proc = apf("run", *TRACE_RUN, "--zero-fill", "--prefill", timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "apf run: error: --zero-fill and --prefill contradict each other: --zero-fill leaves the pages a workload "
        "only reads unwritten, --prefill writes them all first"]
