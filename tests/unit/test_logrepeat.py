"""Repeated log lines are rate-limited: the first few of a kind pass, the rest are counted and
the count is said (with the next line after the interval, or at the flush)."""
import io
import logging

from shared.logrepeat import RepeatFilter


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _logger(clock: Clock) -> tuple[logging.Logger, io.StringIO, RepeatFilter]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    repeat = RepeatFilter(burst=3, interval_s=10.0, clock=clock)
    handler.addFilter(repeat)
    log = logging.getLogger(f"test.logrepeat.{id(out)}")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return log, out, repeat


def test_first_burst_passes_then_the_rest_are_counted_per_interval():
    """Of 10 lines of one template within the interval, 3 pass; the first line after the interval
    passes carrying "and 7 more like it"; another template is not affected."""
    clock = Clock()
    log, out, _ = _logger(clock)
    for page in range(10):
        log.warning("swap write of page %d failed", page)
    log.warning("something else %d", 1)
    clock.now = 10.5
    log.warning("swap write of page %d failed", 99)
    assert out.getvalue().splitlines() == [
        "swap write of page 0 failed", "swap write of page 1 failed", "swap write of page 2 failed",
        "something else 1",
        "swap write of page 99 failed (and 7 more like it in the last 10s, not shown)",
    ]


def test_flush_says_how_many_were_left_out_and_forgets_them():
    """flush() logs the count still pending with the last line left out, once."""
    clock = Clock()
    log, out, repeat = _logger(clock)
    for page in range(5):
        log.warning("page %d lost", page)
    repeat.flush()
    repeat.flush()
    assert out.getvalue().splitlines()[-1] == "2 more line(s) like this were not shown: page 4 lost"
    assert len(out.getvalue().splitlines()) == 4
