"""Progress of `apf bench` on stderr: a live bar on a terminal, one line per finished run
otherwise (logs, nohup)."""
from __future__ import annotations

import sys
from typing import Any

from apf.bench.analysis import workload_swap
from apf.bench.runner import RunResult


class Progress:
    """A rich progress bar on a terminal; one plain line per finished run otherwise (logs, nohup)."""

    def __init__(self, total: int, enabled: bool = True):
        self.total = total
        self.done = 0
        self.tty = enabled and sys.stderr.isatty()
        self.enabled = enabled
        self._bar = None
        if self.tty:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn(),
                                     console=Console(stderr=True), transient=False)
            self._task = self._bar.add_task("apf bench", total=total)

    def __enter__(self) -> "Progress":
        if self._bar:
            self._bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar:
            self._bar.stop()

    def starting(self, what: str) -> None:
        """A run (`what`, e.g. "async 2ms x8 #1") begins: the bar shows it; no line is printed."""
        if self._bar:
            self._bar.update(self._task, description=what)

    def finished(self, what: str, detail: str) -> None:
        """A run ended: the bar advances, or a line "[done/total] what: detail" is printed."""
        self.done += 1
        if self._bar:
            self._bar.update(self._task, advance=1, description=what)
        elif self.enabled:
            print(f"[{self.done}/{self.total}] {what}: {detail}", file=sys.stderr, flush=True)


def run_detail(r: RunResult) -> str:
    """The progress line's account of a finished run: its wall time and swap-ins, or why it failed."""
    if not r.ok:
        return f"FAILED ({r.error})"
    return f"wall {r.report['wall_s']:.3f}s, {workload_swap(r.report)[0]} swap-ins ({r.elapsed_s:.1f}s)"
