"""Sizes (`64MiB`, `4096`, `1G`) and durations (`2ms`, `150us`, `1.5s`) as users type them."""
from __future__ import annotations

import re
from fractions import Fraction

_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 1000 ** 2,
               "mib": 1 << 20, "g": 1 << 30, "gb": 1000 ** 3, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40}
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
    unit = m.group(2).lower() if m else None
    if not m or unit not in _SIZE_UNITS:
        raise ValueError(f"'{text}' is not a size (examples: 4096, 64KiB, 32MiB, 4GiB)")
    value = Fraction(m.group(1)) * _SIZE_UNITS[unit]   # exact: no float rounding of big sizes
    if value.denominator != 1:
        raise ValueError(f"'{text}' is not a whole number of bytes")
    return int(value)


def parse_duration_ns(text: str | int | float) -> int:
    """Nanoseconds in `text` (a bare number means seconds)."""
    if isinstance(text, (int, float)):
        return int(text * 1_000_000_000)
    m = _NUMBER.match(str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _DURATION_UNITS:
        raise ValueError(f"'{text}' is not a duration (examples: 150us, 2ms, 1.5s)")
    return int(round(float(m.group(1)) * _DURATION_UNITS[unit]))


def format_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
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
