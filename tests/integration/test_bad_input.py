"""Bad input gets a clear one-line error and a non-zero exit, and nothing is left half-created."""
import os
import subprocess
import threading

import msgpack
import pytest

from protocol import ErrorCode
from protocol.messages import PAGE_SIZE, Error, Kind, Trap, Access, Ctx, Welcome
from tests.helpers import APF, ROOT, RawGuest, apf, refusal


def _one_line_error(proc, needle: str) -> None:
    """A refusal: exit 2, one line on stderr, and that line says `needle`."""
    line = refusal(proc)
    assert needle in line, line


@pytest.mark.parametrize("args, needle", [
    (["--guest-mem", "32MiB", "--host-mem", "64MiB"], "above --guest-mem"),
    (["--guest-mem", "1000", "--host-mem", "1000"], "whole number of 4096-byte pages"),
    (["--guest-mem", "32MiB", "--host-mem", "4KiB"], "at least 16 pages"),
    (["--guest-mem", "32MiB", "--host-mem", "0"], "--host-mem must be at least one 4096-byte page"),
    (["--guest-mem", "lots", "--host-mem", "8MiB"], "is not a size"),
    (["--guest-mem", "32MiB", "--host-mem", "8MiB", "--swap-latency", "fast"], "is not a duration"),
    (["--guest-mem", "32MiB", "--host-mem", "8MiB", "--io-engine", "aio"], "native AIO needs --direct-io"),
    (["--guest-mem", "32MiB", "--host-mem", "8MiB", "--io-engine", "spdk"], "invalid choice: 'spdk'"),
    (["--guest-mem", "32MiB", "--host-mem", "8MiB", "--swap-size", "5000"], "--swap-size 5000 is not a whole number"),
    (["--guest-mem", "1048576TiB", "--host-mem", "8MiB"], "more than this machine can map"),
    (["--guest-mem", "32MiB", "--host-mem", "8MiB", "--page-cluster", "7"], "--page-cluster must be between 0 and 6"),
    (["--guest-mem", "32MiB", "--host-mem", "8MiB", "--page-cluster", "-1"], "--page-cluster must be between 0 and 6"),
])
def test_host_rejects_bad_sizes_and_creates_nothing(run_dir, args, needle):
    """Each bad size is named in one line; the run dir is not created."""
    proc = apf("host", "--run-dir", run_dir, *args, timeout=30)
    _one_line_error(proc, needle)
    assert not os.path.exists(run_dir)


def test_guest_needs_a_served_run_dir(run_dir):
    """A guest pointed at a missing run dir, or one with no host, says so."""
    proc = apf("guest", "--run-dir", run_dir, timeout=30)
    _one_line_error(proc, "does not exist")
    os.mkdir(run_dir, 0o700)
    proc = apf("guest", "--run-dir", run_dir, timeout=30)
    _one_line_error(proc, "no host is serving it")


def test_foreign_host_json_is_refused(run_dir):
    """A host.json that an apf-emu host did not write is not trusted."""
    os.mkdir(run_dir, 0o700)
    with open(os.path.join(run_dir, "host.json"), "w") as f:
        f.write('{"endpoint": "ipc:///tmp/x"}')
    proc = apf("guest", "--run-dir", run_dir, timeout=30)
    _one_line_error(proc, "not written by an apf-emu host")


def test_run_dir_writable_by_others_is_refused(run_dir):
    """The host will not serve from a directory others may write."""
    os.mkdir(run_dir)
    os.chmod(run_dir, 0o777)
    proc = apf("host", "--run-dir", run_dir, "--guest-mem", "1MiB", "--host-mem", "256KiB", timeout=30)
    _one_line_error(proc, "writable by others")


