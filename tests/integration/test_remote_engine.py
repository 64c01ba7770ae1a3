"""The Redis I/O engine on its own against a real server: a swap-in with readahead is one
multi-key read (MGET), and each page of it succeeds or fails on its own value."""
import errno
import mmap

from host.swapio.endpoint import parse_endpoint
from host.swapio.engine import IoOp
from host.swapio.remote import RemoteSwap, slot_key
from host.swapio.remote_io import RedisEngine
from protocol.messages import PAGE_SIZE

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
