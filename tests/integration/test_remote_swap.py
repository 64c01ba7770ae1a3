"""The host swapping to a real Redis: every page verified back, figures reported, no key left."""
import os
import signal

import pytest

from protocol.messages import Resume
from tests.helpers import HostProcess, apf, attached_guest, run_report, wait_until
from tests.redis_server import require_tls

RUN = ["--guest-mem", "64MiB", "--host-mem", "8MiB", "--mode", "async", "--prefill", "--accesses", "100"]
SMALL_RUN = ["--guest-mem", "8MiB", "--host-mem", "2MiB", "--mode", "async", "--prefill", "--tasks", "4",
             "--accesses", "200"]


def swapped_run(tmp_path, server, *args: str) -> dict:
    """`apf run --swap server.url *args` to the end; checks that every page of the guest was
    written and read back verified, that pages went to the server and came back without a
    failure, and that no key of the session is left on it. Returns the report."""
    proc, r = run_report(tmp_path, "--swap", server.url, *args)
    assert proc.returncode == 0, proc.stderr
    assert r["ok"] and r["pages_corrupt"] == 0 and r["pages_verified"] == r["pages_written"], r
    swap = r["swap"]
    assert swap["reads"] > 0 and swap["read_errors"] == swap["write_errors"] == 0
    assert swap["remote"]["keys"] > 0 and swap["remote"]["timeouts"] == swap["remote"]["errors"] == 0
    assert server.apf_keys() == []
    return r


def test_a_run_swapping_to_redis_verifies_every_page_and_leaves_no_key(tmp_path, shm_leftovers, redis_server):
    """`apf run --swap redis://…` with a guest eight times its host memory: every page of the
    guest went to Redis and came back verified; the report names the back-end and its endpoint
    without credentials, counts keys, bytes and round trips; at the end no key remains."""
    server = redis_server()
    r = swapped_run(tmp_path, server, *RUN)
    assert r["pages_verified"] == 16384
    swap = r["swap"]
    assert swap["backend"] == "redis" and swap["io_engine"] == "redis"
    assert swap["endpoint"] == f"redis://127.0.0.1:{server.port}/0"
    assert swap["reads"] > 8000
    remote = swap["remote"]
    assert remote["bytes"] == remote["keys"] * 4096 == swap["file_bytes"]
    assert 0 < remote["rtt_us"]["p50"] <= remote["rtt_us"]["p99"]
    assert server.client().dbsize() == 0


@pytest.mark.parametrize("transport", ["unix", "tls"])
def test_a_run_over_a_unix_socket_or_tls_verifies_every_page_and_leaves_no_key(tmp_path, shm_leftovers,
                                                                               redis_server, transport):
    """`unix://PATH` to a server listening on its Unix socket alone (--port 0), and `rediss://`
    to a server listening on TLS alone (a throwaway CA the URL trusts): a four-task run with a
    guest four times its host memory verifies every page back, the report shows the endpoint as
    given (without the TLS options), and neither a slot key nor the lease is left."""
    if transport == "tls":
        require_tls()
    server = redis_server(transport=transport)
    r = swapped_run(tmp_path, server, *SMALL_RUN)
    assert r["pages_verified"] == 2048
    assert r["swap"]["backend"] == "redis" and r["swap"]["endpoint"] == server.endpoint
    assert server.client().dbsize() == 0


def test_a_three_node_cluster_holds_the_pages_and_a_node_down_stops_the_next_start(tmp_path, shm_leftovers,
                                                                                   redis_cluster):
    """`--swap redis+cluster://` over three local nodes: every page is verified back and no key
    remains on any node; with one node killed, a new host refuses to start, naming it."""
    r = swapped_run(tmp_path, redis_cluster, "--guest-mem", "16MiB", "--host-mem", "2MiB",
                    "--mode", "async", "--prefill", "--accesses", "200", "--tasks", "2")
    assert r["swap"]["backend"] == "redis-cluster" and r["swap"]["remote"]["nodes"] == 3
    assert r["pages_verified"] == 4096
    down = redis_cluster.nodes[2]
    down.kill()
    proc = apf("host", "--run-dir", str(tmp_path / "run"), "--guest-mem", "1MiB", "--host-mem", "256KiB",
               "--swap", redis_cluster.url, "--swap-timeout", "300ms", timeout=30)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"127.0.0.1:{down.port}" in proc.stderr


