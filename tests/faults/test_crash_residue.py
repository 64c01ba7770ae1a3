"""A crash leaves nothing behind: guest memory is anonymous (memfd) and dies with its last holder,
a path-mode host reclaims what dead hosts left, a dead host is named at once, a killed `apf run`
leaves no run dir, and either side's death is noticed at once (before the 3 s liveness expiry)."""
import json
import os
import re
import signal
import subprocess
import time

import psutil

from tests.helpers import APF, LIVENESS_S, ROOT, HostProcess, apf, host_stats, run_report, wait_until

SMALL = ["--guest-mem", "4MiB", "--host-mem", "1MiB"]
ASYNC = [*SMALL, "--accesses", "2000", "--swap-latency", "2ms", "--mode", "async", "--tasks", "4", "--prefill"]
SHM_FILE = re.compile(r"^apf-(\d+)-[0-9a-f]+-(ram|stage2|control)$")


def _shm_files_of(pid: int) -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if (m := SHM_FILE.match(n)) and int(m.group(1)) == pid)


def _sigkill(h: HostProcess) -> None:
    h.proc.kill()
    h.proc.wait(timeout=10)
    h.stop()


def test_host_killed_by_sigkill_leaves_nothing_in_dev_shm(host, run_dir):
    """A host killed with SIGKILL while a guest is attached leaves no file in /dev/shm: guest RAM,
    stage 2 and control blocks are memfds, which the kernel frees with their last holder."""
    h = host(*SMALL)
    guest = subprocess.Popen(APF + ["guest", "--run-dir", run_dir, "--tasks", "2", "--accesses", "100000",
                                    "--mode", "async"], cwd=ROOT, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _guest_attached(h), "the guest attached", 20)
        _sigkill(h)
        guest.communicate(timeout=20)
    finally:
        if guest.poll() is None:
            guest.kill()
            guest.communicate(timeout=10)
    assert _shm_files_of(h.proc.pid) == []
    assert h.info["files"] == {} and h.info["shared_memory"] == "memfd"


def _guest_attached(h: HostProcess) -> bool:
    proc = apf("stats", "--run-dir", h.run_dir, "--json", timeout=20)
    return proc.returncode == 0 and json.loads(proc.stdout)["session"]["attached"]


def test_path_mode_host_reclaims_files_of_dead_hosts(host, run_dir, tmp_path):
    """With --shared-memory path the files are named in --shm-dir; a host killed by SIGKILL leaves
    them, and the next host on that directory removes them at start (its own stay until it stops)."""
    shm = str(tmp_path / "shm")
    os.mkdir(shm)
    first = host(*SMALL, "--shared-memory", "path", "--shm-dir", shm)
    left = sorted(os.listdir(shm))
    assert len(left) == 3 and all(SHM_FILE.match(n) for n in left), left
    _sigkill(first)
    assert sorted(os.listdir(shm)) == left
    second = host(*SMALL, "--shared-memory", "path", "--shm-dir", shm)
    now = sorted(os.listdir(shm))
    assert not set(now) & set(left) and len(now) == 3, now
    second.stop()
    assert os.listdir(shm) == []


def test_guest_and_stats_on_a_dead_hosts_run_dir_say_so_at_once(host, run_dir):
    """A guest or `apf stats` pointed at the run dir of a host that was SIGKILLed (its host.json
    left behind) fails at once naming the host's pid as gone: within LIVENESS_S, python start-up
    included (one that waited for the host would ask again for its 20 s attach bound)."""
    h = host(*SMALL)
    _sigkill(h)
    assert os.path.exists(os.path.join(run_dir, "host.json"))
    gone = rf"^apf (guest|stats): error: the host of run dir {re.escape(run_dir)} \(pid {h.proc.pid}\) is gone: "
    for argv in (["guest", "--run-dir", run_dir], ["stats", "--run-dir", run_dir]):
        start = time.monotonic()
        proc = apf(*argv, timeout=30)
        took = time.monotonic() - start
        assert proc.returncode == 2, proc.stderr
        assert re.match(gone, proc.stderr), proc.stderr
        assert took < LIVENESS_S, f"apf {argv[0]} took {took:.2f}s (python start-up included)"


