"""A guest started before its host: --attach-wait waits for the host's run dir, and the error
without it names the option."""
from __future__ import annotations

import subprocess
import time

from tests.helpers import APF, ROOT, HostProcess, apf


def test_guest_started_first_attaches_once_the_host_is_up(run_dir, tmp_path):
    """With --attach-wait, a guest whose run dir does not exist yet waits for the host that is
    starting and runs to completion against it (the host-then-guest block of docs/options.md)."""
    report = str(tmp_path / "out.json")
    guest = subprocess.Popen(APF + ["guest", "--run-dir", run_dir, "--tasks", "2", "--accesses", "50",
                                    "--attach-wait", "20s", "--report", report],
                             cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    host = None
    try:
        time.sleep(0.5)           # the guest is looking before the host exists: the case under test
        assert guest.poll() is None, guest.communicate(timeout=10)
        host = HostProcess(run_dir, "--guest-mem", "4MiB", "--host-mem", "4MiB")
        out, err = guest.communicate(timeout=120)
        assert guest.returncode == 0, err
        assert "result: OK" in out
    finally:
        if guest.poll() is None:
            guest.kill()
            guest.wait(timeout=10)
        if host is not None:
            host.stop()


def test_missing_run_dir_error_names_attach_wait(run_dir):
    """Without --attach-wait the guest fails at once, and its one line says the option exists."""
    proc = apf("guest", "--run-dir", run_dir, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"apf guest: error: run dir {run_dir} does not exist; start `apf host "
                                   f"--run-dir {run_dir}` first (--attach-wait DUR waits for a host that "
                                   f"is still starting)")