def test_a_host_killed_leaves_keys_the_next_host_sweeps(run_dir, host, redis_server):
    """A host that dies by SIGKILL cannot delete its keys; once its lease has expired, the next
    host that starts on the same server removes them and says so."""
    server = redis_server()
    first = host("--guest-mem", "1MiB", "--host-mem", "256KiB", "--swap", server.url)
    assert first.info["swap_backend"] == "redis" and first.info["swap"] == f"redis://127.0.0.1:{server.port}/0"
    g = attached_guest(first.info, pages=200)
    try:
        slot_keys = [k for k in server.apf_keys() if k.startswith(b"apf:{")]
        assert len(slot_keys) == g.stats()["swap"]["remote"]["keys"] > 0
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=10)
    finally:
        g.close()
    first.stop()
    assert [k for k in server.apf_keys() if k.startswith(b"apf:{")] == slot_keys
    lease = [k for k in server.client().scan_iter(match="apf:lease:*")]
    assert len(lease) == 1
    server.client().pexpire(lease[0], 1)          # the lease runs out, as it would after 60 s
    wait_until(lambda: not server.client().exists(lease[0]), "the lease expired")
    os.unlink(os.path.join(run_dir, "host.json"))
    second = host("--guest-mem", "1MiB", "--host-mem", "256KiB", "--swap", server.url, "--log-level", "info")
    assert server.apf_keys() == [k for k in server.client().scan_iter(match="apf:lease:*")]
    second.stop()
    assert "dead session(s)" in second.stderr
    assert server.client().dbsize() == 0


def test_a_host_starting_beside_a_live_one_sweeps_none_of_its_keys(run_dir, tmp_path, host, redis_server):
    """The start-up sweep removes only sessions without a lease: host B starting on the same
    server while host A holds swapped pages leaves every key of A's (and its lease) in place, and
    A swaps every one of those pages back in without a failure, before and after B stops."""
    server = redis_server()
    args = ("--guest-mem", "1MiB", "--host-mem", "256KiB", "--page-cluster", "0", "--swap", server.url)
    a = host(*args)
    g = attached_guest(a.info, pages=200)
    try:
        keys_a = server.apf_keys()
        slot_keys = [k for k in keys_a if k.startswith(b"apf:{")]
        assert len(slot_keys) == g.stats()["swap"]["remote"]["keys"] > 0
        assert len(keys_a) == len(slot_keys) + 1                     # and A's lease
        b = HostProcess(str(tmp_path / "run-b"), *args, "--log-level", "info")
        try:
            assert b.info["pid"] != a.info["pid"]
            assert set(keys_a) <= set(server.apf_keys())              # B swept nothing of A's
        finally:
            assert b.stop() == 0
        assert "dead session" not in b.stderr, b.stderr
        assert server.apf_keys() == keys_a                            # B left none of its own
        swapped = [gfn for gfn in g.swapped_pages() if gfn < 200]
        assert len(swapped) == len(slot_keys)
        for gfn in swapped:
            reply = g.trap(0, gfn, write=False)
            assert isinstance(reply, Resume), (gfn, reply)
        swap = g.stats()["swap"]
        assert swap["read_errors"] == 0 and swap["remote"]["errors"] == 0
    finally:
        g.close()


def test_an_acl_user_swaps_and_its_password_is_in_no_report_or_log(tmp_path, shm_leftovers, redis_server):
    """A server whose default user has another password, and an ACL user `apf-swap` allowed only
    the `apf:*` keys: `--swap redis://apf-swap@…` with the user's password in
    --swap-password-file authenticates as that user (the default user's password would not do)
    and verifies every page back; neither password appears in the report, the summary or the
    debug log, and the endpoint shows neither user nor password."""
    server = redis_server(password="default-pw-7f3a")
    server.client().acl_setuser("apf-swap", enabled=True, passwords=["+apf-pw-91c2"], keys=["apf:*"],
                                commands=["+@all"])
    secret = tmp_path / "pw"
    secret.write_text("apf-pw-91c2\n")
    url = f"redis://apf-swap@127.0.0.1:{server.port}"
    proc, r = run_report(tmp_path, "--swap", url, "--swap-password-file", str(secret), "--log-level", "debug",
                         *SMALL_RUN)
    assert proc.returncode == 0, proc.stderr
    assert r["ok"] and r["pages_verified"] == r["pages_written"] == 2048 and r["swap"]["reads"] > 0
    assert r["swap"]["endpoint"] == f"redis://127.0.0.1:{server.port}/0"
    with open(tmp_path / "report.json", encoding="utf-8") as f:
        report_text = f.read()
    for text in (report_text, proc.stdout, proc.stderr):
        assert "apf-pw-91c2" not in text and "default-pw-7f3a" not in text
    assert "apf-swap@" not in report_text
    assert server.apf_keys() == [] and server.client().dbsize() == 0
    assert server.client().acl_getuser("apf-swap")["enabled"]
