"""Output a person can read: repeated warnings are rate-limited, a guest's error is said once,
`apf run` validates both daemons' options before starting them, `apf guest` prints the summary,
`apf --version`, defaults in every --help, and durations on the command line need a unit."""
import argparse
import re
import subprocess

import pytest

from apf.cli import build_parser
from tests.helpers import APF, ROOT, apf

SMALL = ["--guest-mem", "4MiB", "--host-mem", "1MiB", "--tasks", "4", "--accesses", "500", "--mode", "async"]


def test_a_repeated_warning_is_shown_a_few_times_then_counted():
    """Hundreds of failed write-backs give at most 5 such warning lines per interval, then one
    line saying how many more were left out."""
    proc = apf("run", *SMALL, "--inject", "swap-write:eio:every=3", timeout=120)
    shown = [line for line in proc.stderr.splitlines() if re.search(r"swap write of page \d+ failed", line)]
    more = [line for line in shown if "not shown" in line]
    assert 1 <= len(more) and len(shown) - len(more) <= 5 * len(more), proc.stderr
    left_out = sum(int(re.search(r"(\d+) more line", m).group(1)) for m in more if "more line" in m)
    assert left_out > 100, more


def test_a_guest_error_is_said_once():
    """When the guest fails (the host goes silent), its error appears once in `apf run`'s whole
    output (stdout and stderr): in the summary's result line, which goes to stderr."""
    proc = apf("run", *SMALL, "--accesses", "2000", "--prefill", "--inject", "host:mute:after=300", timeout=120)
    assert proc.returncode == 1
    both = proc.stdout + proc.stderr
    assert len(re.findall(r"stopped answering: nothing heard for", both)) == 1, both
    assert re.search(r"^result: FAILED - host at \S+ \(pid \d+\) stopped answering", proc.stderr, re.M)


@pytest.mark.parametrize("argv, error", [
    (["--guest-mem", "1000", "--host-mem", "1000"], "--guest-mem 1000 is not a whole number of 4096-byte pages"),
    (["--guest-mem", "4MiB", "--host-mem", "8MiB"], "--host-mem (8388608) is above --guest-mem (4194304); "
                                                    "the host cannot keep more than the guest has"),
])
def test_apf_run_validates_both_daemons_options_up_front(argv, error):
    """A value a daemon would refuse is one error line from `apf run` itself (exit 2), before any
    daemon starts."""
    proc = apf("run", *argv, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == f"apf run: error: {error}\n"


def test_apf_guest_prints_the_run_summary(host, run_dir):
    """`apf guest` on its own prints the same summary as `apf run`, ending with the result line."""
    host("--guest-mem", "1MiB", "--host-mem", "512KiB")
    proc = apf("guest", "--run-dir", run_dir, "--accesses", "200", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^mode sync: wall [0-9.]+s", proc.stdout, re.M)
    assert proc.stdout.rstrip().splitlines()[-1] == "result: OK"


def test_version_and_defaults_in_every_help():
    """`apf --version` names the package version; every option of every command that has a
    default says it in its --help text."""
    from importlib.metadata import version
    proc = subprocess.run(APF + ["--version"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout == f"apf {version('apf-emu')}\n"
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, command in sub.choices.items():
        for action in command._actions:
            if (action.help in (None, argparse.SUPPRESS) or not action.option_strings
                    or action.default in (None, False, argparse.SUPPRESS) or action.nargs == 0):
                continue
            if "default" not in action.help:
                missing.append(f"apf {name} {action.option_strings[0]}")
    assert missing == []


@pytest.mark.parametrize("option", ["--swap-latency", "--think", "--stuck-timeout", "--timeout"])
def test_a_duration_without_a_unit_on_the_command_line_is_refused(option):
    """`--swap-latency 2` (which meant two seconds) is an error asking for a unit (exit 2)."""
    proc = apf("run", "--guest-mem", "1MiB", "--host-mem", "1MiB", option, "2", timeout=60)
    assert proc.returncode == 2
    assert "'2' has no unit: give one of ns, us, ms, s (e.g. 2ms or 2s)" in proc.stderr


@pytest.mark.parametrize("size", ["2MB", "8mib", "1k"])
def test_a_size_outside_the_documented_units_is_refused_naming_them(size):
    """Sizes take B, KiB, MiB, GiB, TiB exactly (2MB, decimal, and 8mib were accepted silently)."""
    proc = apf("run", "--guest-mem", size, "--host-mem", "1MiB", timeout=60)
    assert proc.returncode == 2
    assert f"'{size}' is not a size: sizes take B, KiB, MiB, GiB, TiB" in proc.stderr
