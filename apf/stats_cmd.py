"""`apf stats`: the live counters of a running host, asked for over the wire.

Each sample is one STATS request on a DEALER socket of its own (STATS is answered to any peer,
attached or not) with a bounded wait for the STATS_REPLY. Rates are deltas between two samples:
`apf stats` takes two, `--interval` apart; `--watch` refreshes every `--interval` until Ctrl-C or
`--count` refreshes.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from apf.options import _positive_duration, _positive_int
from shared.units import format_duration_ns, format_size
from protocol.errors import StatsError

STATS = "stats"
DEFAULT_INTERVAL_NS = 1_000_000_000
DEFAULT_TIMEOUT_NS = 2_000_000_000

# (section, counter) pairs shown with a rate; a counter that went down (the host reset its
# counters when a guest left) counts from zero again.
RATED = (("faults", "total"), ("faults", "sync"), ("faults", "async"), ("faults", "major"),
         ("swap", "reads"), ("swap", "writes"), ("swap", "evictions"), ("swap", "clean_drops"),
         ("faults", "write_protect"), ("apf", "page_ready"))


def add_stats_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, metavar="DIR", help="run directory of the host to ask")
    parser.add_argument("--watch", action="store_true", help="refresh until Ctrl-C (or --count refreshes)")
    parser.add_argument("--interval", dest="interval_ns", type=_positive_duration, default=DEFAULT_INTERVAL_NS,
                        metavar="DUR", help="time between samples; rates are over it (default 1s)")
    parser.add_argument("--count", type=_positive_int, metavar="N", help="with --watch: stop after N refreshes")
    parser.add_argument("--json", action="store_true",
                        help="print the host's raw stats as JSON (with --watch: one line per refresh)")
    parser.add_argument("--timeout", dest="timeout_ns", type=_positive_duration, default=DEFAULT_TIMEOUT_NS,
                        metavar="DUR", help="longest wait for the host's answer (default 2s)")


@dataclass(frozen=True)
class Sample:
    at_s: float                 # time.monotonic() when the answer arrived
    stats: dict[str, Any]


class StatsClient:
    """The host serving `run_dir`, asked for its counters one STATS request at a time."""

    def __init__(self, run_dir: str, timeout_ns: int):
        import zmq
        from protocol.messages import MAX_FRAME_BYTES
        from shared import lifeline, rundir
        self.run_dir = run_dir
        self.info = rundir.read_host_json(run_dir)     # RunDirError when no host serves it
        lifeline.host_alive(run_dir, self.info)        # RunDirError at once when that host is gone
        self.timeout_s = timeout_ns / 1e9
        self.zmq = zmq
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        self.sock.setsockopt(zmq.SNDTIMEO, max(1, int(self.timeout_s * 1000)))
        self.sock.setsockopt(zmq.ROUTING_ID, f"apf-stats-{os.getpid()}-{secrets.token_hex(2)}/stats".encode())
        self.sock.connect(self.info["endpoint"])
        self.seq = 0

    def fetch(self) -> Sample:
        from protocol import ProtocolError, decode, encode
        from protocol.messages import Error, Stats, StatsReply
        self.seq = self.seq % 0xFFFFFFFF + 1
        try:
            self.sock.send(encode(Stats(self.seq)))
        except self.zmq.Again:
            raise StatsError(self._silent()) from None
        deadline = time.monotonic() + self.timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(max(1, int(left * 1000))):
                break
            try:
                msg = decode(self.sock.recv())
            except ProtocolError:
                continue                         # not an answer to this request
            if msg.seq != self.seq:
                continue                         # a late answer to an earlier request
            if isinstance(msg, StatsReply):
                return Sample(time.monotonic(), msg.stats)
            if isinstance(msg, Error):
                raise StatsError(f"the host of {self.run_dir} refused STATS: {msg.reason}")
        raise StatsError(self._silent())

    def _silent(self) -> str:
        from shared import lifeline, rundir
        try:
            now = rundir.read_host_json(self.run_dir, missing_ok=True)
        except rundir.RunDirError:
            now = None
        if now is None:
            return f"the host of {self.run_dir} has stopped (no host.json any more)"
        try:
            lifeline.host_alive(self.run_dir, now)
        except rundir.RunDirError as exc:
            return str(exc)
        return (f"the host of {self.run_dir} (pid {self.info.get('pid')}, {self.info['endpoint']}) did not "
                f"answer within {format_duration_ns(int(self.timeout_s * 1e9))}; is it still running? "
                "(raise --timeout if it is busy)")

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def rates(prev: Sample | None, cur: Sample) -> dict[tuple[str, str], float]:
    """Per-second rate of each RATED counter between two samples (empty without a previous one)."""
    if prev is None or cur.at_s <= prev.at_s:
        return {}
    elapsed = cur.at_s - prev.at_s
    out = {}
    for section, name in RATED:
        now = cur.stats.get(section, {}).get(name, 0)
        before = prev.stats.get(section, {}).get(name, 0)
        out[(section, name)] = (now - before if now >= before else now) / elapsed
    return out


def render(info: dict[str, Any], run_dir: str, cur: Sample, prev: Sample | None, status: str):
    """A rich Table of one sample, with rates against the previous one; `status` heads it, so a short
    terminal that crops the bottom still shows it."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table
    s = cur.stats
    r = rates(prev, cur)
    mem, swap, faults, apf = (s.get(k, {}) for k in ("memory", "swap", "faults", "apf"))

    def rate(section: str, name: str) -> str:
        return f"{r[(section, name)]:,.1f}" if (section, name) in r else "-"

    title = (f"apf stats: {run_dir}\n{status}\nhost pid {info.get('pid')} · "
             f"guest {format_size(info.get('guest_mem', 0))} · host {format_size(info.get('host_mem', 0))} "
             f"· {info.get('policy')} policy")
    table = Table(title=escape(title), title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("")
    table.add_column("counter")
    table.add_column("value", justify="right")
    table.add_column("per second", justify="right")
    resident, budget = mem.get("resident_pages", 0), mem.get("budget_pages", 0)
    share = f" ({100 * resident / budget:.0f}%)" if budget else ""
    outstanding = apf.get("outstanding") or []
    reasons = faults.get("sync_reasons") or {}
    swap_in = swap.get("swap_in_us") or {}
    bad = s.get("bad_frames") or {}
    rows = [
        ("session", "guest attached", guest_attached(s.get("session") or {}), ""),
        ("memory", "resident / budget pages", f"{resident} / {budget}{share}", ""),
        ("", "free / evicting pages", f"{mem.get('free_pages', 0)} / {mem.get('evicting_pages', 0)}", ""),
        ("", "over budget pages", str(mem.get("over_budget_pages", 0)), ""),
        ("swap", "swap reads", str(swap.get("reads", 0)), rate("swap", "reads")),
        ("", "swap writes", str(swap.get("writes", 0)), rate("swap", "writes")),
        ("", "evictions", str(swap.get("evictions", 0)), rate("swap", "evictions")),
        ("", "clean drops (no write)", str(swap.get("clean_drops", 0)), rate("swap", "clean_drops")),
        ("", "slots used", str(swap.get("slots_used", 0)), ""),
        ("", "readahead / hits / misses",
         " / ".join(str((swap.get("readahead") or {}).get(k, 0)) for k in ("pages", "hits", "misses")), ""),
        ("", "errors (read / write)", f"{swap.get('read_errors', 0)} / {swap.get('write_errors', 0)}", ""),
        ("", "swap-in p50 / p99 (us)", f"{swap_in.get('p50', 0):,.0f} / {swap_in.get('p99', 0):,.0f}", ""),
        ("faults", "faults", str(faults.get("total", 0)), rate("faults", "total")),
        ("", "sync", str(faults.get("sync", 0)), rate("faults", "sync")),
        ("", "async", str(faults.get("async", 0)), rate("faults", "async")),
        ("", "major / minor", f"{faults.get('major', 0)} / {faults.get('minor', 0)}", rate("faults", "major")),
        ("", "write-protect / zero page", f"{faults.get('write_protect', 0)} / {faults.get('zero_page', 0)}",
         rate("faults", "write_protect")),
        ("", "sync reasons", ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()) if v) or "-", ""),
        ("APF", "outstanding", str(sum(outstanding)), ""),
        ("", f"per vCPU (0..{max(len(outstanding) - 1, 0)})", " ".join(map(str, outstanding)) or "-", ""),
        ("", "page ready / acks", f"{apf.get('page_ready', 0)} / {apf.get('acks', 0)}", rate("apf", "page_ready")),
        ("frames", "bad frames", str(sum(bad.values())), ""),
    ]
    if bad:
        rows.append(("", "by error", ", ".join(f"{k} {v}" for k, v in sorted(bad.items())), ""))
    rows.extend(remote_rows(swap))
    for row in rows:
        table.add_row(*row)
    return table


