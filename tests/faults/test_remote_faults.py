"""Faults of a remote swap device, made by a real redis-server: stopped (SIGSTOP), killed
(SIGKILL), emptied (FLUSHDB), holding a value of the wrong size, out of memory. A swap-in that
fails poisons its page within --swap-timeout, a write-back that fails keeps its page resident
over budget, and the host stays up serving every page it still has."""
import time

import pytest

from protocol import ErrorCode
from protocol.hypercalls import FuncId
from protocol.messages import Error, Hvc, HvcRet, Kind
from tests.helpers import RawGuest, attached_guest, started_io, wait_until

TIMEOUT_S = 0.3
HOST = ["--guest-mem", "1MiB", "--host-mem", "256KiB", "--swap-timeout", f"{int(TIMEOUT_S * 1000)}ms"]


@pytest.fixture
def swapping(host, redis_server):
    """(server, host, guest): a host swapping to a fresh server, pages 0..199 touched, 140 of them
    swapped out; readahead off, so that each trap on a swapped page is one request of its own."""
    server = redis_server()
    h = host(*HOST, "--swap", server.url, "--page-cluster", "0")
    g = attached_guest(h.info, pages=200)
    yield server, h, g
    g.close()


def _swapped(g) -> list[int]:
    return [p for p in g.swapped_pages() if p < 200]


def _resident(g) -> list[int]:
    return [p for p in range(200) if g.stage2.valid[p]]


def _assert_memory_failure(reply, gfn: int) -> None:
    assert isinstance(reply, Error) and reply.code == ErrorCode.MEMORY_FAILURE, reply
    assert reply.reason == f"memory failure: page {gfn} (IPA {gfn * 4096:#x}) could not be read from swap"


def test_a_stopped_server_poisons_swap_ins_within_the_timeout(swapping):
    """SIGSTOP: the swap-in gets no reply; after --swap-timeout the page is poisoned (a memory
    failure for the access), a resident page is still served, and once the server runs again
    the next swap-in succeeds over a new connection."""
    server, h, g = swapping
    victim, later = _swapped(g)[:2]
    server.pause()
    try:
        started = time.monotonic()
        reply = g.trap(0, victim, write=False)
        elapsed = time.monotonic() - started
        _assert_memory_failure(reply, victim)
        assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + 2.0
        assert g.trap(0, _resident(g)[0], write=False).KIND == Kind.RESUME
    finally:
        server.resume()
    assert g.trap(0, later, write=False).KIND == Kind.RESUME
    remote = g.stats()["swap"]["remote"]
    # A timeout fails every request in flight on the node: on a loaded machine write-backs may
    # still be among them (they fail into over-budget, not poison), so at least the one swap-in.
    assert remote["timeouts"] >= 1 and g.stats()["faults"]["poisoned"] == 1
    assert h.proc.poll() is None
    assert h.stop() == 0
    assert "no reply within 0.3s" in h.stderr


def test_a_killed_server_fails_swap_ins_and_the_host_still_exits_cleanly(swapping):
    """SIGKILL: swap-ins fail at once (connection refused) and poison their pages; resident pages
    are served; the host, asked to stop, says it could not delete its keys and exits 0."""
    server, h, g = swapping
    server.kill()
    victim = _swapped(g)[0]
    _assert_memory_failure(g.trap(0, victim, write=False), victim)
    assert g.trap(0, _resident(g)[0], write=False).KIND == Kind.RESUME
    assert g.stats()["swap"]["remote"]["errors"] >= 1
    assert h.stop() == 0
    assert "connection lost (Connection refused)" in h.stderr


def test_flushdb_loses_the_pages_and_only_those_are_poisoned(swapping):
    """FLUSHDB empties the server: a swap-in finds no key and poisons that page; pages still
    resident are intact."""
    server, h, g = swapping
    server.client().flushdb()
    victim = _swapped(g)[0]
    _assert_memory_failure(g.trap(0, victim, write=False), victim)
    assert all(g.trap(0, p, write=False).KIND == Kind.RESUME for p in _resident(g)[:10])
    h.stop()
    assert "is missing on 127.0.0.1" in h.stderr and "FLUSHDB" in h.stderr


def test_a_value_of_the_wrong_size_poisons_the_page(swapping):
    """A key overwritten with 100 bytes: the swap-in refuses it rather than map a short page."""
    server, h, g = swapping
    client = server.client()
    for key in client.scan_iter(match="apf:{*", count=1000):
        client.set(key, b"x" * 100)
    victim = _swapped(g)[0]
    _assert_memory_failure(g.trap(0, victim, write=False), victim)
    h.stop()
    assert "holds 100 bytes, not a page" in h.stderr


