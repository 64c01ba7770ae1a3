"""The swap device on Redis: one key per swap slot, under a prefix of this host's own.

The device half of a remote swap; its I/O engine is host/swapio/remote_io.py. It has the
SwapDevice surface the daemon and the slot allocator use (`discard`, `discard_all`,
`allocated_bytes`, `close`), so nothing above host/swapio/ knows where the slots live.

Keys. A host's session id is `HOSTNAME.PID.TOKEN` (TOKEN: 8 random hex digits per host start).
Slot S is the key `apf:{SID/G}:S` with G = S >> 3, holding exactly one page (4096 bytes). The
hash tag `{SID/G}` puts each aligned group of 8 slots (a swap readahead window, Linux's
vm.page-cluster 3) on one cluster node, while the groups spread over the nodes. The session's
lease `apf:lease:SID` is set with a TTL of LEASE_TTL_S and renewed every LEASE_REFRESH_S by the
I/O engine; a host that starts removes every `apf:{…}` key whose session has no lease (a host
that died without cleaning up), and a host that stops removes its own keys and lease.

Connections. Each node has one connection for control work (this module, on the poll loop's
thread: the start-up checks, the sweep, the last deletes when the host stops) and one for the
I/O engine's thread. Deletes while the engine runs are the engine's, sent on its connection in
order with the writes (host/swapio/remote_io.py), so the poll loop never waits on the server
for them:
- `discard` (a cluster of slots the allocator emptied) goes before any write taken after it:
  a slot reused at once must not lose its new page.
- `discard_all` (a guest session ended) is a purge: it goes after every write taken before it,
  however far those have got (a SET still in flight lands first, then its key is deleted), and
  before any write taken after it. `lock` makes "taken before" exact: the engine takes jobs and
  notes their slots under it, and `discard_all` asks for the purge under it.

The `present` map (one byte a slot: the key may exist) and `keys` are the engine thread's while
it runs, and the poll loop's only once it has stopped.

Errors at start: SwapIOError when a server or cluster node cannot be reached, ConfigError when
it refuses the credentials, the database, or is not what the URL says (a cluster URL for a
server without cluster mode, and the reverse; a `rediss://` URL for a server whose TLS
handshake fails, or that does not speak TLS on that port at all).
"""
from __future__ import annotations

import errno
import logging
import mmap
import os
import secrets
import socket
import ssl
import threading
from array import array
from collections import deque
from typing import Any, Iterable

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from host.swapio.endpoint import RemoteEndpoint
from protocol.errors import ConfigError, SwapIOError
from protocol.messages import PAGE_SIZE
from shared.metrics import percentiles_us

log = logging.getLogger("apf.host")

KEY_PREFIX = b"apf:{"
LEASE_PREFIX = b"apf:lease:"
GROUP_SHIFT = 3                 # 8 slots per hash tag: one readahead window on one node
LEASE_TTL_S = 60                # a session whose host stops renewing is dead after this
LEASE_REFRESH_S = 10
CTL_BATCH = 1000                # commands per pipelined round trip of the control work
PURGE_KEYS = 1024               # keys the engine deletes per turn of a purge (bounded writes)
RTT_SAMPLES = 1 << 16           # the newest round trips kept for the percentiles
CONNECT_TIMEOUT_FLOOR_S = 0.2


def session_id() -> bytes:
    """`HOSTNAME.PID.TOKEN`: unique to this host process, with the host name so that hosts of
    several machines sharing one Redis keep apart."""
    host = socket.gethostname().replace("{", "").replace("}", "").replace("/", "").replace(":", "")
    return f"{host}.{os.getpid()}.{secrets.token_hex(4)}".encode()


def slot_key(sid: bytes, slot: int) -> bytes:
    """The key of swap slot `slot` of session `sid`."""
    return b"apf:{%s/%d}:%d" % (sid, slot >> GROUP_SHIFT, slot)


def key_session(key: bytes) -> bytes | None:
    """The session id in a slot key, or None if `key` is not one."""
    if not key.startswith(KEY_PREFIX) or b"/" not in key:
        return None
    return key[len(KEY_PREFIX):key.index(b"/")]


