"""shared/sparse.py: per-page arrays in anonymous mappings, costing memory only where written."""
from __future__ import annotations

import psutil

from shared import sparse


def test_a_byte_map_reads_zero_and_keeps_what_is_written():
    m = sparse.byte_map(1000)
    assert len(m) == 1000 and m[999] == 0
    m[3], m[998] = 1, 2
    assert (m[3], m[998], m[4]) == (1, 2, 0)
    assert list(sparse.positions(m, 1)) == [3] and list(sparse.positions(m, 2)) == [998]
    assert sparse.count(m, 1) == 1 and sparse.count(m, 1, length=3) == 0


def test_positions_are_ascending_and_bounded_by_length():
    m = sparse.byte_map(64)
    for i in (0, 5, 6, 63):
        m[i] = 1
    assert list(sparse.positions(m)) == [0, 5, 6, 63]
    assert list(sparse.positions(m, length=6)) == [0, 5]


def test_clear_zeroes_everything():
    m = sparse.byte_map(1 << 20)
    m[12345] = 7
    sparse.clear(m)
    assert m[12345] == 0 and sparse.count(m, 7) == 0


def test_a_word_map_holds_32_bit_words():
    mm, words = sparse.word_map(10)
    assert len(words) == 10 and words[9] == 0
    words[9] = 0xFFFFFFFF
    assert words[9] == 0xFFFFFFFF and words[8] == 0
    sparse.clear(mm)
    assert words[9] == 0


def test_a_terabyte_guest_map_costs_only_the_pages_written():
    """A byte per page of a 1 TiB guest (2^28 pages) is created at once, and writing 1,000 scattered
    entries costs at most 1,000 pages of memory, not 256 MiB."""
    before = psutil.Process().memory_info().rss
    m = sparse.byte_map(1 << 28)
    for i in range(1000):
        m[(i * 2654435761) % (1 << 28)] = 1
    grown = psutil.Process().memory_info().rss - before
    assert grown <= 1000 * 4096 + (8 << 20), grown
    assert sparse.count(m, 1, length=1 << 20) == sum(1 for i in range(1000) if (i * 2654435761) % (1 << 28) < 1 << 20)


def test_a_page_set_lists_and_counts_its_members_across_chunks():
    s = sparse.PageSet(3 * sparse.PageSet.CHUNK + 5)
    members = [0, 1, sparse.PageSet.CHUNK - 1, 2 * sparse.PageSet.CHUNK + 7, 3 * sparse.PageSet.CHUNK + 4]
    for page in reversed(members):
        s[page] = 1
    assert list(s) == members and len(s) == 5
    assert s[1] == 1 and s[2] == 0


def test_a_page_set_of_a_64_tib_guest_lists_its_members_at_once():
    """2^34 pages: listing three members scans 4 MiB of chunk map and three chunks, not 16 GiB."""
    s = sparse.PageSet(1 << 34)
    for page in (5, 1 << 33, (1 << 34) - 1):
        s[page] = 1
    assert list(s) == [5, 1 << 33, (1 << 34) - 1] and len(s) == 3
