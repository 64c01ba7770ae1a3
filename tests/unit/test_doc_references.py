"""Every source file the docs and the code's own text name exists: a module that moved or went
leaves no reference behind (the SPEC, README, BENCHMARKS, docs/ and every docstring and comment)."""
from __future__ import annotations

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PATH = re.compile(r"(?<![\w/.])(?:apf|host|guest|shared|protocol|tests)/[\w/]*\w\.py\b")
SKIP = {".venv", ".git", ".hypothesis", ".pytest_cache", "node_modules"}


def _texts() -> list[str]:
    """The project's Markdown and Python files, relative to the root."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP and not d.endswith(".egg-info")]
        found += [os.path.relpath(os.path.join(folder, f), ROOT) for f in files if f.endswith((".md", ".py"))]
    return found


def test_every_named_source_file_exists():
    """Each `package/…/module.py` named in a text file of the project is a file of the project."""
    missing = []
    for name in _texts():
        if name == os.path.relpath(__file__, ROOT):
            continue
        with open(os.path.join(ROOT, name), encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                missing += [f"{name}:{lineno}: {ref}" for ref in PATH.findall(line)
                            if not os.path.exists(os.path.join(ROOT, ref))]
    assert missing == []
