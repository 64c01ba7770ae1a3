"""The bounded stop of child processes (apf/procs.py): SIGTERM, then SIGKILL, every wait bounded;
and the bounded run of a child whose output is read."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

from apf.procs import run_bounded, stop_bounded

SLEEPER = "import time; print('ready', flush=True); time.sleep(60)"
STUBBORN = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")


def _start(code: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"    # its signal handling is in place
    return proc


def test_a_child_that_honours_sigterm_is_not_killed():
    """SIGTERM ends it well within the bound: exit by SIGTERM, not SIGKILL; its output is returned."""
    proc = _start("import sys; print('to stderr', file=sys.stderr, flush=True); " + SLEEPER)
    start = time.monotonic()
    [(out, err)] = stop_bounded([proc], 10.0)
    assert time.monotonic() - start < 5.0
    assert proc.returncode == -signal.SIGTERM
    assert out == "" and "to stderr" in err


def test_a_child_that_ignores_sigterm_is_killed_after_the_bound():
    """SIGTERM ignored: SIGKILL once the bound is up, not before, and not much after."""
    proc = _start(STUBBORN)
    start = time.monotonic()
    stop_bounded([proc], 0.5)
    took = time.monotonic() - start
    assert proc.returncode == -signal.SIGKILL
    assert 0.5 <= took < 5.0


def test_several_children_share_one_deadline_and_exited_ones_are_only_reaped():
    """Two stubborn children cost one bound, not two; a child that already exited keeps its status."""
    done = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], stdin=subprocess.DEVNULL)
    done.wait(timeout=30)
    stubborn = [_start(STUBBORN), _start(STUBBORN)]
    start = time.monotonic()
    outputs = stop_bounded([done, *stubborn], 2.0)
    took = time.monotonic() - start
    assert outputs[0] == (None, None)
    assert done.returncode == 3
    assert [p.returncode for p in stubborn] == [-signal.SIGKILL, -signal.SIGKILL]
    assert 2.0 <= took < 3.9    # one shared bound: a bound each would take 4 s


def test_a_bounded_run_returns_the_output_of_a_child_that_finishes():
    """Within the timeout: its exit status and both streams, not timed out."""
    done, timed_out = run_bounded([sys.executable, "-c", "import sys; print('out'); sys.exit('err')"], 30.0, 5.0)
    assert not timed_out
    assert (done.returncode, done.stdout, done.stderr) == (1, "out\n", "err\n")


def test_a_bounded_run_stops_a_child_that_outlives_its_timeout():
    """Past the timeout the child gets SIGTERM; what it printed before is kept."""
    start = time.monotonic()
    done, timed_out = run_bounded([sys.executable, "-c", SLEEPER], 3.0, 5.0)   # time to start and print
    assert timed_out and time.monotonic() - start < 8.0
    assert done.returncode == -signal.SIGTERM and done.stdout == "ready\n"
