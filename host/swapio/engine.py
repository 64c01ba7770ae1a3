"""What goes into a swap I/O engine and what comes out: a job is (IoOp, gfn), its result a Completion."""
from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple


class IoOp(IntEnum):
    READ = 0    # swap-in: file -> RAM
    WRITE = 1   # write-back: RAM -> file


class Completion(NamedTuple):   # a tuple: built once per I/O by a worker, on the hot path
    op: IoOp
    gfn: int
    err: int          # 0 or an errno
    start_ns: int     # when the worker took the job
    end_ns: int
