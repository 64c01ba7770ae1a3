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

from dataclasses import dataclass

from shared.units import parse_duration_ns

AUTO = "auto"
FACTOR_SCALE = 1000              # EMU_DILATION carries D x 1000 as an integer
# The target platform's cost of one stage-2 fault round trip resolved without I/O, in ns.
# Dall et al., "ARM Virtualization: Performance and Architectural Implications" (ISCA 2016)
# report a KVM/ARM hypercall round trip of about 6,500 cycles on a 2.4 GHz APM X-Gene
# (~2.7 µs; about 1,300 cycles for KVM on x86); a stage-2 fault adds the page lookup and the
# stage-2 map to that transition. 3 µs is used; BENCHMARKS.md says how D moves with it.
DEFAULT_EXIT_COST_NS = 3_000


@dataclass(frozen=True)
class ExitCostProfile:
    """A platform's exit cost for `--exit-cost NAME`: `cycles` of one round trip between guest and
    hypervisor at `clock_ghz`, as `source` measured it (`clock_source`: where the clock comes from)."""
    name: str
    cycles: int
    clock_ghz: float
    what: str
    source: str
    clock_source: str

    @property
    def ns(self) -> int:
        return round(self.cycles / self.clock_ghz)


# Cycle counts from Dall et al.: ISCA 2016 Table II and USENIX ATC 2017 Table 2 (as transcribed in
# ../shared/reference/apf.md; the ATC 2017 clocks are the machines' nominal ones).
EXIT_COST_PROFILES = {p.name: p for p in (
    ExitCostProfile("arm64-nvhe", 6_500, 2.4, "KVM/ARM hypercall round trip, split-mode (non-VHE) KVM",
                    "Dall et al., ISCA 2016, Table II", "APM X-Gene, 2.4 GHz (the paper's machine)"),
    ExitCostProfile("arm64-vhe", 752, 2.0, "KVM/ARM hypercall round trip with VHE (host kernel in EL2)",
                    "Dall et al., USENIX ATC 2017, Table 2", "AMD Seattle (Cortex-A57), 2.0 GHz nominal"),
    ExitCostProfile("x86", 1_437, 2.1, "KVM x86 hypercall round trip (ISCA 2016 measured ~1,300)",
                    "Dall et al., USENIX ATC 2017, Table 2", "Intel Xeon, 2.1 GHz assumed"),
    ExitCostProfile("user-exit", 7_630, 2.0, "an exit to the VMM's user space and back (I/O to user "
                    "space; 6,732 on x86 to 10,012 split-mode ARM in the same table)",
                    "Dall et al., USENIX ATC 2017, Table 2", "AMD Seattle (Cortex-A57), 2.0 GHz nominal"),
)}


def parse_exit_cost(text: str) -> int:
    """`--exit-cost`: a platform name (EXIT_COST_PROFILES) or a duration with its unit; ns.
    Raises ValueError naming the choices."""
    text = str(text).strip()
    if text in EXIT_COST_PROFILES:
        return EXIT_COST_PROFILES[text].ns
    try:
        ns = parse_duration_ns(text, require_unit=True)
    except ValueError as exc:
        raise ValueError(f"'{text}' is neither a platform ({', '.join(EXIT_COST_PROFILES)}) nor a "
                         f"duration: {exc}") from None
    if ns <= 0:
        raise ValueError(f"{text} must be above 0: no real platform resolves a fault in no time")
    return ns


def exit_cost_name(ns: int) -> str | None:
    """The platform whose exit cost is `ns`, if one is."""
    return next((p.name for p in EXIT_COST_PROFILES.values() if p.ns == ns), None)
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
