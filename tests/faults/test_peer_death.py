"""A daemon dies or goes silent: the other side notices within its heartbeat bound, says so, and
cleans up; `apf run` leaves no process and no file behind."""
import datetime
import json
import os
import re
import subprocess
import time

import psutil

from protocol.messages import HEARTBEAT_EXPIRY_MS, TLBI_ACK_TIMEOUT_MS, Welcome
from tests.helpers import APF, LIVENESS_S, ROOT, RawGuest, apf, host_stats, run_report, wait_until

ASYNC = ["--guest-mem", "4MiB", "--host-mem", "1MiB", "--accesses", "2000", "--swap-latency", "2ms",
         "--mode", "async", "--tasks", "4", "--prefill"]


def _apf_processes_of(run_dir_marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if run_dir_marker in cmd and "-m apf" in cmd:
            found.append(p)
    return found


# From the peer's silence to the guest noticing: the expiry (3 s), plus one heartbeat interval for
# the check that sees it (0.25 s), plus 1.25 s for scheduling, stopping the vCPUs, writing the
# partial report and exiting on a loaded 2-core machine. Generous, but a guest that waited for its
# --reply-timeout (60 s) or never noticed fails it by far.
DETECT_BOUND_S = HEARTBEAT_EXPIRY_MS / 1000 + 1.5
# A death (the lifeline closes) is noticed at once; the guest then stops its vCPUs, writes its
# partial report and exits. Bounded by the liveness expiry: a guest that noticed only by the
# host's silence would take at least that long.
DEATH_BOUND_S = LIVENESS_S
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", re.M)


def _gone(p: psutil.Process) -> bool:
    """Exited: reaped, or a zombie its parent has not reaped yet."""
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _log_time(stderr: str, needle: str) -> datetime.datetime:
    line = next((line for line in stderr.splitlines() if needle in line), None)
    assert line is not None, f"no log line with {needle!r}:\n{stderr}"
    m = LOG_TIME.match(line)
    assert m, line
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")


def _run_timing_host_death(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, dict, float, int]:
    """`apf run --report ...`, watching its two children: returns the process, the report, the
    seconds from the host's death to the guest's exit, and the host's pid."""
    report = str(tmp_path / "report.json")
    argv = APF + ["run", "--report", report, *args]
    proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        root = psutil.Process(proc.pid)

        def child(role: str) -> psutil.Process | None:
            for p in root.children():
                try:
                    if role in p.cmdline():
                        return p
                except psutil.NoSuchProcess:
                    pass
            return None
        host = wait_until(lambda: child("host"), "the host started", 20)
        guest = wait_until(lambda: child("guest"), "the guest started", 20)
        wait_until(lambda: _gone(host), "the host killed by the injected fault", 60, every_s=0.005)
        host_dead = time.monotonic()
        wait_until(lambda: _gone(guest), "the guest exited after the host died", 30, every_s=0.005)
        guest_gone = time.monotonic()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert not psutil.pid_exists(host.pid) or _gone(host)
    with open(report, encoding="utf-8") as f:
        return subprocess.CompletedProcess(argv, proc.returncode, out, err), json.load(f), \
            guest_gone - host_dead, host.pid


def test_host_killed_mid_io_guest_notices_before_the_liveness_expiry(tmp_path, shm_leftovers):
    """The host dies (SIGKILL) as its 30th swap-in starts: the guest notices at once (its lifeline
    closes; measured from the host's death to the guest's exit, bounded by DEATH_BOUND_S), names
    the host in its error, exits non-zero with a partial report, and no file is left behind."""
    proc, r, detect_s, host_pid = _run_timing_host_death(tmp_path, *ASYNC, "--inject", "kill-host:mid-io:n=30")
    assert proc.returncode == 1
    assert r["run"]["host_exit"] == -9
    assert r["ok"] is False
    assert re.search(rf"^host at ipc://\S+host\.sock \(pid {host_pid}\) is gone: its lifeline closed", r["error"])
    assert detect_s <= DEATH_BOUND_S, f"the guest exited {detect_s:.2f}s after the host died"
    assert r["tasks"]["accesses"] > 0          # partial: what ran before is reported


def test_host_killed_mid_eviction(tmp_path, shm_leftovers):
    """The host dies as a write-back starts: same documented outcome; the host's figures never
    came, and the report and summary say so rather than print its counters as zeros."""
    proc, r = run_report(tmp_path, *ASYNC, "--inject", "kill-host:mid-eviction:n=50")
    assert proc.returncode == 1 and "is gone: its lifeline closed" in r["error"]
    assert r["host_figures"] is False
    assert "swap: not known (the host's figures never came: it was gone)" in proc.stdout


def test_muted_host_is_detected_and_stopped(tmp_path, shm_leftovers):
    """A host that stops answering (alive, silent) is treated as gone: the guest's error follows
    the host's "stops answering" log line after the expiry (less the heartbeat interval the last
    heartbeat may precede it by) and within DETECT_BOUND_S; `apf run` then stops the host (SIGTERM,
    which it honours: exit 0), and no process with the host's pid is left."""
    proc, r = run_report(tmp_path, *ASYNC, "--inject", "host:mute:after=300", "--log-level", "info")
    assert proc.returncode == 1 and "stopped answering" in r["error"]
    muted = _log_time(proc.stderr, "injected fault: the host stops answering")
    noticed = _log_time(proc.stderr, "apf.guest INFO run failed: host at")
    detect_s = (noticed - muted).total_seconds()
    assert HEARTBEAT_EXPIRY_MS / 1000 - 0.25 <= detect_s <= DETECT_BOUND_S, detect_s
    assert r["run"]["host_exit"] == 0
    host_pid = int(re.search(r"\(pid (\d+)\)", r["error"]).group(1))
    assert not psutil.pid_exists(host_pid), f"host {host_pid} still exists after `apf run` returned"


def test_guest_killed_with_faults_outstanding_host_recovers(host, run_dir, tmp_path):
    """The guest dies (SIGKILL) with tasks parked on outstanding faults: the host notices within
    the expiry, cancels its I/O, frees guest RAM and swap, and serves a new guest to a clean end."""
    h = host("--guest-mem", "4MiB", "--host-mem", "1MiB", "--swap-latency", "2ms", "--vcpus", "2")
    killed = apf("guest", "--run-dir", run_dir, "--tasks", "4", "--accesses", "2000", "--mode", "async",
                 "--prefill", "--inject", "kill-guest:parked:n=20", timeout=60)
    assert killed.returncode == -9
    spy = RawGuest(h.info, name="spy")
    try:
        stats = spy.pump_until(lambda: (s := spy.stats())["memory"]["resident_pages"] == 0 and s,
                               "the host freed the dead guest's memory")
        assert stats["memory"]["ram_file_bytes"] == 0 and stats["swap"]["file_bytes"] == 0
        assert stats["apf"]["outstanding"] == [0, 0]
    finally:
        spy.close()
    report = os.path.join(str(tmp_path), "second.json")
    second = apf("guest", "--run-dir", run_dir, "--tasks", "2", "--accesses", "500", "--mode", "async",
                 "--report", report, timeout=60)
    assert second.returncode == 0, second.stderr
    with open(report) as f:
        assert json.load(f)["pages_corrupt"] == 0
    h.stop()
    assert "lost: its process is gone" in h.stderr


def test_apf_run_killed_leaves_no_orphans(tmp_path, shm_leftovers):
    """SIGKILL to `apf run` itself: its host and guest get SIGTERM from the kernel (parent-death
    signal) and exit; no apf process of that run survives."""
    run_dir = str(tmp_path / "run")
    proc = subprocess.Popen(APF + ["run", "--run-dir", run_dir, *ASYNC], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    wait_until(lambda: len(_apf_processes_of(run_dir)) == 3, "run, host and guest started", 20)
    proc.kill()
    proc.wait(timeout=10)
    wait_until(lambda: _apf_processes_of(run_dir) == [], "no apf process of the run left", 15)


def test_guest_that_never_acknowledges_a_tlbi_is_detached(host):
    """A guest that keeps heartbeating but never acknowledges a TLBI would stop reclaim for good:
    the host ends its session after TLBI_ACK_TIMEOUT_MS, says why, and serves the next guest."""
    h = host("--guest-mem", "1MiB", "--host-mem", "256KiB")
    g = RawGuest(h.info, name="deaf", ack_tlbi=False)
    try:
        g.hello()
        for gfn in range(64):                      # first-touch writes; past the watermark reclaim starts
            g.send_trap(0, gfn)
        g.pump_until(lambda: g.tlbis, "a TLBI sent")
        # heartbeats keep the session alive meanwhile
        stats = g.pump_until(lambda: not (s := g.stats())["session"]["attached"] and s, "the deaf guest detached",
                             TLBI_ACK_TIMEOUT_MS / 1000 + LIVENESS_S)
        assert f"TLBI batch {g.tlbis[0].batch} not acknowledged" in stats["session"]["last_end_reason"]
    finally:
        g.close()
    again = RawGuest(h.info, name="next")
    try:
        assert isinstance(again.hello(), Welcome)
    finally:
        again.close()


def test_a_stopped_guest_ends_apf_run_soon_with_its_partial_report(tmp_path, shm_leftovers):
    """A guest frozen by SIGSTOP falls silent: the host (--once) takes it for lost after the
    liveness expiry and exits with status 3; `apf run` then stops the guest (SIGCONT and SIGTERM,
    so it writes its partial report) instead of waiting for it until --timeout, and exits 1."""
    report = str(tmp_path / "report.json")
    proc = subprocess.Popen(APF + ["run", "--report", report, "--timeout", "120s", *ASYNC, "--accesses", "100000"],
                            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        root = psutil.Process(proc.pid)
        guest = wait_until(lambda: next((c for c in root.children() if "guest" in c.cmdline()), None),
                           "the guest started", 20)
        wait_until(lambda: os.path.exists(os.path.join(guest.cmdline()[guest.cmdline().index("--run-dir") + 1],
                                                       "host.json")), "the host ready", 20)
        run_dir = guest.cmdline()[guest.cmdline().index("--run-dir") + 1]
        wait_until(lambda: (stats := host_stats(run_dir)) and stats["faults"]["total"] > 0,
                   "the guest faulting in its workload", 30)
        guest.suspend()
        stopped_at = time.monotonic()
        out, err = proc.communicate(timeout=60)
        took_s = time.monotonic() - stopped_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 1, err
    assert took_s <= DETECT_BOUND_S + 12, took_s        # expiry, then the guest's bounded stop
    with open(report, encoding="utf-8") as f:
        r = json.load(f)
    assert r["ok"] is False and r["run"]["host_exit"] == 3
    assert "lost: nothing heard for" in err
