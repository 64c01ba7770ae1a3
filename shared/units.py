"""Sizes (`64MiB`, `4096`) and durations (`2ms`, `150us`, `1.5s`) as users type them.

Sizes take the units docs/options.md documents, spelled exactly: B, KiB, MiB, GiB, TiB (binary); a
bare number is bytes. Durations take ns, us (or µs), ms, s in any case; a bare number is seconds
where it is allowed (configuration files, fault-injection values), while the command line asks
for a unit (`require_unit`), since `--swap-latency 2` meaning two seconds surprises."""
from __future__ import annotations

import re
from fractions import Fraction

_SIZE_UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
SIZE_UNITS_TEXT = "B, KiB, MiB, GiB, TiB (binary: 1KiB = 1024 bytes) or a bare number of bytes"
DURATION_UNITS_TEXT = "ns, us, ms, s"
_DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
                   "": 1_000_000_000}
_NUMBER = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Zµ]*)\s*$")


def parse_size(text: str | int) -> int:
    """Bytes in `text`; raise ValueError with the accepted forms otherwise."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"a size cannot be negative ({text})")
        return text
    m = _NUMBER.match(str(text))
    unit = m.group(2) if m else None
    if not m or unit not in _SIZE_UNITS:
        raise ValueError(f"'{text}' is not a size: sizes take {SIZE_UNITS_TEXT} (examples: 4096, 64KiB, "
                         "32MiB, 4GiB)")
    value = Fraction(m.group(1)) * _SIZE_UNITS[unit]   # exact: no float rounding of big sizes
    if value.denominator != 1:
        raise ValueError(f"'{text}' is not a whole number of bytes")
    return int(value)


def parse_duration_ns(text: str | int | float, require_unit: bool = False) -> int:
    """Nanoseconds in `text`; a bare number means seconds, or is refused with `require_unit`."""
    if isinstance(text, (int, float)) and not require_unit:
        return int(text * 1_000_000_000)
    m = _NUMBER.match(str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _DURATION_UNITS:
        raise ValueError(f"'{text}' is not a duration: durations take {DURATION_UNITS_TEXT} "
                         "(examples: 150us, 2ms, 1.5s)")
    if require_unit and not unit and float(m.group(1)) != 0:     # 0 is 0 in any unit
        raise ValueError(f"'{text}' has no unit: give one of {DURATION_UNITS_TEXT} "
                         f"(e.g. {m.group(1)}ms or {m.group(1)}s)")
    return int(round(float(m.group(1)) * _DURATION_UNITS[unit]))


def format_size(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n}B"


def format_duration_ns(ns: int) -> str:
    if ns >= 1_000_000_000:
        return f"{ns / 1e9:g}s"
    if ns >= 1_000_000:
        return f"{ns / 1e6:g}ms"
    if ns >= 1_000:
        return f"{ns / 1e3:g}us"
    return f"{ns}ns"
