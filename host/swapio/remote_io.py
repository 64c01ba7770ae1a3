"""Swap I/O to Redis: one thread keeps up to `--io-depth` requests in flight, pipelined.

Why one thread with pipelined connections, not a thread per request nor asyncio. Measured on a
2-core machine against a local redis-server 7.0 (4 KiB values, depth 8, loopback TCP, 20,000
GETs, redis-py 8.1 with hiredis): one thread sending each batch of jobs as one pipeline and
reading the replies in order did 60,000–100,000 GETs/s; eight threads, each with its own
connection and a blocking GET, about 16,000/s; `redis.asyncio` with eight tasks on one event loop
about 15,600/s. Each blocking request costs a GIL handoff and two context switches, and asyncio
a future and a loop turn per reply; a pipeline costs one `sendall` per batch and a parse per
reply. So: jobs are taken from the lanes (reads first) until `depth` are in flight, every job
taken in one turn goes out in one write per node, and replies are read in the order sent. The
window is refilled once half of it is free and the replies that have arrived are all taken, not
after each reply: one write per batch of at least depth/2 jobs rather than one per job. Reads
go as multi-key reads (MGET): a read with readahead is one MGET (one per hash tag in a cluster,
whose commands may not span hash slots), and other reads of the batch join an MGET of fewer
than depth/2 keys, so that two are in flight and the server works on one while this thread
takes the other's reply (MGETs of all 8 made each batch wait a whole round trip, and ran at
half the pages/s of GETs). A read is not moved past a write on its node: a SET closes the
node's open MGETs. Against pipelined GETs, this cut the client's instructions per page by a
fifth (53,000 to 42,000 under callgrind, which runs the threads one at a time). Each page of an
MGET ends on its own value (a nil fails that page alone); an error reply fails all of them.

Per page the thread does as little Python as it can: commands are packed by hiredis
(`hiredis.pack_command`), replies are parsed by a hiredis Reader fed by one `recv_into` of all
that has arrived (not redis-py's `read_response`, a call chain per reply), and the completions
of one read are handed over together (BENCHMARKS.md, "Remote memory", has the figures).

    take jobs (up to depth in flight) ─► send per node: queued deletes, then the jobs ─► parse
    the oldest reply (read what has arrived when none is whole, posting the completions so far)
    ─► copy the pages in (MGET) / note the key (SET) ─► their Completions ─► refill when ≤ depth/2
    are in flight and no whole reply waits, else take the next reply

Deletes are this thread's too (host/swapio/remote.py says in which order): a discarded cluster's
keys go out with the next batch, ahead of its jobs; a purge (a guest session ended) starts
before the next jobs are taken, and until all of its deletes are sent (PURGE_KEYS keys a turn,
with at most PURGE_WINDOW delete commands awaiting their reply) no job is taken. Keys group by
their hash tag into one UNLINK of up to 8 keys. A delete that fails with its connection marks
its slots as holding a key again, for the next purge or the host's stop.

A node's replies come back in the order its requests went out, so the oldest in-flight request
overall is always the next reply on its node's connection. A cluster (`redis+cluster://`) has
one connection per primary; a job goes to the node owning its key's hash slot.

Failures, all ending the job with an errno and never the host (host/memory.py decides what a
failed read or write means: a poisoned page, or a page kept resident over budget):

| what happened                               | errno      | counted in |
|---------------------------------------------|------------|------------|
| no reply within --swap-timeout (SIGSTOP)    | ETIMEDOUT  | timeouts   |
| connection refused or lost (SIGKILL)        | its errno  | errors     |
| the key is missing (FLUSHDB, eviction)      | ENODATA    | errors     |
| a value that is not one page                | EBADMSG    | errors     |
| an error reply to SET (OOM: maxmemory)      | ENOSPC     | errors     |
| any other error reply                       | EIO        | errors     |

A timeout or a lost connection fails every request in flight on that node (their replies can
no longer be matched) and drops the connection; the next job reconnects. Each kind of failure
is logged with a line of its own template, which the daemons' repeat filter rate-limits.

`--swap-latency` (the IoEngine's `latency_ns`, scaled by time dilation, less `read_head_start_ns`
for a read) is modelled alongside the real round trip: a completion is posted no earlier than
its request's send time plus the latency, so requests in flight age together, as on a network
with that much delay. Its `modelled_ns` is that latency (all of the completion's time when the
thread slept to it); what the real round trip took beyond it is device time.
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import signal
import socket
import threading
import time
from collections import deque
from typing import Any, Callable

import hiredis
import redis

from host.swapio.engine import Completion, IoOp
from host.swapio.queues import QueuedEngine, precise_sleeps, seconds_left
from host.swapio.remote import GROUP_SHIFT, LEASE_REFRESH_S, LEASE_TTL_S, PURGE_KEYS, RemoteSwap, io_errno, slot_key
from shared.chaos import Chaos

log = logging.getLogger("apf.host")

IDLE_POLL_S = 1.0            # an idle engine looks at its lease and stop flag this often
READ, WRITE = IoOp.READ, IoOp.WRITE
DISCARD, LEASE = -1, -2      # requests in flight that post no completion
WIND_DOWN_GRACE_S = 0.5      # stop() lets requests in flight finish this long before cutting sockets
PURGE_WINDOW = 512           # delete commands of a purge awaiting their reply, at most
RECV_BYTES = 256 * 1024      # one read takes up to this much of the replies that have arrived


def _reader() -> hiredis.Reader:
    """A reply parser: bulk strings as bytes, error replies as redis.ResponseError values."""
    return hiredis.Reader(protocolError=redis.InvalidResponse, replyError=redis.ResponseError)


class RedisEngine(QueuedEngine):
    """The IoEngine of a RemoteSwap: one thread, `depth` requests in flight (module docstring)."""
    name = "redis"

    def __init__(self, swap: RemoteSwap, page_of: Callable[[int], memoryview], depth: int,
                 latency_ns: int = 0, chaos: Chaos | None = None, slot_of: Callable[[int], int] | None = None):
        super().__init__(swap, page_of, slot_of, latency_ns)   # type: ignore[arg-type]  (the SwapDevice surface)
        self.remote = swap
        self.depth = depth
        self.chaos = chaos or Chaos()
        self._tokens: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = False
        self._stop = threading.Event()
        self._conns: list[redis.Connection] = [swap.connect(i) for i in range(len(swap.nodes))]
        # Replies are parsed by a hiredis Reader per connection, fed straight from its socket
        # (redis-py's own parser answers one reply per call; this takes whatever has arrived).
        self._readers = [_reader() for _ in self._conns]
        self._recv_buf = bytearray(RECV_BYTES)
        self._thread = threading.Thread(target=self._run, name="redis-io", daemon=True)
        swap.attach(self)

    def start(self) -> None:
        """Start the I/O thread."""
        self._thread.start()

    def running(self) -> bool:
        """Whether the I/O thread runs and takes work: started, not told to stop."""
        return self._thread.is_alive() and not self._stop.is_set()

    def wake(self) -> None:
        """Something was queued (a job or a discard): wake the thread if it waits for work."""
        if self._idle:
            self._tokens.put(None)

    def _job_queued(self) -> None:
        if self._idle:           # after the append: an idle thread that missed the job gets a token
            self._tokens.put(None)

    def _wind_down(self, deadline: float) -> list[str]:
        """Stop taking jobs; requests in flight end (a reply, or the timeout); past a short grace
        the sockets are shut so that a read blocked on a silent server returns at once."""
        self._stop.set()
        self._tokens.put(None)
        if self._thread.ident is None:
            return []
        self._thread.join(min(WIND_DOWN_GRACE_S, seconds_left(deadline)))
        if self._thread.is_alive():
            for conn in self._conns:
                sock = getattr(conn, "_sock", None)
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            self._thread.join(seconds_left(deadline))
        return [self._thread.name] if self._thread.is_alive() else []

    def _release(self) -> None:
        for conn in self._conns:
            conn.disconnect()

    # -- the I/O thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        swap, conns, depth, readers = self.remote, self._conns, self.depth, self._readers
        stopped, page_of = self._stop.is_set, self.page_of
        monotonic_ns = time.monotonic_ns
        chaos = self.chaos if self.chaos.rules else None
        if self.latency_ns or chaos:
            precise_sleeps()        # its sleeps hold completions to a modelled latency
        # [node, op, gfn, slot, start_ns, extra_ns] in send order; a delete's gfn is its slots
        inflight: deque[list] = deque()
        done: list[Completion] = []     # posted together before the thread blocks or sleeps
        rtt, rtt_mask = swap.rtt_ns, len(swap.rtt_ns) - 1
        jobs_inflight = 0
        lease_due = time.monotonic() + LEASE_REFRESH_S
        refill_at = depth // 2   # send when at most this many jobs are in flight: a batch per send
        while True:
            reply = False
            if inflight:
                node = inflight[0][0]
                try:
                    reply = readers[node].gets()
                except redis.RedisError as exc:      # not RESP: the connection cannot be trusted
                    jobs_inflight -= self._fail_node(node, inflight, exc)
                    continue
            # Refill only once the replies that have arrived are taken: the batch is then as large
            # as the window allows.
            if reply is False and jobs_inflight <= refill_at:
                jobs_inflight, lease_due = self._send_batch(inflight, jobs_inflight, lease_due, chaos)
            if not inflight:
                if done:
                    self._post_many(done)
                    done = []
                if stopped():
                    return
                self._idle = True
                if not self.queued() and not swap.pending_discards():
                    try:
                        self._tokens.get(timeout=IDLE_POLL_S)
                    except queue.Empty:
                        pass
                self._idle = False
                continue
            head = inflight[0]
            if reply is False:                # no whole reply buffered: post what is done, then read
                if done:
                    self._post_many(done)
                    done = []
                try:
                    self._receive(head[0])
                except (redis.RedisError, OSError) as exc:
                    jobs_inflight -= self._fail_node(head[0], inflight, exc)
                continue
            inflight.popleft()
            op = head[1]
            if op < 0:
                continue                      # a delete or the lease: nothing waits for it
            end = monotonic_ns()
            rtt[swap.rtt_count & rtt_mask] = end - head[4]
            swap.rtt_count += 1
            latency_ns, modelled = self.latency_ns, 0   # the knobs as they are now (dilation sets them)
            if op == WRITE:
                jobs_inflight -= 1
                err = 0 if reply == b"OK" else self._bad_write(head, reply)
                if latency_ns or head[5]:
                    end, modelled = self._hold(head[4], latency_ns + head[5], end, done)
                done.append(Completion(op, head[2], err, head[4], end, modelled))
                continue
            latency_ns -= self.read_head_start_ns
            gfns = head[2]                    # an MGET: a value (or nil) per page, in order
            jobs_inflight -= len(gfns)
            values = reply if type(reply) is list and len(reply) == len(gfns) else None
            for i, gfn in enumerate(gfns):
                value = reply if values is None else values[i]
                if type(value) is bytes and len(value) == len(page := page_of(gfn)):
                    page[:] = value
                    err = 0
                else:
                    err = self._bad_read(head[0], gfn, head[3][i], value)
                if latency_ns or head[5][i]:
                    end, modelled = self._hold(head[4], latency_ns + head[5][i], end, done)
                done.append(Completion(READ, gfn, err, head[4], end, modelled))

    def _hold(self, sent_ns: int, model_ns: int, now: int, done: list[Completion]) -> tuple[int, int]:
        """The modelled latency `model_ns` of a request sent at `sent_ns` (monotonic ns), which
        runs alongside its round trip: if `now` is earlier than its end, post what is done and
        sleep until then. Returns the completion's end time and its modelled part: all of its
        time when it slept, else `model_ns` (the round trip took the rest, device time)."""
        due = sent_ns + model_ns
        if now >= due:
            return now, max(0, model_ns)
        if done:
            self._post_many(done)
            done.clear()
        time.sleep((due - now) / 1e9)
        end = time.monotonic_ns()
        return end, end - sent_ns

    def _receive(self, node: int) -> None:
        """Read what `node` has sent (blocking up to --swap-timeout) into its reply parser.
        Raises OSError (TimeoutError for the timeout) or redis.ConnectionError (closed)."""
        sock = getattr(self._conns[node], "_sock", None)
        if sock is None:
            raise redis.ConnectionError("the connection was closed")
        n = sock.recv_into(self._recv_buf)
        if not n:
            raise redis.ConnectionError("Connection closed by server.")
        self._readers[node].feed(self._recv_buf, 0, n)

    def _send_batch(self, inflight: deque, jobs_inflight: int, lease_due: float,
                    chaos: Chaos | None) -> tuple[int, float]:
        """Take jobs until `depth` are in flight and send them, after the queued deletes and a due
        lease renewal, one write per node; during a purge, its next deletes instead of jobs.
        Returns the jobs in flight and the next lease time."""
        swap, conns, depth, take_job, stopped = self.remote, self._conns, self.depth, self._take_job, self._stop.is_set
        page_of, slot_of, sid, route = self.page_of, self.slot_of, swap.sid, swap.route
        shared_keys = max(1, depth // 2)   # keys an MGET takes from other jobs, at most
        pack = hiredis.pack_command
        grouped = swap.endpoint.cluster
        jobs: dict[int, list] = {}            # node -> its packed commands, or an MGET's entry
        gets: dict[int, dict[int, list]] = {}  # node -> its MGETs still taking keys, by hash tag
        taken: list[list] = []
        with swap.lock:        # jobs taken here vs a purge asked for meanwhile (remote.py)
            purging = swap.start_purge()
            taking = not purging and not stopped()
            while taking and jobs_inflight < depth:
                job = take_job()
                if job is None:
                    break
                op, pages = job
                own: set[int] = set()         # ids of the MGETs this job's pages went into
                # A read with readahead is one request: all its pages go in this batch.
                for gfn in pages if type(pages) is tuple else (pages,):
                    slot = slot_of(gfn)
                    key = slot_key(sid, slot)
                    node = route(key)
                    entry = [node, op, gfn, slot, 0, 0]
                    if chaos is not None and self._chaos(entry):
                        continue
                    jobs_inflight += 1
                    commands = jobs.setdefault(node, [])
                    if op == READ:
                        # Reads join one MGET per node (per hash tag in a cluster, where one
                        # command's keys must share a hash slot) until a write goes to that node,
                        # so each node still sees every request in the order it was taken. Other
                        # jobs join an MGET of fewer than depth/2 keys only: two MGETs in flight
                        # keep the server busy while the client takes the other's reply.
                        open_gets = gets.setdefault(node, {})
                        tag = slot >> GROUP_SHIFT if grouped else 0
                        mget = open_gets.get(tag)
                        if mget is None or (len(mget[2]) >= shared_keys and id(mget) not in own):
                            mget = open_gets[tag] = [node, READ, [], [], 0, [], []]
                            taken.append(mget)
                            commands.append(mget)
                            own.add(id(mget))
                        mget[2].append(gfn)
                        mget[3].append(slot)
                        mget[5].append(entry[5])
                        mget[6].append(key)
                    else:
                        gets.pop(node, None)
                        taken.append(entry)
                        commands.append(pack((b"SET", key, page_of(gfn))))
                        swap.remember(slot)
        for commands in jobs.values():
            for i, command in enumerate(commands):
                if type(command) is list:     # an MGET: its keys are all known now
                    commands[i] = pack((b"MGET", *command.pop()))
        # The deletes queued before these jobs go first (a later write of the slot must not be
        # deleted): a job taken above was submitted after any discard queued by then.
        lease = not stopped() and lease_due <= time.monotonic()
        unlinks = swap.discard_unlinks(swap.take_discards()) if swap.pending_discards() else []
        if purging and len(inflight) - jobs_inflight < PURGE_WINDOW:
            unlinks += swap.purge_unlinks(PURGE_KEYS)
        control, sends = self._control_requests(unlinks, lease) if lease or unlinks else ([], {})
        if lease:
            lease_due = time.monotonic() + LEASE_REFRESH_S
        for node, commands in jobs.items():
            sends.setdefault(node, []).extend(commands)
        if sends:
            now = time.monotonic_ns()
            for entry in taken:
                entry[4] = now
            inflight.extend(control)     # per node in the order of `sends`: control, then jobs
            inflight.extend(taken)
            for node, commands in sends.items():
                try:
                    conns[node].send_packed_command([b"".join(commands)], check_health=False)
                except (redis.RedisError, OSError) as exc:
                    jobs_inflight -= self._fail_node(node, inflight, exc)
        return jobs_inflight, lease_due

    def _control_requests(self, unlinks: list[tuple[int, tuple, tuple[int, ...]]],
                          lease: bool) -> tuple[list[list], dict[int, list[bytes]]]:
        """The deletes `unlinks` [(node, UNLINK command, its slots)], then the lease's renewal if
        `lease`: their in-flight entries, and the packed commands per node."""
        swap = self.remote
        entries: list[list] = []
        sends: dict[int, list[bytes]] = {}
        for node, command, slots in unlinks:
            sends.setdefault(node, []).append(hiredis.pack_command(command))
            entries.append([node, DISCARD, slots, slots[0], 0, 0])
        if lease:
            node = swap.route(swap.lease_key)
            sends.setdefault(node, []).append(
                hiredis.pack_command(("SET", swap.lease_key, str(os.getpid()), "EX", LEASE_TTL_S)))
            entries.append([node, LEASE, 0, 0, 0, 0])
        return entries, sends

    def _fail_node(self, node: int, inflight: deque, exc: BaseException) -> int:
        """Fail every request in flight on `node` with the errno of `exc`, drop its connection;
        return how many of them were jobs."""
        err = io_errno(exc)
        swap = self.remote
        self._conns[node].disconnect()
        self._readers[node] = _reader()       # what the old connection left half-read goes with it
        failed = [e for e in inflight if e[0] == node]
        kept = [e for e in inflight if e[0] != node]
        inflight.clear()
        inflight.extend(kept)
        now = time.monotonic_ns()
        jobs = 0
        for entry in failed:
            if entry[1] == DISCARD:
                for slot in entry[2]:      # perhaps not deleted: the next purge tries again
                    swap.remember(slot)
            if entry[1] < 0:
                continue
            for gfn in entry[2] if entry[1] == READ else (entry[2],):
                jobs += 1
                self._post(Completion(entry[1], gfn, err, entry[4], now, 0))
        if err == errno.ETIMEDOUT:
            swap.timeouts += jobs
            log.warning("swap I/O to %s: no reply within %gs; %d request(s) failed (reads poison their page, "
                        "writes keep theirs resident)", swap._node_name(node), swap.timeout_s, jobs)
        else:
            swap.errors += jobs
            log.warning("swap I/O to %s: connection lost (%s); %d request(s) failed",
                        swap._node_name(node), os.strerror(err), jobs)
        return jobs

    def _bad_read(self, node: int, gfn: int, slot: int, reply: Any) -> int:
        swap = self.remote
        swap.errors += 1
        key = slot_key(swap.sid, slot).decode()
        if reply is None:
            log.warning("swap-in of page %d: key %s is missing on %s (the server lost it: FLUSHDB, "
                        "eviction or a restart)", gfn, key, swap._node_name(node))
            return errno.ENODATA
        if isinstance(reply, bytes):
            log.warning("swap-in of page %d: key %s holds %d bytes, not a page", gfn, key, len(reply))
            return errno.EBADMSG
        log.warning("swap-in of page %d: %s answered %s", gfn, swap._node_name(node), reply)
        return errno.EIO

    def _bad_write(self, entry: list, reply: Any) -> int:
        swap = self.remote
        swap.errors += 1
        if isinstance(reply, redis.ResponseError) and (type(reply).__name__ == "OutOfMemoryError"
                                                       or "maxmemory" in str(reply)):
            log.warning("write-back of page %d: %s is out of memory (maxmemory): %s", entry[2],
                        swap._node_name(entry[0]), reply)
            return errno.ENOSPC
        log.warning("write-back of page %d: %s answered %s", entry[2], swap._node_name(entry[0]), reply)
        return errno.EIO

    def _chaos(self, entry: list) -> bool:
        """Injected faults of one job (shared/chaos.py); True if the job ended here (posted)."""
        chaos, op, gfn = self.chaos, entry[1], entry[2]
        reading = op == READ
        if chaos.fires("kill-host", "mid-io" if reading else "mid-eviction"):
            os.kill(os.getpid(), signal.SIGKILL)   # injected: the host dies with this I/O in flight
        entry[5] = chaos.extra_latency_ns()
        err = chaos.io_error("swap-read" if reading else "swap-write", gfn)
        if not err and chaos.fires("swap-remote", "timeout", gfn):
            err = errno.ETIMEDOUT
            self.remote.timeouts += 1
        if not err and chaos.fires("swap-remote", "disconnect", gfn):
            conn = self._conns[entry[0]]
            sock = getattr(conn, "_sock", None)
            if sock is not None:   # the connection breaks under the requests in flight and this one
                sock.shutdown(socket.SHUT_RDWR)
        if err:
            now = time.monotonic_ns()
            self._post(Completion(op, gfn, err, now, now, 0))
            return True
        return False