class RemoteSwap:
    """Swap slots as Redis keys. `nodes` are the servers (one, or a cluster's primaries);
    `route(key)` is the index of the node holding `key`.

    Counters, read by the poll loop for stats and written by the I/O engine's one thread:
    `timeouts`, `errors` (failed I/O of any other kind) and a ring of the newest round-trip
    times in ns (`rtt_ns`, `rtt_count`)."""

    direct_io = False

    def __init__(self, endpoint: RemoteEndpoint, nslots: int, timeout_s: float, password: str | None = None):
        """Connect to the endpoint, check every node answers, sweep keys of dead sessions, take the
        lease. Raises SwapIOError (unreachable) or ConfigError (refused, wrong kind of server);
        nothing stays open when it raises."""
        self.endpoint = endpoint
        self.backend = endpoint.backend
        self.text = endpoint.text
        self.path = endpoint.text        # what host.json's "swap" shows: no credentials
        self.nslots = nslots
        self.timeout_s = timeout_s
        self.sid = session_id()
        self.lease_key = LEASE_PREFIX + self.sid
        self._password = password
        self._engine: Any = None
        self._discards: deque[tuple[int, int]] = deque()
        self.lock = threading.Lock()         # jobs taken (engine) vs a purge asked for (poll loop)
        self._purge_asked = False            # discard_all while the engine runs; under `lock`
        self._purge_at = -1                  # engine side: the next slot to look at, -1 if no purge
        self._map_mm = mmap.mmap(-1, nslots, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.present = memoryview(self._map_mm)   # 1: the key may exist (written, not deleted)
        self.keys = 0
        self.timeouts = 0
        self.errors = 0
        self.rtt_ns = array("q", bytes(8 * RTT_SAMPLES))
        self.rtt_count = 0
        self.nodes: list[tuple[str, int] | str] = []
        self._slot_node: array | None = None     # cluster: hash slot -> node index
        self._ctl: list[redis.Connection] = []
        try:
            self._discover()
            self._ctl = [self.connect(i) for i in range(len(self.nodes))]
            for i, conn in enumerate(self._ctl):
                self._start_node(i, conn)
            swept = self.sweep()
            if swept:
                log.info("removed %d key(s) of %d dead session(s) from %s", swept[1], swept[0], self.text)
            self._call(self.route(self.lease_key), "SET", self.lease_key, str(os.getpid()), "EX", LEASE_TTL_S)
        except BaseException:
            self._disconnect_all()
            self.present.release()
            self._map_mm.close()
            raise

    # -- connections -------------------------------------------------------------------------------
    def _conn_kwargs(self) -> dict[str, Any]:
        ep = self.endpoint
        kwargs: dict[str, Any] = dict(socket_timeout=self.timeout_s, password=self._password,
                                      socket_connect_timeout=max(CONNECT_TIMEOUT_FLOOR_S, self.timeout_s),
                                      username=ep.username, retry_on_timeout=False)
        if not ep.cluster:
            kwargs["db"] = ep.db
        if self._tls:
            kwargs.update(ep.tls)
        return kwargs

    @property
    def _tls(self) -> bool:
        return self.endpoint.scheme == "rediss" or bool(self.endpoint.tls)

    def connect(self, node: int) -> redis.Connection:
        """A new, not yet connected connection to node `node` (it connects on first use)."""
        target = self.nodes[node]
        kwargs = self._conn_kwargs()
        if isinstance(target, str):
            return redis.UnixDomainSocketConnection(path=target, **kwargs)
        host, port = target
        if self._tls:
            return redis.SSLConnection(host=host, port=port, **kwargs)
        return redis.Connection(host=host, port=port, **kwargs)

    def _node_name(self, node: int) -> str:
        target = self.nodes[node]
        return target if isinstance(target, str) else f"{target[0]}:{target[1]}"

    def _discover(self) -> None:
        ep = self.endpoint
        if ep.path is not None:
            self.nodes = [ep.path]
            return
        if not ep.cluster:
            self.nodes = list(ep.nodes)
            return
        kwargs = self._conn_kwargs()
        kwargs.pop("retry_on_timeout")
        if self._tls:
            kwargs["ssl"] = True
        try:
            cluster = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in ep.nodes],
                                   require_full_coverage=True, **kwargs)
        except redis.AuthenticationError as exc:
            raise ConfigError(f"--swap {self.text}: the cluster refused the credentials: {exc}") from None
        except (redis.RedisError, RedisClusterException, OSError) as exc:
            if "Cluster mode is not enabled" in str(exc):
                raise ConfigError(f"--swap {self.text}: the server is not in cluster mode; use "
                                  f"redis://HOST:PORT for a single server") from None
            why = _tls_failure(exc, ep.nodes[0], self.timeout_s) if self._tls else None
            if why:
                raise ConfigError(f"--swap {self.text}: the TLS handshake with the cluster failed: {why}") from None
            raise SwapIOError(f"--swap {self.text}: cannot use the cluster: {_why(exc)}") from exc
        try:
            primaries = sorted({(n.host, n.port) for n in cluster.get_primaries()})
            index = {hp: i for i, hp in enumerate(primaries)}
            table = array("H", bytes(2 * 16384))
            for slot in range(16384):
                owners = cluster.nodes_manager.slots_cache.get(slot)
                if not owners:
                    raise SwapIOError(f"--swap {self.text}: hash slot {slot} has no node (cluster not ok)")
                table[slot] = index[(owners[0].host, owners[0].port)]
        finally:
            cluster.close()
        self.nodes = primaries
        self._slot_node = table

    def route(self, key: bytes) -> int:
        """The node index holding `key`: 0 for one server, by hash slot in a cluster."""
        table = self._slot_node
        return 0 if table is None else table[key_slot(key)]

    def _start_node(self, node: int, conn: redis.Connection) -> None:
        """Connect (AUTH, SELECT) and check the server is the kind the URL names."""
        name = self._node_name(node)
        try:
            conn.connect()
            conn.send_command("INFO", "cluster")
            info = conn.read_response()
        except (redis.AuthenticationError, redis.ResponseError) as exc:
            if self._password is None and ("NOAUTH" in str(exc) or isinstance(exc, redis.AuthenticationError)):
                raise ConfigError(f"--swap {self.text}: {name} wants a password: give it with "
                                  "--swap-password-file") from None
            if isinstance(exc, redis.AuthenticationError) or "WRONGPASS" in str(exc):
                raise ConfigError(f"--swap {self.text}: {name} refused the credentials: {exc} "
                                  "(check the user in the URL and --swap-password-file)") from None
            raise ConfigError(f"--swap {self.text}: {name} refused the connection: {exc}") from None
        except (redis.RedisError, OSError) as exc:
            target = self.nodes[node]
            if self._tls and not isinstance(target, str):
                why = _tls_failure(exc, target, self.timeout_s)
                if why:
                    raise ConfigError(f"--swap {self.text}: the TLS handshake with {name} failed: {why}") from None
            raise SwapIOError(f"--swap {self.text}: cannot reach {name}: {_why(exc)}") from exc
        enabled = b"cluster_enabled:1" in (info if isinstance(info, bytes) else str(info).encode())
        if enabled and not self.endpoint.cluster:
            raise ConfigError(f"--swap {self.text}: {name} is a cluster node; use "
                              f"redis+cluster://{name}")
        if self.endpoint.cluster and not enabled:
            raise ConfigError(f"--swap {self.text}: {name} is not in cluster mode")

    def _call(self, node: int, *args: Any) -> Any:
        conn = self._ctl[node]
        conn.send_command(*args)
        return conn.read_response()

    def _pipeline(self, node: int, commands: list[tuple]) -> list[Any]:
        """Send `commands` to `node` in rounds of CTL_BATCH; replies in order (a ResponseError
        reply is returned, not raised). Raises redis.RedisError or OSError if the node fails."""
        conn = self._ctl[node]
        replies: list[Any] = []
        for i in range(0, len(commands), CTL_BATCH):
            chunk = commands[i:i + CTL_BATCH]
            conn.send_packed_command(conn.pack_commands(chunk))
            for _ in chunk:
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
        return replies

    def _disconnect_all(self) -> None:
        for conn in self._ctl:
            conn.disconnect()

    # -- the sweep of dead sessions ------------------------------------------------------------------
    def sweep(self) -> tuple[int, int] | None:
        """Remove the keys of every session that holds no lease (its host died without cleaning
        up). Returns (sessions, keys) removed, or None if there were none."""
        found: dict[bytes, list[tuple[int, bytes]]] = {}
        for node, conn in enumerate(self._ctl):
            cursor = b"0"
            while True:
                cursor, keys = self._call(node, "SCAN", cursor, "MATCH", b"apf:{*", "COUNT", CTL_BATCH)
                for key in keys:
                    sid = key_session(key)
                    if sid is not None and sid != self.sid:
                        found.setdefault(sid, []).append((node, key))
                if cursor in (b"0", 0):
                    break
        dead = [sid for sid in found if not self._call(self.route(LEASE_PREFIX + sid), "EXISTS", LEASE_PREFIX + sid)]
        removed = 0
        for sid in dead:
            removed += self._unlink(found[sid])
        return (len(dead), removed) if dead else None

    def _unlink(self, keys: list[tuple[int, bytes]]) -> int:
        by_node: dict[int, list[tuple]] = {}
        for node, key in keys:
            by_node.setdefault(node, []).append(("UNLINK", key))
        return sum(sum(r for r in self._pipeline(node, cmds) if isinstance(r, int))
                   for node, cmds in by_node.items())

    # -- the SwapDevice surface ----------------------------------------------------------------------
    def attach(self, engine: Any) -> None:
        """The I/O engine that sends this device's discards (host/swapio/remote_io.py)."""
        self._engine = engine

    def discard(self, first_slot: int, count: int) -> None:
        """Delete the keys of `count` slots from `first_slot` (a cluster of slots the allocator
        emptied). Queued for the I/O engine, which sends the deletes before any job it takes
        after this call: a slot's delete reaches its node before a later write of that slot."""
        self._discards.append((first_slot, count))
        if self._engine is not None:
            self._engine.wake()
        else:
            self.take_discards_now()

    def pending_discards(self) -> bool:
        """Whether the engine has deletes to send: queued discards, or a purge asked for or under way."""
        return bool(self._discards) or self._purge_asked or self._purge_at >= 0

    def take_discards(self) -> list[tuple[int, int]]:
        """The queued discards, oldest first, taken from the queue (the engine's side)."""
        taken = self._discards
        return [taken.popleft() for _ in range(len(taken))]

    def take_discards_now(self) -> None:
        """Delete the queued discards over the control connections (no engine is attached)."""
        keys = []
        for first, count in self.take_discards():
            for slot in range(first, first + count):
                if self.present[slot]:
                    key = slot_key(self.sid, slot)
                    keys.append((self.route(key), key))
                    self.forget(slot)
        if keys:
            self._unlink(keys)

    # -- the engine's side of the deletes (its thread; `lock` held where said) ----------------------
    def start_purge(self) -> bool:
        """With `lock` held, before taking jobs: begin the purge asked for, if any. True while a
        purge is under way: the engine takes no job until it has sent every delete."""
        if self._purge_asked:
            self._purge_asked = False
            self._purge_at = 0
        return self._purge_at >= 0

    def purge_unlinks(self, most: int) -> list[tuple[int, tuple, tuple[int, ...]]]:
        """The next deletes of the purge, at most `most` keys, forgotten as they are taken: (node,
        UNLINK command, its slots) per group. The purge ends when the map has no key left."""
        slots: list[int] = []
        at = self._purge_at
        while len(slots) < most:
            at = self._map_mm.find(b"\x01", at)
            if at < 0:
                break
            slots.append(at)
            self.forget(at)
            at += 1
        self._purge_at = at
        return self.unlinks(slots)

    def discard_unlinks(self, discards: Iterable[tuple[int, int]]) -> list[tuple[int, tuple, tuple[int, ...]]]:
        """The deletes of the queued discards `discards` [(first slot, count)]: their slots that
        hold a key, forgotten, as in purge_unlinks."""
        slots = []
        present = self.present
        for first, count in discards:
            for slot in range(first, first + count):
                if present[slot]:
                    slots.append(slot)
                    self.forget(slot)
        return self.unlinks(slots)

    def unlinks(self, slots: list[int]) -> list[tuple[int, tuple, tuple[int, ...]]]:
        """One UNLINK per group of 8 slots (one hash tag, so one cluster node): (node, command,
        slots), in the order of `slots` (ascending)."""
        out: list[tuple[int, tuple, tuple[int, ...]]] = []
        sid = self.sid
        i = 0
        while i < len(slots):
            group = slots[i] >> GROUP_SHIFT
            j = i + 1
            while j < len(slots) and slots[j] >> GROUP_SHIFT == group:
                j += 1
            keys = [slot_key(sid, slot) for slot in slots[i:j]]
            out.append((self.route(keys[0]), ("UNLINK", *keys), tuple(slots[i:j])))
            i = j
        return out

    def remember(self, slot: int) -> None:
        """A write of `slot` was sent: its key may exist now."""
        if not self.present[slot]:
            self.present[slot] = 1
            self.keys += 1

    def forget(self, slot: int) -> None:
        """A delete of `slot` was sent."""
        if self.present[slot]:
            self.present[slot] = 0
            self.keys -= 1

    def allocated_bytes(self) -> int:
        """Bytes of page values this session may hold in Redis: one page per key written and not
        deleted (what the server spends on each key besides is not counted)."""
        return self.keys * PAGE_SIZE

    def discard_all(self) -> None:
        """Delete every key of this session (its lease stays): at the end of a guest session, and
        when the host stops. While the engine runs this only asks it for a purge and returns (the
        poll loop never waits on the server for it; module docstring for the order). Otherwise
        the deletes go over the control connections now; a node that fails is logged, and its
        keys are left to the next host's sweep. Never raises for the server's sake."""
        engine = self._engine
        if engine is not None and engine.running():
            with self.lock:     # the queued discards stay: the purge's first turn takes them
                self._purge_asked = True
            engine.wake()
            return
        self._discards.clear()
        self._purge_asked = False
        self._purge_at = -1
        keys = []
        slot = self._map_mm.find(b"\x01")
        while slot >= 0:
            key = slot_key(self.sid, slot)
            keys.append((self.route(key), key))
            slot = self._map_mm.find(b"\x01", slot + 1)
        self._map_mm.madvise(mmap.MADV_DONTNEED)   # all zero again, and the memory given back
        self.keys = 0
        if not keys:
            return
        try:
            self._unlink(keys)
        except (redis.RedisError, OSError) as exc:
            for conn in self._ctl:
                conn.disconnect()     # a half-read pipeline: start the next use afresh
            log.warning("could not delete %d swap key(s) of session %s from %s: %s; the next host's sweep "
                        "removes them once this host's lease has expired (%ds)", len(keys), self.sid.decode(),
                        self.text, _why(exc), LEASE_TTL_S)

    def close(self, unlink: bool = True) -> None:
        """Delete this session's keys (unless `unlink` is False) and its lease, and disconnect."""
        try:
            if unlink:
                self.discard_all()
                self._call(self.route(self.lease_key), "DEL", self.lease_key)
        except (redis.RedisError, OSError) as exc:
            log.warning("could not remove the lease of session %s from %s: %s; its keys are removed by "
                        "the next host's sweep once the lease expires (%ds)", self.sid.decode(), self.text,
                        _why(exc), LEASE_TTL_S)
        finally:
            self._disconnect_all()
            self.present.release()
            self._map_mm.close()

    # -- figures ---------------------------------------------------------------------------------------
    def figures(self) -> dict[str, Any]:
        """`swap.remote` of the STATS map: keys and bytes this session may hold, I/O that timed out
        or failed otherwise, and the round trips' percentiles (µs) of the newest RTT_SAMPLES."""
        n = min(self.rtt_count, RTT_SAMPLES)
        return {"keys": self.keys, "bytes": self.keys * PAGE_SIZE, "timeouts": self.timeouts,
                "errors": self.errors, "rtt_us": percentiles_us(self.rtt_ns[:n]), "nodes": len(self.nodes)}


