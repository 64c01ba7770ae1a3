"""A run cut short (its host killed mid swap-in) writes a partial report whose open phase is
timed until the cut, not 0.0."""
from tests.helpers import run_report


def test_partial_report_times_the_workload_until_the_cut(tmp_path, shm_leftovers):
    """With the host SIGKILLed as a swap-in starts in the workload, the guest's partial report has
    the workload's faults and stall and a wall time above 0 that covers them; its summary says the
    pages were not verified because the run was cut, not "verified 0 in 0.000s"."""
    proc, report = run_report(tmp_path, "--guest-mem", "4MiB", "--host-mem", "1MiB", "--mode", "sync",
                              "--prefill", "--accesses", "400", "--swap-latency", "1ms",
                              "--inject", "kill-host:mid-io:after=80", timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert report["partial"] and "workload" in report["phases"] and "verify" not in report["phases"]
    assert report["faults"]["total"] > 0 and report["vcpu_stall_s"] > 0
    assert report["wall_s"] >= report["vcpu_stall_s"] > 0      # one vCPU: its stall fits in the wall
    assert "wall 0.000s" not in proc.stdout
    assert "pages not verified: the run was cut before its verify phase" in proc.stdout
