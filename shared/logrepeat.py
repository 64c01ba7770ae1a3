"""Rate-limited logging: the same line 880 times is one problem, not 880.

`RepeatFilter` sits on the log handler. Lines are grouped by logger and message template (the
format string before its arguments: "swap write of page %d failed (%s): ..." is one group
whatever the page). In each interval the first `burst` lines of a group pass; the rest are
counted, and the group's next line after the interval carries the count of those left out.
`flush()` (at exit) logs the counts still pending, so none is lost.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

BURST = 5              # lines of one group shown per interval
INTERVAL_S = 10.0


@dataclass
class _Window:
    start: float
    passed: int = 1
    dropped: int = 0
    example: str = ""     # the last line left out, as it would have read


class RepeatFilter(logging.Filter):
    def __init__(self, burst: int = BURST, interval_s: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.burst, self.interval_s, self.clock = burst, interval_s, clock
        self._windows: dict[tuple[str, str], _Window] = {}
        self._lock = threading.Lock()     # daemons log from several threads

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self.clock()
        with self._lock:
            w = self._windows.get(key)
            if w is None or now - w.start >= self.interval_s:
                self._windows[key] = _Window(now)
                if w is not None and w.dropped:
                    record.msg = (f"{record.getMessage()} (and {w.dropped} more like it in the last "
                                  f"{now - w.start:.0f}s, not shown)")
                    record.args = ()
                return True
            if w.passed < self.burst:
                w.passed += 1
                return True
            w.dropped += 1
            w.example = record.getMessage()
            return False

    def pending(self) -> list[tuple[str, str, int]]:
        """(logger, last line left out, count) of the lines left out and not yet reported; forgets them."""
        with self._lock:
            out = [(name, w.example, w.dropped) for (name, _), w in self._windows.items() if w.dropped]
            for w in self._windows.values():
                w.dropped = 0
        return out

    def flush(self) -> None:
        for name, example, count in self.pending():
            logging.getLogger(name).warning("%d more line(s) like this were not shown: %s", count, example)


def install(handler: logging.Handler, burst: int = BURST, interval_s: float = INTERVAL_S) -> RepeatFilter:
    """Rate-limit `handler`'s repeated lines; return the filter (call its flush() at exit)."""
    repeat = RepeatFilter(burst, interval_s)
    handler.addFilter(repeat)
    return repeat
