"""The Redis I/O engine on its own against a real server (and a real three-node cluster): a
swap-in with readahead is one multi-key read (MGET), and each page of it succeeds or fails on its
own value; other reads share MGETs of fewer than depth/2 keys, one per hash tag in a cluster;
deletes are UNLINKs of one hash tag's keys; the session's lease has its TTL and is renewed."""
import errno
import mmap
import os
from contextlib import contextmanager

from host.swapio.endpoint import parse_endpoint
from host.swapio.engine import IoOp
from redis.cluster import RedisCluster

import host.swapio.remote_io as remote_io
from host.swapio.remote import LEASE_TTL_S, RemoteSwap, slot_key
from host.swapio.remote_io import RedisEngine
from protocol.messages import PAGE_SIZE
from tests.helpers import wait_until

SLOTS = 64


def _completions(engine, n: int) -> dict[int, int]:
    """Wait (bounded) for `n` completions: gfn -> errno."""
    done: dict[int, int] = {}
    while len(done) < n:
        assert engine.wait(10.0), f"only {len(done)} of {n} completions within 10 s"
        for c in engine.drain():
            done[c.gfn] = c.err
    return done


def _page(gfn: int) -> bytes:
    return (gfn.to_bytes(2, "little") * (PAGE_SIZE // 2))


def test_a_readahead_window_is_one_mget_and_each_page_fails_alone(redis_server):
    """Eight pages written, then read as one request with readahead: the server counts one MGET
    and no GET, and every page comes back. With one key deleted and another holding half a page,
    the same window reads the six good pages and fails those two, ENODATA and EBADMSG."""
    server = redis_server()
    ram = mmap.mmap(-1, SLOTS * PAGE_SIZE)
    view = memoryview(ram)
    swap = RemoteSwap(parse_endpoint(server.url), SLOTS, 5.0)
    engine = RedisEngine(swap, lambda gfn: view[gfn * PAGE_SIZE:(gfn + 1) * PAGE_SIZE], 8)
    engine.start()
    try:
        for gfn in range(8):
            view[gfn * PAGE_SIZE:(gfn + 1) * PAGE_SIZE] = _page(gfn)
            engine.submit(IoOp.WRITE, gfn)
        assert _completions(engine, 8) == {gfn: 0 for gfn in range(8)}
        view[:8 * PAGE_SIZE] = bytes(8 * PAGE_SIZE)
        client = server.client()
        client.config_resetstat()
        engine.submit(IoOp.READ, 0, range(1, 8))
        assert _completions(engine, 8) == {gfn: 0 for gfn in range(8)}
        stats = client.info("commandstats")
        assert stats["cmdstat_mget"]["calls"] == 1 and "cmdstat_get" not in stats, stats
        assert all(view[g * PAGE_SIZE:(g + 1) * PAGE_SIZE] == _page(g) for g in range(8))

        client.delete(slot_key(swap.sid, 3))
        client.set(slot_key(swap.sid, 5), b"x" * (PAGE_SIZE // 2))
        view[:8 * PAGE_SIZE] = bytes(8 * PAGE_SIZE)
        engine.submit(IoOp.READ, 0, range(1, 8))
        errs = _completions(engine, 8)
        assert errs == {**{gfn: 0 for gfn in range(8)}, 3: errno.ENODATA, 5: errno.EBADMSG}
        assert swap.errors == 2
        assert all(view[g * PAGE_SIZE:(g + 1) * PAGE_SIZE] == _page(g) for g in range(8) if g not in (3, 5))
    finally:
        engine.stop()
        swap.close()
        view.release()
        ram.close()
    assert server.apf_keys() == []


@contextmanager
def _engine(url: str, depth: int = 8):
    """A RemoteSwap of SLOTS slots on `url` and its RedisEngine over an anonymous RAM mapping,
    not started: (swap, engine, view). Stopped and closed (its keys deleted) after."""
    ram = mmap.mmap(-1, SLOTS * PAGE_SIZE)
    view = memoryview(ram)
    swap = RemoteSwap(parse_endpoint(url), SLOTS, 5.0)
    engine = RedisEngine(swap, lambda gfn: view[gfn * PAGE_SIZE:(gfn + 1) * PAGE_SIZE], depth)
    try:
        yield swap, engine, view
    finally:
        engine.stop()
        swap.close()
        view.release()
        ram.close()


def _mget_calls(clients) -> int:
    return sum(c.info("commandstats").get("cmdstat_mget", {}).get("calls", 0) for c in clients)


def _stored(swap: RemoteSwap, client, gfns) -> None:
    """Each page of `gfns` stored at its slot's key (`client`: of the server, or of the cluster)."""
    for gfn in gfns:
        client.set(slot_key(swap.sid, gfn), _page(gfn))


def test_reads_without_readahead_share_mgets_of_fewer_than_half_the_depth(redis_server):
    """Eight single-page reads taken in one batch (depth 8) go as two MGETs of four keys each
    (an MGET takes at most depth/2 keys of other jobs), not eight GETs; every page comes back."""
    server = redis_server()
    client = server.client()
    with _engine(server.url) as (swap, engine, view):
        _stored(swap, client, range(8))
        for gfn in range(8):
            engine.submit(IoOp.READ, gfn)        # queued before the thread starts: one batch
        client.config_resetstat()
        engine.start()
        assert _completions(engine, 8) == {gfn: 0 for gfn in range(8)}
        stats = client.info("commandstats")
        assert stats["cmdstat_mget"]["calls"] == 2 and "cmdstat_get" not in stats, stats
        assert all(view[g * PAGE_SIZE:(g + 1) * PAGE_SIZE] == _page(g) for g in range(8))


def test_in_a_cluster_each_hash_tag_has_its_own_mget(redis_cluster):
    """In a cluster an MGET may not span hash slots: eight single-page reads of eight different
    slot groups (hash tags) in one batch are eight MGETs, spread over the nodes the tags live on,
    and none is refused (no CROSSSLOT error: every page comes back)."""
    clients = [n.client() for n in redis_cluster.nodes]
    with _engine(redis_cluster.url) as (swap, engine, view):
        spread = [8 * i for i in range(8)]              # slots 0, 8, ..., 56: eight hash tags
        _stored(swap, RedisCluster(host="127.0.0.1", port=redis_cluster.nodes[0].port), spread)
        assert len({swap.route(slot_key(swap.sid, g)) for g in spread}) > 1
        for gfn in spread:
            engine.submit(IoOp.READ, gfn)
        for c in clients:
            c.config_resetstat()
        engine.start()
        assert _completions(engine, 8) == {gfn: 0 for gfn in spread}
        assert _mget_calls(clients) == 8 and swap.errors == 0
        assert all(view[g * PAGE_SIZE:(g + 1) * PAGE_SIZE] == _page(g) for g in spread)


def test_discarded_slots_are_unlinked_one_hash_tag_per_command(redis_server):
    """Sixteen pages written (two slot groups), then their slots discarded: the engine deletes
    the keys with UNLINK (never DEL, which would free the values on the server's main thread),
    one command per group of eight, and the session's key count drops to 0."""
    server = redis_server()
    client = server.client()
    with _engine(server.url) as (swap, engine, view):
        engine.start()
        for gfn in range(16):
            view[gfn * PAGE_SIZE:(gfn + 1) * PAGE_SIZE] = _page(gfn)
            engine.submit(IoOp.WRITE, gfn)
        assert _completions(engine, 16) == {gfn: 0 for gfn in range(16)}
        assert len([k for k in server.apf_keys() if k.startswith(b"apf:{")]) == 16 == swap.keys
        client.config_resetstat()
        swap.discard(0, 16)
        wait_until(lambda: not [k for k in server.apf_keys() if k.startswith(b"apf:{")], "the keys deleted")
        stats = client.info("commandstats")
        assert stats["cmdstat_unlink"]["calls"] == 2 and "cmdstat_del" not in stats, stats
        assert swap.keys == 0


def test_the_lease_has_its_ttl_and_the_engine_renews_it(redis_server, monkeypatch):
    """The session's lease `apf:lease:SID` is set with a TTL of LEASE_TTL_S (60 s) when the swap
    opens; the engine renews it every LEASE_REFRESH_S (10 s; shortened here to 0.2 s, the renewal
    path unchanged): a lease whose TTL the test cut to 5 s is back near 60 s while the engine
    runs idle, and holds this host's pid."""
    monkeypatch.setattr(remote_io, "LEASE_REFRESH_S", 0.2)
    server = redis_server()
    client = server.client()
    with _engine(server.url) as (swap, engine, view):
        ttl = client.ttl(swap.lease_key)
        assert LEASE_TTL_S - 5 <= ttl <= LEASE_TTL_S == 60
        client.pexpire(swap.lease_key, 5000)
        engine.start()
        wait_until(lambda: client.ttl(swap.lease_key) > LEASE_TTL_S - 5, "the lease renewed", 10)
        assert int(client.get(swap.lease_key)) == os.getpid()
    assert client.exists(swap.lease_key) == 0          # closing the swap removes it
