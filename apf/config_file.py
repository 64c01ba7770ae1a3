"""Options from a TOML file: `apf host|guest|run --config FILE`.

A key is an option's long name without the leading dashes (`guest-mem`, or `guest_mem`); its value
goes through the same parser as on the command line, so `"32MiB"`, `"2ms"` and `0.25` mean what they
mean there, and a switch takes `true` or `false`. Options given on the command line win over the
file. The file is either one flat table, or has `[host]`, `[guest]` and `[run]` sections, or both:

    vcpus = 2                     # top level: applies to whichever command reads the file
    [host]
    guest-mem = "32MiB"
    [guest]
    tasks = 8

`apf host` reads the top level and `[host]`; `apf guest` the top level and `[guest]`; `apf run` the
top level, then `[host]`, `[guest]` and `[run]` (a later table wins). A section named after another
`apf` command is ignored. Each table's keys must be options of its command: anything else is an
error that names the file and the key.
"""
from __future__ import annotations

import argparse
import difflib
import sys
import tomllib
from decimal import Decimal
from typing import Any
from protocol.errors import ConfigFileError

CONFIG_COMMANDS = ("host", "guest", "run")           # the commands that take --config
SECTIONS_READ = {"host": ("host",), "guest": ("guest",), "run": ("host", "guest", "run")}
NOT_FROM_FILE = ("help", "config")                   # options a file cannot set


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`parser.parse_args(argv)`, with the defaults of the chosen command taken from its --config
    file when one is given. Options required on the command line may then come from the file."""
    commands = _commands(parser)
    words = sys.argv[1:] if argv is None else argv
    argv = words = _glue_dash_values([parser, *commands.values()], words)
    if "-h" in words or "--help" in words:
        return parser.parse_args(argv)      # help needs no file, and shows the required options
    first, unknown = _first_pass(parser, commands, argv)
    if unknown:     # before any missing required option: a misspelt one is usually the cause
        commands.get(getattr(first, "command", None), parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    path = getattr(first, "config", None) if first is not None else None
    lists: dict[str, list] = {}     # repeatable options: the command line's replace the file's
    if path is not None:
        command = first.command
        sub = commands[command]
        try:
            values = load(path, command, commands)
        except ConfigFileError as exc:
            sub.exit(2, f"{sub.prog}: error: {exc}\n")    # as argparse reports a bad option
        if "log_level" in values and getattr(first, "log_level", None) is not None:
            del values["log_level"]         # given on the command line, before or after the command
        repeatable = {a.dest for a in sub._actions if isinstance(a, argparse._AppendAction)}
        lists = {dest: values.pop(dest) for dest in list(values) if dest in repeatable}
        for action in sub._actions:
            if action.required and action.dest in values:
                action.required = False
        sub.set_defaults(**values)
    args = parser.parse_args(argv)
    for dest, items in lists.items():
        if not getattr(args, dest, None):
            setattr(args, dest, items)
    if getattr(args, "log_level", None) is None:
        args.log_level = "warning"
    return args


def load(path: str, command: str, commands: dict[str, argparse.ArgumentParser]) -> dict[str, Any]:
    """The option values (by dest) that the file at `path` sets for `apf COMMAND`."""
    doc = _read(path)
    # `trace` is a command (`apf trace`) and an option (--trace): a value that is not a table is the option.
    options = {f[2:] for a in commands[command]._actions for f in a.option_strings if f.startswith("--")}
    is_section = {name: name in commands and (isinstance(value, dict) or name not in options)
                  for name, value in doc.items()}
    sections = {name: value for name, value in doc.items() if is_section[name]}
    flat = {key: value for key, value in doc.items() if not is_section[key]}
    for name, value in sections.items():
        if not isinstance(value, dict):
            raise ConfigFileError(f"{path}: '{name}' names the `apf {name}` section; make it a table "
                                  f"([{name}]), not {_toml_type(value)}")
    tables = [(None, command, flat)]
    tables += [(name, name, sections[name]) for name in SECTIONS_READ.get(command, ()) if name in sections]
    target = commands[command]
    values: dict[str, Any] = {}
    for section, role, table in tables:
        for dest, value in _table_values(path, section, role, table, commands).items():
            if _action_by_dest(target, dest) is None:   # e.g. a --run-dir only in [host], read by run
                raise ConfigFileError(f"{path}: [{section}] {dest}: not an option of `apf {command}`")
            values[dest] = value
    return values


def _read(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigFileError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: not valid TOML: {exc}") from None


def _table_values(path: str, section: str | None, role: str, table: dict[str, Any],
                  commands: dict[str, argparse.ArgumentParser]) -> dict[str, Any]:
    options = _long_options(commands[role])
    where = f"{path}: [{section}] " if section else f"{path}: "
    values: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in table.items():
        name = key.replace("_", "-")
        action = options.get(name)
        if action is None:
            raise ConfigFileError(where + _unknown_key(key, name, role, options, commands))
        if name in spelled:
            raise ConfigFileError(f"{where}'{key}' and '{spelled[name]}' are the same option (--{name})")
        spelled[name] = key
        converted = _convert(where, key, name, value, action)
        if converted is not _UNSET:
            values[action.dest] = converted
    return values


_UNSET = object()


def _convert(where: str, key: str, name: str, value: Any, action: argparse.Action) -> Any:
    """`value` parsed as `--NAME` would parse it on the command line."""
    if action.nargs == 0:                          # a switch: store_true / store_false
        if not isinstance(value, bool):
            raise ConfigFileError(f"{where}{key}: --{name} is a switch; give true or false, "
                                  f"not {_toml_type(value)} {value!r}")
        return action.const if value else _UNSET
    if isinstance(action, argparse._AppendAction):  # repeatable: one value or an array of them
        items = value if isinstance(value, list) else [value]
        return [_convert_one(where, key, item, action) for item in items]
    return _convert_one(where, key, value, action)


def _convert_one(where: str, key: str, value: Any, action: argparse.Action) -> Any:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigFileError(f"{where}{key}: expected {_expected(action)}, got {_toml_type(value)} {value!r}")
    if action.type is None and not isinstance(value, str):
        raise ConfigFileError(f"{where}{key}: expected a string, got {_toml_type(value)} {value!r}")
    text = value if isinstance(value, str) else _number_text(value)
    if not isinstance(value, str) and action.metavar == "DUR":
        text += "s"   # a bare number in a file is seconds (the command line asks for a unit)
    try:
        converted = action.type(text) if action.type is not None else text
    except argparse.ArgumentTypeError as exc:
        raise ConfigFileError(f"{where}{key}: {exc}") from None
    except (TypeError, ValueError):
        raise ConfigFileError(f"{where}{key}: {value!r} is not {_expected(action)}") from None
    if action.choices is not None and converted not in action.choices:
        raise ConfigFileError(f"{where}{key}: {value!r} is not one of "
                              f"{', '.join(map(str, action.choices))}")
    return converted


def _number_text(value: int | float) -> str:
    """A TOML number as the command line would spell it (no exponent: 1e-06 is '0.000001')."""
    if isinstance(value, int):
        return str(value)
    return format(Decimal(repr(value)), "f")


def _expected(action: argparse.Action) -> str:
    if action.choices is not None:
        return "one of " + ", ".join(map(str, action.choices))
    if action.type is int:
        return "a whole number"
    if action.metavar:
        return f"a value like the command line's {action.metavar}"
    return "a value"


def _toml_type(value: Any) -> str:
    kinds = ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
             (list, "an array"), (dict, "a table"))
    return next((name for kind, name in kinds if isinstance(value, kind)), "a date or time")


def _unknown_key(key: str, name: str, role: str, options: dict[str, argparse.Action],
                 commands: dict[str, argparse.ArgumentParser]) -> str:
    text = f"unknown key '{key}': `apf {role}` has no option --{name}"
    elsewhere = [other for other in CONFIG_COMMANDS
                 if other != role and other in commands and name in _long_options(commands[other])]
    if elsewhere:
        return text + f" (it is an option of `apf {elsewhere[0]}`: put it in a [{elsewhere[0]}] section)"
    close = difflib.get_close_matches(name, options, n=1)
    return text + (f" (did you mean '{close[0]}'?)" if close else "")


def _long_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Long option names (without dashes) a file may set, mapped to their actions."""
    options = {}
    for action in parser._actions:
        if action.dest in NOT_FROM_FILE:
            continue
        for flag in action.option_strings:
            if flag.startswith("--"):
                options[flag[2:]] = action
    return options


