"""--halt-poll: an idle vCPU catches page-ready interrupts by polling, without blocking, in a
real run that still verifies every page; bad values are one-line errors with exit status 2."""
from __future__ import annotations

import pytest

from guest.config import GuestConfig
from protocol.errors import ConfigError
from tests.helpers import apf, refusal, run_report

SMALL = ["--guest-mem", "4MiB", "--host-mem", "1MiB", "--accesses", "300", "--prefill"]


def test_polling_catches_page_ready_without_blocking_and_every_page_verifies(tmp_path):
    """One task, short swap latency, async: the vCPU idles on every asynchronous fault. With a
    2 ms poll window some idle periods end by a page-ready caught while polling (`poll_hits` > 0,
    fewer blocks than idle polls would need otherwise); the run verifies every page it wrote,
    and the counters are consistent in every phase and per vCPU."""
    proc, r = run_report(tmp_path, *SMALL, "--mode", "async", "--tasks", "1", "--swap-latency", "50us",
                         "--halt-poll", "2ms")
    assert proc.returncode == 0, proc.stderr
    assert r["ok"] and r["pages_corrupt"] == 0 and r["pages_verified"] == r["pages_written"] > 0
    assert r["config"]["halt_poll_ns"] == 2_000_000
    idle = r["idle"]
    assert idle == r["phases"]["workload"]["idle"]
    assert idle["polls"] > 0 and 0 < idle["poll_hits"] <= idle["polls"], idle
    assert 0 < idle["poll_hit_ns"] <= idle["poll_ns"] <= r["vcpu_idle_s"] * 1e9, idle
    assert idle["window_grows"] > 0, idle
    for name, phase in r["phases"].items():
        rows = phase["per_vcpu"]
        assert sum(v["polls"] for v in rows) == phase["idle"]["polls"], name
        assert sum(v["poll_hits"] for v in rows) == phase["idle"]["poll_hits"], name
    assert r["cpu"]["guest_s"] > 0 and r["phases"]["verify"]["cpu"]["guest_s"] > 0
    assert "halt polling: " in proc.stdout and " idle polls caught their interrupt" in proc.stdout


@pytest.mark.parametrize("command, value, message", [
    ("run", "=-5us", "argument --halt-poll: '-5us' is not a duration: durations take ns, us, ms, s "
                     "(examples: 150us, 2ms, 1.5s)"),
    ("run", "=soon", "argument --halt-poll: 'soon' is not a duration"),
    ("run", "=200", "argument --halt-poll: '200' has no unit"),
    ("run", "=1s", "--halt-poll must be between 0 (off) and 100ms, not 1s"),
    ("guest", "=-1ms", "argument --halt-poll: '-1ms' is not a duration"),
])
def test_bad_halt_poll_is_a_one_line_error_with_exit_2(tmp_path, command, value, message):
    """A negative, unparsable, unitless or too long --halt-poll: exit status 2 and one line on
    stderr naming the option (before anything starts)."""
    args = SMALL if command == "run" else ["--run-dir", str(tmp_path / "rd")]
    assert message in refusal(apf(command, *args, "--halt-poll" + value, timeout=60))


def test_config_refuses_a_negative_window():
    """GuestConfig itself (a --config file's values reach it too) refuses a negative window."""
    with pytest.raises(ConfigError, match=r"^--halt-poll must be between 0 \(off\) and 100ms, not -1ns$"):
        GuestConfig("/tmp/r", halt_poll_ns=-1).validate()
    assert GuestConfig("/tmp/r", halt_poll_ns=0).validate().halt_poll_ns == 0
