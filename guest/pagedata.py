"""Verifiable page content: every write stamps (gfn, version, checksum); every read checks it.

Layout of a stamped page: `gfn` u64, `version` u32, `crc32(body)` u32, then a body of the
16-byte pattern (gfn, version) repeated. A stale page fails the version check, a torn one the
checksum, a page of another gfn the gfn check. Version 0 means never written: all zero.
"""
from __future__ import annotations

import struct
import zlib

from protocol.messages import PAGE_SIZE

HEADER = struct.Struct("<QII")
BODY_SIZE = PAGE_SIZE - HEADER.size
_PATTERN = struct.Struct("<QQ")
ZERO_PAGE = bytes(PAGE_SIZE)


def stamp(page: memoryview, gfn: int, version: int) -> None:
    body = _PATTERN.pack(gfn, version) * (BODY_SIZE // _PATTERN.size)
    page[HEADER.size:] = body
    HEADER.pack_into(page, 0, gfn, version, zlib.crc32(body))


def verify(page: memoryview, gfn: int, version: int) -> str | None:
    """None if the page holds what `version` of `gfn` should; else what is wrong."""
    if version == 0:
        return None if page == ZERO_PAGE else "never-written page is not zero"
    got_gfn, got_version, crc = HEADER.unpack_from(page, 0)
    if got_gfn != gfn:
        return f"page stamped for gfn {got_gfn}"
    if got_version != version:
        return f"version {got_version}, expected {version}"
    if zlib.crc32(page[HEADER.size:]) != crc:
        return "checksum mismatch (torn page)"
    return None