def test_apf_run_killed_by_sigkill_leaves_no_run_dir(tmp_path):
    """SIGKILL to `apf run` (its own temporary run dir): the daemons, stopped by the parent-death
    signal, remove that run dir; nothing of the run is left in the temp directory."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(APF + ["run", *ASYNC], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    root = psutil.Process(proc.pid)
    run_dir = wait_until(lambda: next(iter(tmp_path.glob("apf-run-*/host.json")), None), "host.json", 20).parent
    wait_until(lambda: len(root.children()) == 2, "the guest started", 20)
    children = root.children()
    wait_until(lambda: (run_dir / "host.lifeline.sock").exists(), "the lifeline", 20)
    wait_until(lambda: (stats := host_stats(str(run_dir))) and stats["faults"]["total"] > 0,
               "the guest faulting in its workload", 30)
    proc.kill()
    proc.wait(timeout=10)
    wait_until(lambda: not any(psutil.pid_exists(c.pid) and c.status() != psutil.STATUS_ZOMBIE
                               for c in children), "both daemons exited", 20)
    assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())


def test_apf_run_stops_the_host_at_once_when_the_guest_found_it_silent(tmp_path):
    """A muted host (alive, silent): once the guest has failed saying so, `apf run` stops the host
    at once (SIGTERM) instead of waiting its 10 s bound: it returns within 3 s of the guest's error."""
    start = time.monotonic()
    proc, r = run_report(tmp_path, *ASYNC, "--inject", "host:mute:after=300")
    took = time.monotonic() - start
    assert proc.returncode == 1 and "stopped answering" in r["error"]
    assert took - r["total_s"] < 3.0 + 2.0, (took, r["total_s"])   # + start-up of both daemons
    assert r["run"]["host_exit"] == 0


def _time_death(tmp_path, inject: str, victim: str) -> tuple[float, str]:
    """`apf run` with a fault that kills `victim`: seconds from its death to the other side
    acting on it (the guest exiting, or the host logging the loss), and apf run's stderr."""
    proc = subprocess.Popen(APF + ["run", "--log-level", "info", *ASYNC, "--inject", inject], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    try:
        kids = wait_until(lambda: len(root.children()) == 2 and root.children(), "both daemons", 20)
        by_role = {("host" if "host" in c.cmdline() else "guest"): c for c in kids}
        dead = by_role[victim]
        wait_until(lambda: not psutil.pid_exists(dead.pid) or dead.status() == psutil.STATUS_ZOMBIE,
                   f"the {victim} killed", 60, every_s=0.002)
        died = time.time()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    needle = "apf.guest INFO run failed: host at" if victim == "host" else "lost: its process is gone"
    line = next(line for line in err.splitlines() if needle in line)
    stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000
    return stamp - died, err


def test_host_death_is_noticed_before_the_liveness_expiry(tmp_path):
    """The host is SIGKILLed mid-I/O: the guest's error ("is gone: its lifeline closed") is logged
    at once, within LIVENESS_S of the death (heartbeat silence alone would take that long)."""
    took, err = _time_death(tmp_path, "kill-host:mid-io:n=30", "host")
    assert "is gone: its lifeline closed" in err
    assert took < LIVENESS_S, f"noticed {took:.3f}s after the host died"


def test_guest_death_is_noticed_before_the_liveness_expiry(tmp_path):
    """The guest is SIGKILLed with a task parked: the host logs the loss ("its process is gone")
    at once, within LIVENESS_S of the death (heartbeat silence alone would take that long)."""
    took, err = _time_death(tmp_path, "kill-guest:parked:n=20", "guest")
    assert took < LIVENESS_S, f"noticed {took:.3f}s after the guest died"
    assert "lost: its process is gone" in err