def _why(exc: BaseException) -> str:
    """An exception as a short reason, errno text first where there is one."""
    cause = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__


PLAIN_PROBE = b"PING\r\n"
NOT_TLS_HINT = "use a URL without TLS, e.g. redis://, or the server's --tls-port"


def _tls_failure(exc: BaseException, target: tuple[str, int], timeout_s: float) -> str | None:
    """Why a TLS connection to `target` (host, port) failed in its handshake, or None if it did
    not fail there. An SSL error is the handshake's own reason (a certificate not trusted, a
    protocol mismatch). Otherwise (a timeout, a reset) one plain-text PING over a new connection,
    bounded by `timeout_s`, tells a server that does not speak TLS from one that is silent or
    gone: a server that answers it in RESP (`+PONG`, or an error such as `-NOAUTH`) speaks plain
    Redis on that port, and left the client's hello unanswered."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (f"its certificate is not trusted: {cause.verify_message} (name the CA that signed it "
                    "with ?ssl_ca_certs=FILE)")
        if isinstance(cause, ssl.SSLError):
            if cause.reason == "WRONG_VERSION_NUMBER":
                return f"the server did not speak TLS ({NOT_TLS_HINT})"
            return str(cause.reason or cause).lower().replace("_", " ")
        cause = cause.__cause__ or cause.__context__
    try:
        with socket.create_connection(target, timeout=max(CONNECT_TIMEOUT_FLOOR_S, timeout_s)) as sock:
            sock.sendall(PLAIN_PROBE)
            answer = sock.recv(64)
    except OSError:
        return None
    if answer[:1] in (b"+", b"-"):
        return f"the server did not speak TLS: it answered plain RESP on that port ({NOT_TLS_HINT})"
    return None


def io_errno(exc: BaseException) -> int:
    """The errno a failed remote I/O completes with: ETIMEDOUT for a timeout, the socket's own
    errno when there is one, else ECONNRESET (the connection broke)."""
    if isinstance(exc, (redis.TimeoutError, TimeoutError, socket.timeout)):
        return errno.ETIMEDOUT
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno:
            return cause.errno
        cause = cause.__cause__ or cause.__context__
    return errno.ECONNRESET