def test_second_host_on_same_run_dir_is_refused(host, run_dir):
    """One host per run dir: the second gets an error naming the first's pid, the first keeps serving."""
    first = host("--guest-mem", "1MiB", "--host-mem", "256KiB")
    proc = apf("host", "--run-dir", run_dir, "--guest-mem", "1MiB", "--host-mem", "256KiB", timeout=30)
    _one_line_error(proc, f"another host already serves run dir {run_dir} (pid {first.info['pid']})")
    assert first.proc.poll() is None
    g = RawGuest(first.info)
    try:
        assert isinstance(g.hello(), Welcome)
    finally:
        g.close()


def test_host_run_dir_is_private_and_cleaned_up(host, run_dir):
    """The host creates its run dir 0700 and removes it (and its files) on SIGTERM."""
    h = host("--guest-mem", "1MiB", "--host-mem", "256KiB", "--page-cluster", "2")
    assert h.info["page_cluster"] == 2 and h.info["swap_size"] == 1 << 20
    assert os.stat(run_dir).st_mode & 0o777 == 0o700
    for path in h.info["files"].values():
        assert os.path.exists(path)
    assert h.stop() == 0
    assert not os.path.exists(run_dir)
    for path in h.info["files"].values():
        assert not os.path.exists(path)


def test_wire_errors_get_error_replies_and_host_keeps_serving(host):
    """Another protocol version, an unknown kind, an IPA outside guest memory and a second guest
    each get an ERROR naming the problem; afterwards the host still serves."""
    h = host("--guest-mem", "1MiB", "--host-mem", "256KiB")
    g = RawGuest(h.info)
    other = RawGuest(h.info, name="intruder")
    try:
        g.send_raw(g.ctl, msgpack.packb([2, int(Kind.HELLO), 1, 1, 1, "old"]))
        reply = g.recv_any(g.ctl)
        assert isinstance(reply, Error) and reply.code == ErrorCode.VERSION
        assert "protocol version 2 is not supported" in reply.reason
        g.send_raw(g.ctl, msgpack.packb([1, 99, 1]))
        reply = g.recv_any(g.ctl)
        assert reply.code == ErrorCode.UNKNOWN_KIND
        assert isinstance(g.hello(), Welcome)
        reply = g.request(g.vcpu_socks[0], Trap(0, 0, 1 << 20, Access.READ, Ctx.USER))
        assert isinstance(reply, Error) and reply.code == ErrorCode.OUT_OF_RANGE
        assert "outside guest memory" in reply.reason
        reply = other.hello()
        assert isinstance(reply, Error) and reply.code == ErrorCode.BUSY and "raw" in reply.reason
        reply = other.trap(0, 1)
        assert isinstance(reply, Error) and reply.code == ErrorCode.NOT_ALLOWED
        assert g.trap(0, 1).KIND == Kind.RESUME      # still serving the attached guest
    finally:
        g.close()
        other.close()


def test_a_busy_host_is_asked_again_within_attach_wait(host, run_dir):
    """Without --attach-wait a guest refused with BUSY fails at once, naming the reason; with it, the
    guest asks again until the attached guest is gone (here: lost, silent for 1 s), then runs."""
    h = host("--guest-mem", "1MiB", "--host-mem", "1MiB")
    first = RawGuest(h.info, name="first")
    try:
        assert isinstance(first.hello(), Welcome)
        guest = ["guest", "--run-dir", run_dir, "--accesses", "20", "--vcpus", "1"]
        done: list[subprocess.CompletedProcess] = []
        runner = threading.Thread(target=lambda: done.append(apf(*guest, timeout=30)))
        runner.start()
        while runner.is_alive():
            first.pump(50)        # keeps `first` attached (heartbeats) while the other one is refused
        proc = done[0]
        _one_line_error(proc, "host refused this guest: host already serves guest 'first'")
        waiting = subprocess.Popen(APF + ["--log-level", "info", *guest, "--attach-wait", "20s"], cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                   text=True)
        # The first guest was refused once (BUSY); wait until the waiting guest has been too.
        first.pump_until(lambda: first.stats()["bad_frames"].get("busy", 0) >= 2,
                         "the waiting guest refused BUSY at least once", 20)
    finally:
        first.close()             # silent from now on: the host drops it after 1 s
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert "host is busy" in err and "asking again for up to 20s" in err


