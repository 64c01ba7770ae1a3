"""Time dilation: what both daemons agree on.

The emulator cannot make its own costs (a trap is a ZeroMQ round trip, ~150 µs) as small as a
real VM exit (a few µs). Time dilation (Gupta et al., "To Infinity and Beyond: Time-Warped
Network Emulation", NSDI 2006; DieCast, NSDI 2008) makes every *modelled* cost D times larger
instead, D = emulator exit cost / target exit cost, so that the emulated system behaves like the
real one on a clock that runs D times slower; its figures divided by D are real-equivalent.

With `--dilation auto|FACTOR`, `--swap-latency`, `--think`, `--compute-work`, `--ns-per-insn`,
the scheduler time slice and every latency of an injected fault (`delay=`, `scale=`) are
real-equivalent and multiplied by D before they are applied. The guest tells the host D with the
EMU_DILATION hypercall (protocol/hypercalls.py), x1 = D in thousandths (FACTOR_SCALE).
"""
from __future__ import annotations

AUTO = "auto"
FACTOR_SCALE = 1000              # EMU_DILATION carries D x 1000 as an integer
# The target platform's cost of one stage-2 fault round trip resolved without I/O, in ns.
# Dall et al., "ARM Virtualization: Performance and Architectural Implications" (ISCA 2016)
# report a KVM/ARM hypercall round trip of about 6,500 cycles on a 2.4 GHz APM X-Gene
# (~2.7 µs; about 1,300 cycles for KVM on x86); a stage-2 fault adds the page lookup and the
# stage-2 map to that transition. 3 µs is used; BENCHMARKS.md says how D moves with it.
DEFAULT_EXIT_COST_NS = 3_000
DRIFT_BOUND = 0.25               # |end / start exit cost - 1| beyond this: real-scale figures flagged


def parse_dilation(text: str) -> str | float:
    """`auto` or a factor of at least 1 (a float). Raises ValueError naming what is wrong."""
    text = str(text).strip()
    if text == AUTO:
        return AUTO
    try:
        factor = float(text)
    except ValueError:
        raise ValueError(f"'{text}' is neither 'auto' nor a number") from None
    if not factor > 0:
        raise ValueError(f"{text}: a dilation factor must be above 0 (and at least 1)")
    if factor < 1:
        raise ValueError(f"{text}: a dilation factor below 1 would make the emulator's own costs look "
                         "faster than the target's; use a factor of at least 1")
    if factor * FACTOR_SCALE > 0xFFFFFFFF:
        raise ValueError(f"{text}: a dilation factor must be below {0xFFFFFFFF // FACTOR_SCALE}")
    return factor


def encode_factor(factor: float) -> int:
    """D as EMU_DILATION's x1 (thousandths)."""
    return round(factor * FACTOR_SCALE)


def decode_factor(word: int) -> float:
    """EMU_DILATION's x1 as D."""
    return word / FACTOR_SCALE


def dilate_ns(ns: int, factor: float) -> int:
    """A real-equivalent duration (ns) as the emulator applies it."""
    return round(ns * factor)
