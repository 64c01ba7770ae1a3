"""Every shell block of README.md and docs/*.md runs as written on a clone after `make demo`.

A block is a fence whose info string starts with `sh`; the rest of the info string says what it
must do (docs/testing.md): nothing (exit 0), `exit=N`, `swaps` (exit 0 and every `--report FILE`
it names shows swap reads in its workload phase), or `skip: REASON` (not run: a service such as
Redis, Docker or a second terminal, or a long time). Each block runs with `bash -e -o pipefail`
in a fresh folder that holds links to the clone's `.venv` and `traces/`, with `.venv/bin` not on
PATH, in a process group of its own that is killed when the block ends or its bound passes.
"""
from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
from dataclasses import dataclass

import pytest

from tests.helpers import ROOT

BLOCK_BOUND_S = 150.0     # the slowest block (traces.md: valgrind, then a trace replay) takes ~20 s
REPORT = re.compile(r"--report\s+(\S+)|^report\s*=\s*\"([^\"]+)\"", re.M)


@dataclass(frozen=True)
class Block:
    """One shell block: where it is, its text, and what it must do."""
    where: str           # "docs/options.md:12"
    body: str
    exit_status: int = 0
    swaps: bool = False
    skip: str | None = None


def parse_info(info: str) -> dict | None:
    """The expectations an info string gives (`sh`, `sh exit=N`, `sh swaps`, `sh skip: REASON`);
    None for a block of another language. Raises ValueError for an `sh` info string it cannot read
    (a typo must not turn a block into one that is silently not checked)."""
    words = info.strip().split(None, 1)
    if not words or words[0] != "sh":
        return None
    rest = words[1].strip() if len(words) > 1 else ""
    if rest.startswith("skip:"):
        reason = rest[len("skip:"):].strip()
        if not reason:
            raise ValueError("`sh skip:` needs a reason")
        return {"skip": reason}
    found: dict = {}
    for word in rest.split():
        if word == "swaps":
            found["swaps"] = True
        elif re.fullmatch(r"exit=\d+", word):
            found["exit_status"] = int(word[5:])
        else:
            raise ValueError(f"unknown word {word!r} in the info string `{info.strip()}`")
    return found


def shell_blocks(path: str) -> list[Block]:
    """The shell blocks of one Markdown file, in order (fences of three backticks at a line's
    start; CommonMark allows no backtick in their info string, so one there is an error)."""
    lines = open(path, encoding="utf-8").read().split("\n")
    blocks, opened = [], None
    for number, line in enumerate(lines, 1):
        if not line.startswith("```"):
            continue
        where = f"{os.path.relpath(path, ROOT)}:{number}"
        if opened is None:
            info = line[3:]
            if "`" in info:
                raise AssertionError(f"{where}: a backtick in a fence's info string ends no block in Markdown")
            opened = (where, info, number)
            continue
        if line.strip() != "```":
            raise AssertionError(f"{where}: a fence opens inside the block of {opened[0]}")
        start, info, first = opened
        opened = None
        try:
            expect = parse_info(info)
        except ValueError as exc:
            raise AssertionError(f"{start}: {exc}") from None
        if expect is not None:
            blocks.append(Block(start, "\n".join(lines[first:number - 1]) + "\n", **expect))
    assert opened is None, f"{opened[0]}: a block that is never closed"
    return blocks


def all_blocks() -> list[Block]:
    paths = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    return [b for p in paths for b in shell_blocks(p)]


def test_info_strings_are_read_as_documented():
    """The markers of docs/testing.md: plain, exit=N, swaps, skip with a reason; others refused."""
    assert parse_info("sh") == {}
    assert parse_info("sh exit=1") == {"exit_status": 1}
    assert parse_info("sh swaps") == {"swaps": True}
    assert parse_info("sh skip: needs Redis") == {"skip": "needs Redis"}
    assert parse_info("toml") is None and parse_info("") is None
    for bad in ("sh swap", "sh skip:", "sh exit=x"):
        with pytest.raises(ValueError):
            parse_info(bad)


def test_readme_has_runnable_blocks_that_swap():
    """The README's experiments are checked, not skipped: at least two blocks that must swap."""
    readme = shell_blocks(os.path.join(ROOT, "README.md"))
    assert sum(1 for b in readme if b.swaps and b.skip is None) >= 2


@pytest.mark.timeout(BLOCK_BOUND_S + 30)
@pytest.mark.parametrize("block", all_blocks(), ids=lambda b: b.where)
def test_block_runs_as_documented(block: Block, tmp_path):
    """The block runs as written from a clone's top folder (after `make demo`), exits as its info
    string says, and, when marked `swaps`, each report it writes counts swap reads in the workload."""
    if block.skip:
        pytest.skip(block.skip)
    for name in (".venv", "traces"):
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if os.path.abspath(p) != os.path.join(ROOT, ".venv", "bin"))
    proc = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", block.body], cwd=tmp_path, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=BLOCK_BOUND_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=10)
        raise AssertionError(f"{block.where}: still running after {BLOCK_BOUND_S:g}s:\n{out[-3000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)      # a daemon the block left in the background
        except ProcessLookupError:
            pass
    assert proc.returncode == block.exit_status, \
        f"{block.where}: exit status {proc.returncode}, documented {block.exit_status}:\n{out[-3000:]}"
    if block.swaps:
        reports = [a or b for a, b in REPORT.findall(block.body)]
        assert reports, f"{block.where}: marked `swaps` but names no --report FILE"
        for name in reports:
            with open(tmp_path / name, encoding="utf-8") as f:
                report = json.load(f)
            assert report["workload_swap"]["reads"] > 0, f"{block.where}: {name} never swapped in the workload"
