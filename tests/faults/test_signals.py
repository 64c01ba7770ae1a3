"""SIGTERM and SIGINT stop both daemons cleanly within a bound, with a partial report."""
import json
import os
import signal
import subprocess
import time

from tests.helpers import APF, ROOT

LONG = ["--guest-mem", "4MiB", "--host-mem", "1MiB", "--accesses", "100000", "--swap-latency", "1ms",
        "--tasks", "2"]


def _wait_for(path: str, bound_s: float = 20) -> None:
    deadline = time.monotonic() + bound_s
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.path.exists(path)


def test_sigterm_to_apf_run_stops_everything_and_cleans_up(tmp_path, shm_leftovers):
    """SIGTERM to `apf run`: host and guest stop within the bound, the run dir is removed, exit 130."""
    run_dir = str(tmp_path / "run")
    proc = subprocess.Popen(APF + ["run", "--run-dir", run_dir, *LONG], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(os.path.join(run_dir, "host.json"))
    time.sleep(1.0)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - start < 15
    assert proc.returncode == 130
    assert "interrupted; stopping host and guest" in err
    assert not os.path.exists(os.path.join(run_dir, "host.json"))


def test_sigint_to_guest_leaves_a_partial_report(tmp_path, host, run_dir):
    """SIGINT to a running guest: it stops its vCPUs, powers off, writes a partial report naming
    the interruption and exits non-zero; the host is ready for the next guest."""
    h = host("--guest-mem", "4MiB", "--host-mem", "1MiB", "--swap-latency", "1ms")
    report = str(tmp_path / "partial.json")
    guest = subprocess.Popen(APF + ["guest", "--run-dir", run_dir, "--accesses", "100000", "--report", report],
                             cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    guest.send_signal(signal.SIGINT)
    out, err = guest.communicate(timeout=30)
    assert guest.returncode == 1
    with open(report) as f:
        r = json.load(f)
    assert r["error"] == "guest interrupted" and r["tasks"]["accesses"] > 0
    assert "apf guest: error: guest interrupted" in err
    assert h.proc.poll() is None
