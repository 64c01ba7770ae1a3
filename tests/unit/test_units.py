"""Sizes and durations as users type them, and `apf run` forwarding each daemon its own options."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apf.cli import build_parser
from apf.options import GUEST, HOST, RUN, forward, options_for
from shared.units import parse_duration_ns, parse_size

FUZZ = settings(max_examples=300, deadline=None)
RUN_SKIP = ("run_dir", "vcpus", "report", "trace", "once")  # what `apf run` sets itself (apf/run.py)
REQUIRED_RUN = ["--guest-mem", "32MiB", "--host-mem", "8MiB"]


# -- parse_size -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("4096", 4096), ("0", 0), ("512B", 512), ("64KiB", 64 << 10), ("32MiB", 32 << 20),
    ("4GiB", 4 << 30), ("1TiB", 1 << 40),
    (" 2 MiB ", 2 << 20), ("1.5KiB", 1536), ("0.5GiB", 1 << 29), ("1.0", 1),
    (4096, 4096),
])
def test_parse_size_accepts(text, expected):
    """Plain bytes and the README's binary units (B, KiB, MiB, GiB, TiB) spelled exactly, spaces,
    exact fractions."""
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", " ", "abc", "KiB", "-1", "-1KiB", "1e3", "1,024", "1 XB", "1 Ki B",
                                  "1.KiB", ".5KiB", "4096 pages", "1PiB", "0x1000",
                                  "2MB", "1mb", "10kb", "1gb", "8mib", "64kib", "1k", "1K", "2M", "1G", "2t",
                                  "512b"])
def test_parse_size_rejects_non_sizes(text):
    """Anything else, decimal units (2MB) and other spellings (8mib, 1k) included, is a ValueError
    that quotes the input and names the accepted units."""
    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert str(info.value) == (f"'{text}' is not a size: sizes take B, KiB, MiB, GiB, TiB (binary: 1KiB = "
                               "1024 bytes) or a bare number of bytes (examples: 4096, 64KiB, 32MiB, 4GiB)")


@pytest.mark.parametrize("text", ["1.5", "0.1KiB", "1.0001KiB"])
def test_parse_size_rejects_fractional_bytes(text):
    """A size that is not a whole number of bytes is refused, saying so."""
    with pytest.raises(ValueError, match="not a whole number of bytes"):
        parse_size(text)


# -- parse_duration_ns ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("100ns", 100), ("150us", 150_000), ("150µs", 150_000), ("2ms", 2_000_000), ("2MS", 2_000_000),
    ("1.5s", 1_500_000_000), ("5", 5_000_000_000), ("0", 0), (" 10 ms ", 10_000_000),
    ("0.25ms", 250_000), ("1234567ns", 1_234_567),
    (3, 3_000_000_000), (0.25, 250_000_000),
])
def test_parse_duration_accepts(text, expected):
    """ns, us/µs, ms, s in any case, spaces and fractions; a bare number means seconds."""
    assert parse_duration_ns(text) == expected


@pytest.mark.parametrize("text", ["", "fast", "1h", "2min", "-1s", "ms", "1 m s", "1.s", "1e3ns", "1,5s"])
def test_parse_duration_rejects_non_durations(text):
    """Anything else is a ValueError that quotes the input and shows the accepted forms."""
    with pytest.raises(ValueError) as info:
        parse_duration_ns(text)
    assert str(info.value) == (f"'{text}' is not a duration: durations take ns, us, ms, s "
                               "(examples: 150us, 2ms, 1.5s)")


@pytest.mark.parametrize("text", ["2", "1.5", 3])
def test_a_duration_needs_its_unit_where_required(text):
    """With require_unit (the command line), a bare number is refused, asking for a unit; 0 is
    accepted (0 in any unit)."""
    with pytest.raises(ValueError, match=rf"^'{text}' has no unit: give one of ns, us, ms, s \(e\.g\. "):
        parse_duration_ns(text, require_unit=True)
    assert parse_duration_ns("0", require_unit=True) == 0
    assert parse_duration_ns("2ms", require_unit=True) == 2_000_000


# -- forwarding `apf run` options to the daemons ----------------------------------------------------

def run_values(*argv: str) -> dict:
    """The values `apf run` parses from its command line."""
    return vars(build_parser().parse_args([RUN, *REQUIRED_RUN, *argv]))


def reparse(role: str, argv: list[str]) -> dict:
    """What `apf ROLE` parses from a forwarded argv (plus the run dir `apf run` adds itself)."""
    return vars(build_parser().parse_args([role, "--run-dir", "/tmp/apf-unit-run", *argv]))


def assert_forwarded(values: dict) -> None:
    """Every option of host and guest reaches its daemon with the value `apf run` parsed."""
    for role in (HOST, GUEST):
        got = reparse(role, forward(role, values, RUN_SKIP))
        for opt in options_for(role):
            if opt.dest not in RUN_SKIP:
                assert got[opt.dest] == values[opt.dest], (role, opt.flag)


def test_forward_defaults_only_carries_the_required_options():
    """With only the required options, the host gets the two memory sizes and the guest nothing;
    both parse back to the same values."""
    values = run_values()
    assert forward(HOST, values, RUN_SKIP) == [f"--guest-mem={32 << 20}", f"--host-mem={8 << 20}"]
    assert forward(GUEST, values, RUN_SKIP) == []
    assert_forwarded(values)


NON_DEFAULTS = [
    "--swap", "/tmp/apf-swap", "--swap-latency", "2ms", "--direct-io", "--io-depth", "3",
    "--max-outstanding", "7", "--policy", "sync", "--shm-dir", "/tmp",
    "--tasks", "5", "--workload", "zipf", "--accesses", "0", "--think", "50us", "--seed", "-3",
    "--mode", "async", "--write-frac", "0.25", "--kernel-frac", "0.1", "--irqoff-frac", "1",
    "--working-set", "1MiB", "--send-always", "--timeslice", "3ms", "--reply-timeout", "5s",
    "--stuck-timeout", "1.5s", "--no-verify", "--name", "g1",
]


def test_forward_round_trips_every_non_default_option():
    """Every host and guest option set to a non-default value parses back identically in its
    daemon, and no daemon receives another's options (its parser would refuse them)."""
    values = run_values(*NON_DEFAULTS)
    assert_forwarded(values)
    host_argv, guest_argv = forward(HOST, values, RUN_SKIP), forward(GUEST, values, RUN_SKIP)
    assert "--tasks" not in host_argv and "--policy" not in guest_argv
    assert "--no-verify" in guest_argv and "--direct-io" in host_argv