def _action_by_dest(parser: argparse.ArgumentParser, dest: str) -> argparse.Action | None:
    return next((a for a in parser._actions if a.dest == dest and a.option_strings), None)


def _glue_dash_values(parsers: list[argparse.ArgumentParser], words: list[str]) -> list[str]:
    """`--opt -1s` as `--opt=-1s`: argparse takes a value that starts with '-' for an option and
    reports "expected one argument"; glued, the value reaches the option's own check, which says
    what is wrong with it (negative, not a duration)."""
    flags = {s for p in parsers for a in p._actions for s in a.option_strings}
    takes_value = {s for p in parsers for a in p._actions if a.nargs is None and a.option_strings
                   and not isinstance(a, (argparse._StoreConstAction, argparse._HelpAction))
                   for s in a.option_strings}
    glued: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        following = words[i + 1] if i + 1 < len(words) else None
        if word in takes_value and following is not None and following.startswith("-") \
                and following != "--" and following.split("=", 1)[0] not in flags:
            glued.append(f"{word}={following}")
            i += 2
            continue
        glued.append(word)
        i += 1
    return glued


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


class _FirstPassError(Exception):
    pass


def _raise_first_pass_error(message: str) -> None:
    raise _FirstPassError(message)


def _first_pass(parser: argparse.ArgumentParser, commands: dict[str, argparse.ArgumentParser],
                argv: list[str] | None) -> tuple[argparse.Namespace | None, list[str]]:
    """The command and its --config, read before the file can supply required options, and the
    words no option takes; None when the command line is wrong anyway (the real parse then
    reports it, with the real usage)."""
    relaxed = [a for sub in commands.values() for a in sub._actions if a.required]
    parsers = [parser, *commands.values()]
    for action in relaxed:
        action.required = False
    for p in parsers:
        p.error = _raise_first_pass_error
    try:
        return parser.parse_known_args(argv)
    except _FirstPassError:
        return None, []
    finally:
        for action in relaxed:
            action.required = True
        for p in parsers:
            del p.error