def test_an_out_of_memory_server_keeps_write_backs_resident_over_budget(host, redis_server):
    """maxmemory reached (noeviction): SET is refused with OOM, each such write-back keeps its
    page resident and the host over budget, counted; no page is lost or poisoned."""
    server = redis_server("--maxmemory-policy", "noeviction")
    h = host(*HOST, "--swap", server.url)
    client = server.client()
    client.config_set("maxmemory", client.info("memory")["used_memory"] + 64 * 1024)
    g = attached_guest(h.info, pages=200)
    try:
        stats = g.stats()
        assert stats["swap"]["write_errors"] > 0 and stats["memory"]["over_budget_events"] > 0
        assert stats["swap"]["remote"]["errors"] >= stats["swap"]["write_errors"]
        for p in range(200):
            assert g.trap(0, p, write=False).KIND == Kind.RESUME
        assert g.stats()["faults"]["poisoned"] == 0
    finally:
        g.close()
    h.stop()
    assert "out of memory (maxmemory)" in h.stderr


def test_injected_remote_faults_take_the_same_paths(host, redis_server):
    """`--inject swap-remote:timeout:pages=G` times out every request for page G, so its
    write-back fails and the page stays resident (counted as a timeout);
    `swap-remote:disconnect:n=20` breaks the connection under the requests in flight, which fail
    into the same paths, and the engine reconnects for the next request."""
    server = redis_server()
    h = host(*HOST, "--swap", server.url, "--inject", "swap-remote:timeout:pages=5",
             "--inject", "swap-remote:disconnect:n=20")
    g = attached_guest(h.info, pages=200)
    try:
        stats = g.stats()
        assert 5 not in _swapped(g) and g.trap(0, 5, write=False).KIND == Kind.RESUME
        assert stats["swap"]["remote"]["timeouts"] >= 1
        assert stats["swap"]["write_errors"] >= 2 and stats["memory"]["over_budget_events"] >= 2
        assert stats["injected"]["swap-remote:disconnect"] == 1
        assert all(g.trap(0, p, write=False).KIND == Kind.RESUME for p in _swapped(g)[:20])
        assert g.stats()["faults"]["poisoned"] == 0
    finally:
        g.close()
    h.stop()
    assert "connection lost" in h.stderr


def test_a_session_ending_with_write_backs_stuck_at_the_server_leaves_no_key(host, redis_server):
    """Write-backs sent to a stopped server (SIGSTOP) are still in flight when the guest powers
    off, and stay so past the teardown bound. Deleting the session's keys must neither hold up
    the host (STATS is answered at once, while the server is still stopped) nor overtake them:
    once the server runs again, the SETs land and then their keys are deleted, so no slot key
    of the session is left while the host runs on (its lease stays until it stops)."""
    server = redis_server()
    h = host("--guest-mem", "1MiB", "--host-mem", "256KiB", "--swap", server.url, "--swap-timeout", "5s",
             "--teardown-bound", "200ms")
    g = RawGuest(h.info, name="leaving")
    try:
        assert g.hello().KIND == Kind.WELCOME
        server.pause()
        try:
            for gfn in range(96):            # first-touch writes; past the watermark write-backs start
                g.send_trap(0, gfn)
            g.pump_until(lambda: started_io(g.stats()["swap"]) > 0, "write-backs sent to the stopped server")
            assert isinstance(g.request(g.ctl, Hvc(0, 0, int(FuncId.PSCI_SYSTEM_OFF), ())), HvcRet)
            asked = time.monotonic()
            stats = g.stats()
            assert time.monotonic() - asked < 2.0, "the host's loop waited on the stopped server"
            assert stats["session"]["stale_io_running"] > 0 and stats["swap"]["remote"]["keys"] > 0
        finally:
            server.resume()
        wait_until(lambda: (s := g.stats())["session"]["stale_io_running"] == 0
                   and s["swap"]["io_in_flight"] == 0 and s["swap"]["remote"]["keys"] == 0,
                   "the write-backs ended and the session's keys were deleted", 15, every_s=0.05)
    finally:
        g.close()
    assert [k for k in server.apf_keys() if k.startswith(b"apf:{")] == []
    assert h.proc.poll() is None
    h.stop()
    assert server.apf_keys() == []
