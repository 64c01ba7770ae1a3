"""`--config FILE`: option values from TOML, parsed as on the command line, overridden by it."""
import os
import re

import pytest

from apf.cli import build_parser, main
from apf.config_file import ConfigFileError, _commands, load, parse_args
from apf.options import GUEST, HOST, forward
from tests.helpers import ROOT


def _write(tmp_path, text: str, name: str = "apf.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def _args(*argv: str):
    return parse_args(build_parser(), list(argv))


def _load(path: str, command: str) -> dict:
    return load(path, command, _commands(build_parser()))


HOST_CLI = ["--run-dir", "/tmp/r", "--guest-mem", "32MiB", "--host-mem", "8MiB", "--swap-latency", "150us",
            "--direct-io", "--io-depth", "4", "--policy", "sync", "--vcpus", "2"]
HOST_TOML = '''
run-dir = "/tmp/r"
guest-mem = "32MiB"
host_mem = "8MiB"
swap_latency = "150us"
direct-io = true
io-depth = 4
policy = "sync"
vcpus = 2
'''


def test_file_values_equal_the_same_options_on_the_command_line(tmp_path):
    """Sizes, durations, numbers, choices and switches from the file parse exactly as the command
    line parses them, dashes or underscores alike."""
    from_cli = vars(_args("host", *HOST_CLI))
    path = _write(tmp_path, HOST_TOML)
    from_file = vars(_args("host", "--config", path))
    from_file.pop("config")
    from_cli.pop("config")
    assert from_file == from_cli
    assert from_file["guest_mem"] == 32 << 20 and from_file["swap_latency_ns"] == 150_000


def test_guest_values_fractions_and_inverted_switch(tmp_path):
    """Fractions, durations and `no-verify = true` (a store-false switch) mean what the flags mean;
    a switch set to false leaves the default."""
    path = _write(tmp_path, '''
        run_dir = "/tmp/r"
        write-frac = 0.25
        kernel_frac = "0.5"
        think = "200us"
        timeslice = "2ms"
        workload = "zipf"
        no-verify = true
        prefill = false
        working-set = "1MiB"
    ''')
    args = _args("guest", "--config", path)
    assert (args.write_frac, args.kernel_frac, args.think_ns, args.timeslice_ns) == (0.25, 0.5, 200_000, 2_000_000)
    assert args.workload == "zipf" and args.verify is False and args.prefill is False
    assert args.working_set == 1 << 20


def test_toml_numbers_read_as_the_command_line_reads_them(tmp_path):
    """A bare number is bytes for a size and seconds for a duration, as on the command line; a float
    written with an exponent is read exactly."""
    path = _write(tmp_path, 'run-dir = "r"\nguest-mem = 1048576\nhost-mem = 262144\nswap-latency = 2e-3\n'
                            'io-depth = 16\n')
    args = _args("host", "--config", path)
    assert (args.guest_mem, args.host_mem, args.swap_latency_ns, args.io_depth) == (1 << 20, 256 << 10, 2_000_000, 16)


def test_command_line_overrides_the_file(tmp_path):
    """An option on the command line wins over the file; the file's other values stay."""
    path = _write(tmp_path, HOST_TOML)
    args = _args("host", "--config", path, "--host-mem", "4MiB", "--policy", "async")
    assert args.host_mem == 4 << 20 and args.policy == "async"
    assert args.guest_mem == 32 << 20 and args.direct_io is True


def test_required_options_may_come_from_the_file_but_not_from_nowhere(tmp_path, capsys):
    """--run-dir, --guest-mem and --host-mem may be in the file; missing from both is still an error."""
    path = _write(tmp_path, 'run-dir = "/tmp/r"\nguest-mem = "1MiB"\n')
    with pytest.raises(SystemExit) as exc:
        _args("host", "--config", path)
    assert exc.value.code == 2
    assert "--host-mem" in capsys.readouterr().err
    assert _args("host", "--config", path, "--host-mem", "256KiB").host_mem == 256 << 10


def test_help_with_a_config_file_still_shows_the_required_options(tmp_path, capsys):
    """`apf host --config FILE --help` prints the usual help: required options are not shown as
    optional, and the file is not read (a broken one does not hide the help)."""
    path = _write(tmp_path, "not toml at all = = =\n")
    with pytest.raises(SystemExit) as exc:
        main(["host", "--config", path, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--run-dir DIR --guest-mem SIZE --host-mem SIZE" in " ".join(out.split())


def test_command_line_error_with_a_config_file_is_reported_as_without_one(tmp_path, capsys):
    """A bad option next to --config gets the same one-line error as without one, pointing at the
    command's --help (not the whole usage block)."""
    path = _write(tmp_path, 'run-dir = "r"\nhost-mem = "256KiB"\n')
    errors = []
    for argv in (["host", "--config", path, "--guest-mem", "lots"], ["host", "--run-dir", "r", "--guest-mem", "lots"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        errors.append(capsys.readouterr().err)
    assert errors[0] == errors[1]
    assert re.fullmatch(r"apf host: error: argument --guest-mem: 'lots' is not a size: .* \(see `apf host --help`\)\n",
                        errors[0]), errors[0]


@pytest.mark.parametrize("argv", [["run", "--bogus"], ["run", "--guest-mem", "1MiB", "--tasks", "2", "--bogus", "x"],
                                  ["host", "--tasks", "2"]])
def test_an_unknown_option_is_reported_before_missing_required_ones(argv, capsys):
    """A misspelt or misplaced option is named first, with its command's usage: it is usually why
    the required ones look missing."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    unknown = argv[argv.index("--bogus"):] if "--bogus" in argv else ["--tasks", "2"]
    assert f"apf {argv[0]}: error: unrecognized arguments: {' '.join(unknown)}" in err
    assert "required" not in err


def test_sections_apply_to_their_command_and_others_are_ignored(tmp_path):
    """`apf host` reads the top level and [host]; [guest] and a section of another command (stats)
    are ignored; a section's value wins over the top level."""
    path = _write(tmp_path, '''
        run-dir = "/tmp/r"
        vcpus = 1
        [host]
        guest-mem = "2MiB"
        host-mem = "1MiB"
        vcpus = 3
        [guest]
        tasks = 5
        [stats]
        anything = "goes"
    ''')
    host = _args("host", "--config", path)
    assert (host.guest_mem, host.host_mem, host.vcpus) == (2 << 20, 1 << 20, 3)
    guest = _args("guest", "--config", path)
    assert (guest.tasks, guest.vcpus) == (5, 1)
    assert not hasattr(guest, "guest_mem")


def test_run_reads_host_then_guest_then_run_sections(tmp_path):
    """`apf run` takes [host], [guest] and [run] (a later one wins), and forwards each daemon its
    own values, file and command line merged."""
    path = _write(tmp_path, '''
        [host]
        guest-mem = "1MiB"
        host-mem = "256KiB"
        swap-latency = "2ms"
        vcpus = 1
        [guest]
        vcpus = 2
        tasks = 4
        mode = "async"
        [run]
        quiet = true
        timeout = "30s"
    ''')
    args = _args("run", "--config", path, "--tasks", "6")
    values = vars(args)
    assert (args.vcpus, args.tasks, args.mode, args.quiet, args.timeout) == (2, 6, "async", True, "30s")
    host_argv = forward(HOST, values, ("run_dir", "vcpus", "report", "trace", "once"))
    guest_argv = forward(GUEST, values, ("run_dir", "vcpus", "report", "trace", "once"))
    assert {"--guest-mem=1048576", "--host-mem=262144", "--swap-latency=2000000ns"} <= set(host_argv)
    assert {"--tasks=6", "--mode=async"} <= set(guest_argv)


def test_log_level_from_file_unless_given_on_the_command_line(tmp_path):
    """`log-level` in the file sets the level; --log-level before or after the command wins."""
    path = _write(tmp_path, 'run-dir = "r"\nguest-mem = "1MiB"\nhost-mem = "256KiB"\nlog-level = "info"\n')
    assert _args("host", "--config", path).log_level == "info"
    assert _args("--log-level", "error", "host", "--config", path).log_level == "error"
    assert _args("host", "--config", path, "--log-level", "debug").log_level == "debug"
    assert _args("host", "--run-dir", "r", "--guest-mem", "1MiB", "--host-mem", "256KiB").log_level == "warning"


@pytest.mark.parametrize("command, text, needles", [
    ("host", 'guest-memory = "1MiB"', ["unknown key 'guest-memory'", "did you mean 'guest-mem'"]),
    ("host", "tasks = 4", ["unknown key 'tasks'", "option of `apf guest`", "[guest] section"]),
    ("guest", '[guest]\nswap = "/tmp/s"', ["[guest] unknown key 'swap'", "`apf host`"]),
    ("host", 'config = "other.toml"', ["unknown key 'config'"]),
    ("host", 'guest-mem = "lots"', ["guest-mem", "'lots' is not a size"]),
    ("host", 'swap-latency = "fast"', ["swap-latency", "'fast' is not a duration"]),
    ("guest", "write-frac = 1.5", ["write-frac", "not between 0 and 1"]),
    ("host", 'policy = "sometimes"', ["policy", "'sometimes' is not one of sync, async"]),
    ("host", "io-depth = 0", ["io-depth", "must be at least 1"]),
    ("guest", "seed = 2.5", ["seed", "2.5 is not a whole number"]),
    ("host", 'direct-io = "yes"', ["direct-io", "is a switch", "not a string 'yes'"]),
    ("host", "guest-mem = true", ["guest-mem", "got a boolean True"]),
    ("host", "guest-mem = [1, 2]", ["guest-mem", "got an array"]),
    ("host", "run-dir = 7", ["run-dir", "expected a string, got an integer 7"]),
    ("host", 'guest-mem = "1MiB"\nguest_mem = "2MiB"', ["'guest_mem' and 'guest-mem' are the same option"]),
    ("host", "host = 3", ["'host' names the `apf host` section", "not an integer"]),
    ("host", "vcpus = ", ["not valid TOML", "line 1"]),
])
def test_bad_files_are_named_errors(tmp_path, command, text, needles):
    """Unknown keys, wrong types and bad values raise an error naming the file and the key."""
    path = _write(tmp_path, text + "\n")
    with pytest.raises(ConfigFileError) as exc:
        _load(path, command)
    message = str(exc.value)
    assert message.startswith(path + ":")
    for needle in needles:
        assert needle in message, message


def test_bad_file_is_one_line_and_exit_2(tmp_path, capsys):
    """From `apf`, a bad file is one line on stderr naming command, file and key, exit status 2, no
    traceback; nothing is started."""
    path = _write(tmp_path, 'guest-mem = "1MiB"\nhost-mem = "256KiB"\nrun-dir = "r"\nswap_latncy = "2ms"\n')
    with pytest.raises(SystemExit) as exc:
        main(["host", "--config", path])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"apf host: error: {path}: unknown key 'swap_latncy'")
    assert "Traceback" not in err


def test_missing_file_is_named(tmp_path, capsys):
    """A config file that does not exist is an error naming it, exit status 2."""
    path = str(tmp_path / "nope.toml")
    with pytest.raises(SystemExit) as exc:
        main(["guest", "--config", path])
    assert exc.value.code == 2
    assert f"cannot read config file {path}: No such file or directory" in capsys.readouterr().err


def test_options_of_every_config_command_are_settable(tmp_path):
    """Every long option of `apf host`, `apf guest` and `apf run` (but --help and --config) is a key
    the file accepts: the file covers the whole command line."""
    commands = _commands(build_parser())
    simple = {"run-dir": '"r"', "guest-mem": '"1MiB"', "host-mem": '"256KiB"', "working-set": '"64KiB"'}
    for name in ("host", "guest", "run"):
        flags = {f[2:] for a in commands[name]._actions for f in a.option_strings if f.startswith("--")}
        flags -= {"help", "config"}
        for flag in sorted(flags):
            action = commands[name]._option_string_actions["--" + flag]
            if action.nargs == 0:
                value = "true"
            elif action.choices:
                value = f'"{next(iter(action.choices))}"'
            else:
                value = simple.get(flag, "1")
            path = _write(tmp_path, f"{flag} = {value}\n", name=f"{name}-{flag}.toml")
            try:
                assert action.dest in _load(path, name), (name, flag)
            except ConfigFileError as exc:      # a value this option refuses, but a known key
                assert "unknown key" not in str(exc) and f"{path}: {flag}: " in str(exc), str(exc)


def test_repeatable_option_takes_an_array_and_the_command_line_replaces_it(tmp_path):
    """A repeatable option (--inject) takes one value or an array, each checked by its parser; given
    on the command line, its values replace the file's instead of adding to them."""
    assert "--inject" in _commands(build_parser())["host"]._option_string_actions, "`apf host` lost --inject"
    path = _write(tmp_path, 'run-dir = "r"\nguest-mem = "1MiB"\nhost-mem = "256KiB"\n'
                            'inject = ["swap-read:eio:every=50", "ack:never"]\n')
    assert _args("host", "--config", path).inject == ["swap-read:eio:every=50", "ack:never"]
    assert _args("host", "--config", path, "--inject", "ack:late:delay=20ms").inject == ["ack:late:delay=20ms"]
    single = _write(tmp_path, 'inject = "ack:never"\n', name="single.toml")
    assert _load(single, "host")["inject"] == ["ack:never"]
    bad = _write(tmp_path, 'inject = ["ack:never", "ack:sometimes"]\n', name="bad.toml")
    with pytest.raises(ConfigFileError, match=r"bad\.toml: inject: .*ack:sometimes"):
        _load(bad, "host")


def test_docs_example_is_a_valid_file_for_host_guest_and_run(tmp_path):
    """The TOML example in docs/configuration.md (the file its shell block writes) loads for each
    command and means what its comments say."""
    with open(os.path.join(ROOT, "docs", "configuration.md"), encoding="utf-8") as f:
        example = re.search(r"cat > apf.toml <<'EOF'\n(.*?)\nEOF\n", f.read(), re.S).group(1)
    path = _write(tmp_path, example)
    host = _args("host", "--config", path)
    assert (host.guest_mem, host.host_mem, host.swap_latency_ns, host.direct_io) == (8 << 20, 2 << 20, 2_000_000, True)
    guest = _args("guest", "--config", path, "--tasks", "16")
    assert (guest.tasks, guest.mode, guest.think_ns, guest.write_frac) == (16, "async", 200_000, 0.25)
    assert host.run_dir == guest.run_dir
    run = _args("run", "--config", path)
    assert run.guest_mem == 8 << 20 and run.tasks == 8


@pytest.mark.parametrize("option, value, says", [
    ("--teardown-bound", "-1s", "'-1s' is not a duration"),
    ("--io-depth", "-3", "-3 must be at least 1"),
])
def test_a_value_starting_with_a_dash_reaches_the_options_own_check(capsys, option, value, says):
    """argparse alone would answer "expected one argument" for `--opt -1s`."""
    with pytest.raises(SystemExit) as info:
        _args("host", "--run-dir", "/tmp/r", "--guest-mem", "32MiB", "--host-mem", "8MiB", option, value)
    assert info.value.code == 2
    assert f"argument {option}: {says}" in capsys.readouterr().err


def test_an_option_after_a_value_option_is_still_an_option(capsys):
    args = _args("host", "--run-dir", "/tmp/r", "--guest-mem", "32MiB", "--host-mem", "8MiB", "--direct-io")
    assert args.direct_io is True
    with pytest.raises(SystemExit):
        _args("host", "--run-dir", "/tmp/r", "--guest-mem", "32MiB", "--host-mem", "8MiB", "--swap-latency",
              "--direct-io")
    assert "argument --swap-latency: expected one argument" in capsys.readouterr().err
