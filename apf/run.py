"""`apf run`: host and guest as two real processes, one report, nothing left behind.

The host starts first (with --once, so it exits when the guest powers off); the guest starts
once `host.json` appears. Whatever happens (failure, timeout, Ctrl-C, SIGTERM), both processes
are stopped within a bound and the run dir and shared-memory files are removed.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from shared import timeline
from apf.options import GUEST, HOST, config_kwargs, forward
from apf.memtrace.cli import check_trace_fits
from guest.config import GuestConfig
from guest.dilation import workload_pages
from protocol.messages import PAGE_SIZE
from host.config import HostConfig
from apf.procs import stop_bounded
from shared.units import parse_duration_ns
from guest.report import print_summary
from shared import rundir
from protocol.errors import EXIT_GUEST_DROPPED, ConfigError, RunError

HOST_READY_BOUND_S = 20.0     # host.json must appear within this
STOP_BOUND_S = 10.0           # a daemon asked to stop gets this long before SIGKILL
HOST_AFTER_FAILED_GUEST_S = 2.0   # a host whose guest failed is stopped at once, SIGKILLed after this
GUEST_POLL_S = 0.2            # how often `apf run` looks at the host while it waits for the guest


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop()


def validate(values: dict[str, Any]) -> None:
    """Check both daemons' configurations here, with their own validation, so that a bad value is
    one error from `apf run` rather than a daemon's error and then `apf run`'s. Raises ConfigError."""
    common = {"run_dir": values.get("run_dir") or tempfile.gettempdir(), "vcpus": values.get("vcpus") or 1}
    HostConfig(**{**config_kwargs(HOST, values), **common}).validate()
    guest = GuestConfig(**{**config_kwargs(GUEST, values), **common, "report": None, "trace": None}).validate()
    workload_pages(guest, values["guest_mem"] // PAGE_SIZE)   # both refused here, before any daemon starts
    try:
        timeout_ns = parse_duration_ns(values.get("timeout") or "600s", require_unit=True)
    except ValueError as exc:
        raise ConfigError(f"--timeout: {exc}") from None
    if timeout_ns <= 0:
        raise ConfigError("--timeout must be above 0")


def run(values: dict[str, Any]) -> int:
    validate(values)
    timeout_s = parse_duration_ns(values.get("timeout") or "600s", require_unit=True) / 1e9
    own_dir = values.get("run_dir") is None
    run_dir = values.get("run_dir") or tempfile.mkdtemp(prefix="apf-run-")
    if not own_dir:
        rundir.prepare(run_dir)
    procs: list[subprocess.Popen] = []
    created: list[str] = []
    shm_files: list[str] = []
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        return _run(values, run_dir, own_dir, timeout_s, procs, created, shm_files)
    except (KeyboardInterrupt, _Stop) as exc:
        why = "SIGINT" if isinstance(exc, KeyboardInterrupt) else "SIGTERM"
        print(f"apf run: interrupted ({why}); stopping the guest, then the host", file=sys.stderr)
        # The guest first: as it stops it asks the host for its figures and writes its partial
        # report, which needs the host still up.
        stop_bounded(procs[1:], STOP_BOUND_S)
        stop_bounded(procs[:1], STOP_BOUND_S)
        _write_partial_report(values, run_dir, procs, why)
        return 130
    finally:
        stop_bounded(procs, STOP_BOUND_S)      # no process outlives `apf run`
        _cleanup(run_dir, own_dir, created, shm_files)
        signal.signal(signal.SIGTERM, previous)


def _die_with_parent() -> None:
    """In the child, before exec: a process group of its own, so that a terminal's Ctrl-C (sent to
    the foreground group) reaches `apf run` alone, which stops the guest first and the host after
    (the partial report keeps the host's figures); and SIGTERM if `apf run` dies, even by SIGKILL
    (no orphans)."""
    os.setpgid(0, 0)
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the bounded stop in `run` still applies


def _spawn(argv: list[str], own_dir: bool) -> subprocess.Popen:
    # The summary is said once, by `apf run` (rundir.RUN_ENV); with a run dir of its own, the
    # daemons remove it if `apf run` dies first (rundir.OWNER_ENV).
    env = {**os.environ, rundir.RUN_ENV: str(os.getpid())}
    if own_dir:
        env[rundir.OWNER_ENV] = str(os.getpid())
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, env=env)


def _daemon_argv(values: dict[str, Any], role: str) -> list[str]:
    return [sys.executable, "-m", "apf", "--log-level", values.get("log_level") or "warning", role]


def _run(values: dict[str, Any], run_dir: str, own_dir: bool, timeout_s: float, procs: list, created: list,
         shm_files: list) -> int:
    check_trace_fits(values)
    vcpus = values.get("vcpus") or 1
    guest_report = os.path.join(run_dir, "guest-report.json")
    traces = [os.path.join(run_dir, f"{role}-trace.json") for role in (HOST, GUEST)] if values.get("trace") else []
    created += [guest_report, *traces]
    skip = ("run_dir", "vcpus", "report", "trace", "once")
    host_argv = _daemon_argv(values, HOST) + ["--run-dir", run_dir, "--vcpus", str(vcpus), "--once"]
    host_argv += forward(HOST, values, skip) + (["--trace", traces[0]] if traces else [])
    host = _spawn(host_argv, own_dir)
    procs.append(host)
    info = _wait_for_host(run_dir, host)
    if info is None:
        return 2           # the host refused its input (e.g. a size it cannot map) and said why, in one line
    shm_files += list(info.get("files", {}).values())
    guest_argv = _daemon_argv(values, GUEST) + ["--run-dir", run_dir, "--vcpus", str(vcpus),
                                                 "--report", guest_report]
    guest_argv += forward(GUEST, values, skip + ("metrics",)) + (["--trace", traces[1]] if traces else [])
    guest = _spawn(guest_argv, own_dir)
    procs.append(guest)
    guest_rc = _wait_for_guest(guest, host, timeout_s)
    if guest_rc == 0:
        host_rc = _wait_or_stop(host)     # it powered off: the host (--once) is on its way out
    else:
        # The guest failed: a host it found dead or silent is not waited for (SIGTERM now).
        stop_bounded([host], HOST_AFTER_FAILED_GUEST_S)
        host_rc = host.returncode
    if not os.path.exists(guest_report):
        if guest_rc == 2:
            return 2       # the guest refused its input (e.g. an unstable calibration) and said why, in one line
        dropped = " after the host took it for lost (its log line above says why)" \
            if host_rc == EXIT_GUEST_DROPPED else ""
        raise RunError(f"the guest {_exit_text(guest_rc)}{dropped} and wrote no report")
    with open(guest_report, encoding="utf-8") as f:
        report = json.load(f)
    report["run"] = {"guest_exit": guest_rc, "host_exit": host_rc, "run_dir": run_dir}
    if values.get("trace"):
        count = timeline.merge(traces, values["trace"])
        report["run"]["trace_events"] = count
    if values.get("report"):
        with open(values["report"], "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, sort_keys=True)
    if not values.get("quiet"):
        print_summary(report)
        if values.get("report"):
            print(f"report: {values['report']}")
        if values.get("trace"):
            print(f"trace: {values['trace']} ({report['run']['trace_events']} events; open in ui.perfetto.dev)")
    return 0 if guest_rc == 0 and report.get("ok") else 1


def _wait_for_guest(guest: subprocess.Popen, host: subprocess.Popen, timeout_s: float) -> int:
    """The guest's exit status, once it exits. If the host (--once) exits saying it took the guest
    for lost (EXIT_GUEST_DROPPED: silent, e.g. SIGSTOPped, or not acknowledging a TLBI), the guest
    is stopped at once (SIGCONT, so that a stopped one can take the SIGTERM and write its partial
    report; SIGKILL after STOP_BOUND_S) rather than waited for until --timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return guest.wait(timeout=min(GUEST_POLL_S, max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            pass
        if host.poll() == EXIT_GUEST_DROPPED:
            guest.send_signal(signal.SIGCONT)
            stop_bounded([guest], STOP_BOUND_S)
            return guest.returncode
        if time.monotonic() >= deadline:
            raise RunError(f"the guest did not finish within {timeout_s:g}s (raise --timeout)")


def _exit_text(rc: int | None) -> str:
    """A process's end for a message: "exited with status 1" or "was killed by SIGKILL"."""
    if rc is not None and rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with status {rc}"


def _write_partial_report(values: dict[str, Any], run_dir: str, procs: list[subprocess.Popen], why: str) -> None:
    """After an interrupt: the guest's partial report (or, if it wrote none, a stub), marked
    `partial`, to --report."""
    if not values.get("report"):
        return
    try:
        with open(os.path.join(run_dir, "guest-report.json"), encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError):
        report = {"ok": False, "error": "interrupted before the guest wrote a report", "mode": values.get("mode")}
    exits = [p.returncode for p in procs] + [None, None]
    report.update(partial=True, ok=False)
    report.setdefault("error", None)
    report["error"] = f"interrupted by {why}" + (f" (the guest: {report['error']})" if report["error"] else "")
    report["run"] = {"host_exit": exits[0], "guest_exit": exits[1], "run_dir": run_dir, "interrupted": True}
    with open(values["report"], "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    print(f"report (partial): {values['report']}", file=sys.stderr)


def _wait_for_host(run_dir: str, host: subprocess.Popen) -> dict[str, Any] | None:
    """host.json once the host is ready; None if it exited 2 (it refused its input and said why,
    in one line). Raises RunError if it exited otherwise or is not ready in time."""
    deadline = time.monotonic() + HOST_READY_BOUND_S
    while time.monotonic() < deadline:
        if host.poll() is not None:
            if host.returncode == 2:
                return None
            raise RunError(f"the host exited with status {host.returncode} before it was ready")
        info = rundir.read_host_json(run_dir, missing_ok=True)
        if info is not None:
            return info
        time.sleep(0.02)
    raise RunError(f"the host did not become ready within {HOST_READY_BOUND_S:g}s")


def _wait_or_stop(proc: subprocess.Popen) -> int | None:
    try:
        return proc.wait(timeout=STOP_BOUND_S)
    except subprocess.TimeoutExpired:
        stop_bounded([proc], STOP_BOUND_S)
        return proc.returncode


def _cleanup(run_dir: str, own_dir: bool, created: list[str], shm_files: list[str]) -> None:
    for path in shm_files + created:   # the host removes its files; these are left by a killed one
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    if own_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