def test_run_dir_owned_by_another_user_is_refused(run_dir):
    """The host will not serve from a directory another user owns: one line naming the directory,
    its owner and this user, exit status 2, and the directory is left as it was (empty)."""
    if os.getuid() != 0:
        pytest.skip("giving the run dir to another user needs root (chown)")
    os.mkdir(run_dir, 0o700)
    os.chown(run_dir, 65534, 65534)
    proc = apf("host", "--run-dir", run_dir, "--guest-mem", "1MiB", "--host-mem", "256KiB", timeout=30)
    assert refusal(proc) == f"apf host: error: run dir {run_dir} belongs to uid 65534, not to this user (0)"
    assert os.listdir(run_dir) == [] and os.stat(run_dir).st_uid == 65534


def test_an_existing_swap_file_is_refused_and_left_as_it_was(run_dir, tmp_path):
    """--swap naming a file that exists (or a symlink, or a device) is refused in one line before
    anything starts: the host never empties nor removes a file it did not create."""
    precious = tmp_path / "precious"
    precious.write_bytes(b"precious data\n")
    link = tmp_path / "link"
    link.symlink_to(precious)
    for path in (precious, link, "/dev/null"):
        proc = apf("host", "--run-dir", run_dir, "--guest-mem", "1MiB", "--host-mem", "256KiB",
                   "--swap", str(path), timeout=30)
        _one_line_error(proc, f"--swap {path} exists")
        assert not os.path.exists(run_dir)
    assert precious.read_bytes() == b"precious data\n" and link.is_symlink()
    assert os.path.exists("/dev/null")


def test_a_swap_file_the_host_created_is_removed_when_it_stops(host, tmp_path):
    swap = tmp_path / "swap-here"
    h = host("--guest-mem", "1MiB", "--host-mem", "256KiB", "--swap", str(swap))
    assert swap.exists() and h.info["swap"] == str(swap)
    assert h.stop() == 0
    assert not swap.exists()


def test_apf_run_passes_on_the_hosts_one_line_refusal_alone(tmp_path):
    """A value only the host can judge (a guest size this machine cannot map): `apf run` prints
    the host's one line, labelled with the command the user typed (`apf run (host)`), and exits 2,
    with no second line of its own."""
    line = refusal(apf("run", "--guest-mem", "1048576TiB", "--host-mem", "8MiB", timeout=60))
    assert line.startswith("apf run (host): error: cannot ") and "1048576TiB" in line


@pytest.mark.parametrize("timeout, says", [("0s", "--timeout must be above 0"),
                                           ("5", "--timeout: ")])
def test_apf_run_refuses_a_timeout_it_could_not_keep(timeout, says):
    """`--timeout 0s` would fail every run after starting it; a bare number has no unit. Both are
    refused before any process starts, in one line, exit 2."""
    _one_line_error(apf("run", "--guest-mem", "4MiB", "--host-mem", "2MiB", "--timeout", timeout, timeout=60), says)


@pytest.mark.parametrize("args, says", [
    (["--guest-mem", "4MiB", "--working-set", "8MiB"], "--working-set (2048 pages) is larger than guest memory (1024 pages)"),
    (["--guest-mem", "3MiB", "--dilation", "40", "--swap-latency", "20us"],
     "--dilation sets aside 520 pages of guest memory for its calibration and needs as many again"),
])
def test_apf_run_refuses_a_workload_that_does_not_fit_before_starting_anything(args, says):
    """What the guest would refuse on attaching (a working set larger than guest memory, too few
    pages beside the calibration's) is refused by `apf run` itself: one line, exit 2, and no
    daemon started (no host line about a lost guest)."""
    _one_line_error(apf("run", "--host-mem", "1MiB", *args, timeout=60), says)
