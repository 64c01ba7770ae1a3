"""Trace events in the Chrome / Perfetto JSON format, on the one clock both processes share.

Both daemons stamp events with `time.monotonic_ns()` (CLOCK_MONOTONIC is system-wide), so host
and guest events line up on one time axis without any offset correction. Each process writes a
JSON list of events; `apf run --trace FILE` merges them into `{"traceEvents": [...]}`.
"""
from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

DEFAULT_CAP = 1_000_000
IO_TRACK_BASE = 1000        # tracks from here on are not vCPUs (the swap device, ...)     # events kept per process; later ones are counted as dropped


def now_us(ns: int | None = None) -> float:
    return (time.monotonic_ns() if ns is None else ns) / 1000.0


class Tracer:
    """Collects events in memory (bounded); `enabled=False` makes every call a cheap no-op."""

    def __init__(self, process: str, enabled: bool, cap: int = DEFAULT_CAP):
        self.process = process
        self.enabled = enabled
        self.cap = cap
        self.pid = os.getpid()
        self.events: list[dict[str, Any]] = []
        self.dropped = 0
        self._lock = threading.Lock()
        self._tracks: dict[int, str] = {}

    def name_track(self, tid: int, name: str) -> None:
        self._tracks[tid] = name

    def instant(self, name: str, tid: int, ns: int | None = None, **args: Any) -> None:
        if self.enabled:
            self._add({"name": name, "ph": "i", "s": "t", "ts": now_us(ns), "pid": self.pid,
                       "tid": tid, "args": args})

    def span(self, name: str, tid: int, start_ns: int, end_ns: int, **args: Any) -> None:
        if self.enabled:
            self._add({"name": name, "ph": "X", "ts": now_us(start_ns),
                       "dur": max(0.0, (end_ns - start_ns) / 1000.0), "pid": self.pid, "tid": tid,
                       "args": args})

    def _add(self, event: dict[str, Any]) -> None:
        args = event["args"]   # every event names its vCPU, token and guest frame (-1: none)
        args.setdefault("vcpu", event["tid"] if event["tid"] < IO_TRACK_BASE else -1)
        args.setdefault("token", 0)
        args.setdefault("gfn", -1)
        with self._lock:
            if len(self.events) < self.cap:
                self.events.append(event)
            else:
                self.dropped += 1

    def metadata(self) -> list[dict[str, Any]]:
        meta = [{"name": "process_name", "ph": "M", "pid": self.pid, "tid": 0,
                 "args": {"name": self.process}}]
        meta += [{"name": "thread_name", "ph": "M", "pid": self.pid, "tid": tid, "args": {"name": name}}
                 for tid, name in sorted(self._tracks.items())]
        return meta

    def write(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.metadata() + self.events, f)


def merge(paths: list[str], out: str) -> int:
    """Merge per-process event lists into one Perfetto-loadable file; return the event count."""
    events: list[dict[str, Any]] = []
    for path in paths:
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                events.extend(json.load(f))
    events.sort(key=lambda e: (e.get("ph") != "M", e.get("ts", 0)))
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"traceEvents": events, "displayTimeUnit": "ns"}, f)
    return len(events)