def guest_attached(session: dict[str, Any]) -> str:
    """The table's answer to "is a guest attached?" from STATS `session`: "yes: NAME" or "no", and
    how many guests the host has served; "-" from a host whose STATS has no `session`."""
    if "attached" not in session:
        return "-"
    served = f" ({session.get('sessions_served', 0)} served)"
    if session["attached"]:
        return f"yes: {session.get('guest') or '?'}{served}"
    return "no" + served


def remote_rows(swap: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The table's rows of a remote swap back-end (STATS `swap.remote`), none for a swap file:
    where it is, the keys and bytes this host may hold there, failed requests, round trips."""
    remote = swap.get("remote")
    if not remote:
        return []
    rtt = remote.get("rtt_us") or {}
    nodes = remote.get("nodes", 1)
    return [
        ("remote", swap.get("backend", "redis"),
         swap.get("endpoint", "") + (f" ({nodes} nodes)" if nodes != 1 else ""), ""),
        ("", "keys / bytes", f"{remote.get('keys', 0)} / {format_size(remote.get('bytes', 0))}", ""),
        ("", "timeouts / errors", f"{remote.get('timeouts', 0)} / {remote.get('errors', 0)}", ""),
        ("", "round trip p50 / p99 (us)", f"{rtt.get('p50', 0):,.0f} / {rtt.get('p99', 0):,.0f}", ""),
    ]


def run_stats(values: dict[str, Any]) -> int:
    """`apf stats`: exit 0 on success, 2 (with one line on stderr) when the host cannot be asked."""
    run_dir, interval_s = values["run_dir"], values["interval_ns"] / 1e9
    client = StatsClient(run_dir, values["timeout_ns"])
    try:
        if not values.get("watch") and values.get("json"):
            print(json.dumps(client.fetch().stats, indent=2, sort_keys=True))
            return 0
        from rich.console import Console
        from rich.live import Live
        console = Console()
        if not values.get("watch"):
            first = client.fetch()
            time.sleep(interval_s)
            cur = client.fetch()
            console.print(render(client.info, run_dir, cur, first,
                                 f"rates over {format_duration_ns(values['interval_ns'])}"))
            return 0
        count = values.get("count")
        live = nullcontext() if values.get("json") else Live(console=console, auto_refresh=False)
        try:
            with live:
                _watch(client, live, count, interval_s, values)
        except KeyboardInterrupt:
            pass                                  # Ctrl-C is how a watch ends
        return 0
    except StatsError as exc:
        print(f"apf stats: error: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()


def _watch(client: StatsClient, live: Any, count: int | None, interval_s: float, values: dict[str, Any]) -> None:
    start = time.monotonic()
    prev: Sample | None = None
    n = 0
    while count is None or n < count:
        if n:
            time.sleep(max(0.0, start + n * interval_s - time.monotonic()))
        cur = client.fetch()
        n += 1
        if values.get("json"):
            print(json.dumps(cur.stats, sort_keys=True), flush=True)
        else:
            of = f"/{count}" if count else ""
            status = (f"refresh {n}{of} every {format_duration_ns(values['interval_ns'])}"
                      + ("" if count else "; Ctrl-C to stop"))
            live.update(render(client.info, client.run_dir, cur, prev, status), refresh=True)
        prev = cur
