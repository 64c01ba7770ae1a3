"""The --out folder of `apf bench`: one kind of results per folder.

Each kind of `apf bench` run (the default set, --quick, --micro, --only ..., --preset ...,
--real-scale, --validate) writes its own files, several of them under the same names
(results.json, results.md, runs/). A folder is claimed for one kind with a small marker file,
MARKER, and a run of another kind into a non-empty folder is refused before anything runs, so
results of two kinds never mix silently. A run of the same kind overwrites its files; --replot
reads whatever is there.
"""
from __future__ import annotations

import json
import os
from typing import Any

from protocol.errors import BenchError

MARKER = ".apf-bench.json"


def kind(values: dict[str, Any]) -> str:
    """The kind of results an `apf bench` invocation writes, from its parsed options: "validate",
    or the selecting options in a fixed order ("default", "quick", "micro", "only=haltpoll",
    "preset=arm64-v4-compute+arm64-v4-memory-only", "real-scale", joined by spaces). Sweep sizes
    (--repeat, --latencies, ...) do not change the kind: they change figures, not files."""
    if values.get("validate"):
        return "validate"
    parts = [flag for flag in ("quick", "micro") if values.get(flag)]
    if values.get("real_scale"):
        parts.append("real-scale")
    for option in ("only", "preset"):
        chosen = values.get(option)
        if chosen:
            names = chosen.split(",") if isinstance(chosen, str) else list(chosen)
            parts.append(f"{option}=" + "+".join(sorted(n.strip() for n in names if n.strip())))
    return " ".join(parts) or "default"


def check(out: str, wanted: str) -> None:
    """Refuse, before anything runs or is written, an `out` that is not empty and holds results of
    another kind than `wanted`, or files of no `apf bench` (no MARKER): raises BenchError naming both
    kinds and what to do. A missing or empty folder, or one of the same kind, passes."""
    if not os.path.isdir(out):
        return
    entries = [e for e in os.listdir(out) if e != MARKER]
    try:
        with open(os.path.join(out, MARKER), encoding="utf-8") as f:
            found = json.load(f).get("kind")
    except FileNotFoundError:
        found = None
    except (OSError, ValueError, AttributeError):
        found = "unreadable"
    if entries and found != wanted:
        held = f"results of another kind ({found})" if found else "files of something other than apf bench"
        raise BenchError(f"--out {out} already holds {held}, and this run ({wanted}) would mix its files "
                         f"with them: give an empty or new folder, e.g. {os.path.join(out, _slug(wanted))}")


def mark(out: str, wanted: str) -> None:
    """Make `out` (and its parents) if needed and mark it as holding results of kind `wanted`."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, MARKER), "w", encoding="utf-8") as f:
        json.dump({"kind": wanted}, f)


def _slug(wanted: str) -> str:
    return wanted.replace("=", "-").replace("+", "-").replace(" ", "-")
