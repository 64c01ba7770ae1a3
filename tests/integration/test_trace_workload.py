"""`--workload trace:FILE` end to end: the shipped traces of real programs replay in real guest
processes, synchronously and with APF, with every written page verified; a trace that does not
fit is refused before anything starts."""
from __future__ import annotations

import os

import pytest

from shared.memtrace import read_header
from tests.helpers import ROOT, apf, run_report

TRACES = os.path.join(ROOT, "traces")
SHIPPED = ["xz-9.apfmt", "sqlite-join.apfmt", "sort-external.apfmt"]
LARGE = ["sort-long.apfmt", "sqlite-blobs.apfmt"]      # footprints of tens of MiB


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_traces_replay_with_every_page_verified(tmp_path, name, mode):
    """Each shipped trace runs in both modes, prefilled, with host memory below its footprint: OK, every
    written page verified, and the report names the trace and the pages it touched."""
    path = os.path.join(TRACES, name)
    header = read_header(path)
    guest_mib = max(4, -(-2 * header.footprint_bytes // (1 << 20)) + 1)
    proc, report = run_report(tmp_path, "--guest-mem", f"{guest_mib}MiB", "--host-mem", "256KiB", "--mode", mode, "--prefill",
                              "--swap-latency", "500us", "--tasks", "2", "--accesses", "1500",
                              "--workload", f"trace:{path}")
    _check_replayed(proc, report, path, mode, 1500)


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("name", LARGE)
def test_large_shipped_traces_replay_with_every_written_page_verified(tmp_path, name, mode):
    """The traces of tens of MiB run in both modes with a host of 16 pages, not prefilled (writing
    and reading back their whole footprint would take most of a test's time): OK, every page the
    run wrote verified, and the report names the trace."""
    path = os.path.join(TRACES, name)
    header = read_header(path)
    assert header.footprint_bytes >= 16 << 20
    guest_mib = -(-2 * header.footprint_bytes // (1 << 20)) + 1
    proc, report = run_report(tmp_path, "--guest-mem", f"{guest_mib}MiB", "--host-mem", "64KiB", "--mode", mode,
                              "--swap-latency", "500us", "--tasks", "2", "--accesses", "3000",
                              "--workload", f"trace:{path}")
    _check_replayed(proc, report, path, mode, 3000)


def _check_replayed(proc, report, path, mode, accesses):
    header = read_header(path)
    assert proc.returncode == 0, proc.stderr
    assert report["ok"] and report["pages_corrupt"] == 0
    assert report["pages_verified"] == report["pages_written"] > 0
    assert report["tasks"]["accesses"] == 2 * accesses
    trace = report["workload"]["trace"]
    assert (trace["path"], trace["sha256"], trace["format"]) == (path, header.source_sha256, "lackey")
    assert (trace["records"], trace["distinct_pages"], trace["shared"]) == (header.records,
                                                                           header.distinct_pages, False)
    assert 0 < report["pages_touched"] <= 2 * header.distinct_pages
    if mode == "async":
        assert report["faults"]["async"] > 0


def test_shared_trace_tasks_use_one_set_of_pages(tmp_path):
    """With --trace-shared, four tasks touch no more pages than the trace has."""
    path = os.path.join(TRACES, "sort-external.apfmt")
    proc, report = run_report(tmp_path, "--guest-mem", "2MiB", "--host-mem", "512KiB", "--tasks", "4",
                              "--accesses", "2000", "--trace-shared", "--workload", f"trace:{path}")
    assert proc.returncode == 0 and report["ok"], proc.stderr
    assert report["workload"]["trace"]["shared"] is True
    assert report["pages_touched"] <= read_header(path).distinct_pages


def test_a_trace_larger_than_guest_memory_is_refused_before_the_run(tmp_path):
    """Footprint x tasks above --guest-mem: one line naming the trace and the size to give, exit 2."""
    path = os.path.join(TRACES, "xz-9.apfmt")
    proc = apf("run", "--guest-mem", "16MiB", "--host-mem", "4MiB", "--tasks", "2", "--workload", f"trace:{path}",
               timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"apf run: error: {path}: the trace's footprint (3166 pages x 2 tasks = 6332 pages) does not fit in guest "
        "memory (4096 pages): give --guest-mem 25MiB or more, fewer --tasks, or --trace-shared"]


def test_a_text_trace_is_refused_with_how_to_import_it(tmp_path):
    """A workload trace must be a memtrace: a text trace gets the import command to run."""
    src = os.path.join(str(tmp_path), "t.txt")
    with open(src, "w") as f:
        f.write("0x1000 R\n")
    proc = apf("run", "--guest-mem", "4MiB", "--host-mem", "1MiB", "--workload", f"trace:{src}", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"apf run: error: {src}: not an apf memtrace (convert it with "
                                   f"`apf trace import {src} -o OUT`)")
