"""SIGTERM and SIGINT stop both daemons cleanly within a bound, with a partial report."""
import json
import os
import signal
import subprocess
import time

import psutil
import pytest

from shared import rundir
from tests.helpers import APF, ROOT, RawGuest, wait_until

LONG = ["--guest-mem", "4MiB", "--host-mem", "1MiB", "--accesses", "100000", "--swap-latency", "1ms",
        "--tasks", "2"]


def _wait_for(path: str, bound_s: float = 20) -> None:
    deadline = time.monotonic() + bound_s
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.path.exists(path)


def _wait_for_faults(run_dir: str, at_least: int, bound_s: float = 20) -> None:
    """Ask the run dir's host for STATS (as `apf stats` does) until the attached guest has taken
    `at_least` faults: the guest is past its start-up and running its workload."""
    spy = RawGuest(rundir.read_host_json(run_dir), name="spy")
    try:
        wait_until(lambda: spy.stats()["faults"]["total"] >= at_least,
                   f"the guest took {at_least} faults", bound_s, every_s=0.05)
    finally:
        spy.close()


@pytest.mark.parametrize("given_run_dir", [True, False], ids=["--run-dir", "own-run-dir"])
def test_sigterm_to_apf_run_stops_everything_and_cleans_up(tmp_path, shm_leftovers, given_run_dir):
    """SIGTERM to `apf run` while the guest runs: host and guest stop within the bound (both
    processes are gone) and exit 130. A run dir given with --run-dir is kept (README) but left
    empty: no host.json, socket, lock, swap file or report; a run dir `apf run` made is removed."""
    given = str(tmp_path / "run")
    proc = subprocess.Popen(APF + ["run", *(["--run-dir", given] if given_run_dir else []), *LONG], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    host = wait_until(lambda: next((c for c in root.children() if "host" in c.cmdline()), None),
                      "the host started", 20)
    run_dir = host.cmdline()[host.cmdline().index("--run-dir") + 1]
    assert (run_dir == given) is given_run_dir
    _wait_for(os.path.join(run_dir, "host.json"))
    _wait_for_faults(run_dir, 20)
    children = root.children()
    assert len(children) == 2, children                # host and guest
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - start < 15
    assert proc.returncode == 130
    assert "apf run: interrupted (SIGTERM); stopping the guest, then the host" in err
    if given_run_dir:
        assert os.listdir(run_dir) == []
    else:
        assert not os.path.exists(run_dir)
    assert [c.pid for c in children if psutil.pid_exists(c.pid)] == []


def test_sigint_to_guest_leaves_a_partial_report(tmp_path, host, run_dir):
    """SIGINT to a running guest: it stops its vCPUs, powers off, writes a partial report naming
    the interruption and exits non-zero; the host is ready for the next guest."""
    h = host("--guest-mem", "4MiB", "--host-mem", "1MiB", "--swap-latency", "1ms")
    report = str(tmp_path / "partial.json")
    guest = subprocess.Popen(APF + ["guest", "--run-dir", run_dir, "--accesses", "100000", "--report", report],
                             cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    _wait_for_faults(run_dir, 20)
    guest.send_signal(signal.SIGINT)
    out, err = guest.communicate(timeout=30)
    assert guest.returncode == 1
    with open(report) as f:
        r = json.load(f)
    assert r["error"] == "guest interrupted" and r["tasks"]["accesses"] > 0
    assert "result: FAILED - guest interrupted (partial report: the run was cut short)" in err
    assert h.proc.poll() is None


def test_apf_run_kills_a_daemon_that_ignores_sigterm_after_the_bound(tmp_path, shm_leftovers):
    """SIGTERM to `apf run` while its host is stopped (SIGSTOP: it cannot act on SIGTERM): `apf run`
    asks both daemons to stop, waits STOP_BOUND_S (10 s) for the host, then SIGKILLs it; it exits
    130 soon after the bound, no daemon survives, and the dead host's shared files are removed."""
    from apf.run import STOP_BOUND_S
    proc = subprocess.Popen(APF + ["run", *LONG], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    try:
        host = wait_until(lambda: next((c for c in root.children() if "host" in c.cmdline()), None),
                          "the host started", 20)
        run_dir = host.cmdline()[host.cmdline().index("--run-dir") + 1]
        _wait_for(os.path.join(run_dir, "host.json"))
        _wait_for_faults(run_dir, 20)
        children = root.children()
        host.suspend()
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=STOP_BOUND_S + 20)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert STOP_BOUND_S - 0.5 <= took <= STOP_BOUND_S + 5, took
    assert [c.pid for c in children if psutil.pid_exists(c.pid)] == []
    assert not os.path.exists(run_dir)