@pytest.mark.parametrize("flag, text", [
    ("--swap-latency", "1234567ns"), ("--think", "1000001ns"), ("--timeslice", "2000001ns"),
    ("--reply-timeout", "1.2345678s"),
])
def test_forward_keeps_durations_exact(flag, text):
    """A duration with more than six significant digits reaches the daemon to the nanosecond."""
    values = run_values(flag, text)
    assert_forwarded(values)


@pytest.mark.parametrize("flag, text", [("--name", "-guest"), ("--swap", "-swapfile")])
def test_forward_keeps_values_that_start_with_a_dash(flag, text):
    """A value that begins with '-' (given as --flag=VALUE) is forwarded as a value, not taken
    for an option by the daemon's parser."""
    values = run_values(f"{flag}={text}")
    assert_forwarded(values)


@FUZZ
@given(write_frac=st.floats(0.0, 1.0), seed=st.integers(-(2**40), 2**40), accesses=st.integers(0, 10**9),
       io_depth=st.integers(1, 256), working_pages=st.integers(1, 1 << 20),
       name=st.text(st.characters(min_codepoint=48, max_codepoint=122), min_size=1, max_size=12),
       latency_ms=st.integers(0, 10**5))
def test_forward_round_trips_generated_values(write_frac, seed, accesses, io_depth, working_pages, name,
                                              latency_ms):
    """Generated option values (fractions, ints, sizes, names, whole-millisecond durations) come
    back unchanged through forward() and the daemon's parser."""
    values = run_values("--write-frac", repr(write_frac), "--seed", str(seed), "--accesses", str(accesses),
                        "--io-depth", str(io_depth), "--working-set", str(working_pages * 4096),
                        "--name", name, "--swap-latency", f"{latency_ms}ms")
    assert values["write_frac"] == write_frac and values["working_set"] == working_pages * 4096
    assert_forwarded(values)
