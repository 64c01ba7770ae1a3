"""Stopping child processes within a bound: how `apf run`, `apf bench` and the micro-benchmarks
end a child that has to go, and run one whose output they read.

A child is asked first (SIGTERM: it can then stop its own children and remove its files) and
killed (SIGKILL) only if it has not exited when the bound is up. No wait here is unbounded: a
child that even SIGKILL cannot end (stuck in the kernel) is left behind and reported, rather
than hanging the caller.
"""
from __future__ import annotations

import subprocess
import time
from typing import Any, Sequence

LAST_LOOK_S = 0.1   # a child reached after the shared deadline still gets this long to be reaped


def stop_bounded(procs: Sequence[subprocess.Popen], bound_s: float) -> list[tuple[Any, Any]]:
    """Stop every process of `procs` that is still running: SIGTERM, then SIGKILL, all bounded.

    Each running process gets SIGTERM at once; then each is awaited in turn until one deadline
    `bound_s` seconds away, and at least LAST_LOOK_S seconds. One still running then gets
    SIGKILL and is awaited for at most `bound_s` seconds more. Every wait is bounded, so the
    call returns within about len(procs) x (bound_s + LAST_LOOK_S) + bound_s seconds. A process
    that has already exited is only reaped.

    Pipes are read while waiting (so a child blocked writing to a full pipe still exits).
    Returns, in the order of `procs`, each process's (stdout, stderr) as Popen.communicate()
    gives them: None for a stream that is not a pipe, and (None, None) for a process still
    running after SIGKILL (its `returncode` is then None). Raises nothing of its own.
    """
    for proc in procs:
        proc.terminate()            # a no-op for a process that has exited
    deadline = time.monotonic() + bound_s
    return [_reap_or_kill(proc, max(LAST_LOOK_S, deadline - time.monotonic()), bound_s) for proc in procs]


def run_bounded(argv: list[str], timeout_s: float, stop_bound_s: float) -> tuple[subprocess.CompletedProcess, bool]:
    """Run `argv` to completion, stdin from /dev/null, stdout and stderr captured as text.

    Once `timeout_s` seconds have passed, the child is stopped with stop_bounded(..., stop_bound_s);
    so it is when this call is interrupted (Ctrl-C), before the exception goes on, so the child
    can still remove its files. Returns the CompletedProcess (returncode None for a child still
    running after SIGKILL, its output then None) and whether it was stopped for the timeout."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        [(out, err)] = stop_bounded([proc], stop_bound_s)
    except BaseException:
        stop_bounded([proc], stop_bound_s)
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), timed_out


def _reap_or_kill(proc: subprocess.Popen, term_wait_s: float, kill_wait_s: float) -> tuple[Any, Any]:
    try:
        return proc.communicate(timeout=term_wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
    try:
        return proc.communicate(timeout=kill_wait_s)
    except subprocess.TimeoutExpired:
        return None, None
