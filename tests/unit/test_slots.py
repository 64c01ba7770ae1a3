"""host/swapio/slots.py: the swap-slot allocator, clusters as Linux's allocator keeps them."""
from __future__ import annotations

import pytest

from host.swapio.slots import SLOTS_PER_CLUSTER, SlotAllocator

C = SLOTS_PER_CLUSTER


def test_slots_of_one_batch_are_contiguous():
    """Slots allocated one after another are consecutive, from slot 0, within a cluster."""
    a = SlotAllocator(4 * C)
    assert [a.alloc() for _ in range(C + 3)] == list(range(C + 3))
    assert a.used == C + 3


def test_an_emptied_cluster_is_reused_whole_and_discarded():
    """A cluster whose slots are all freed is discarded (its storage given back) and is the next
    cluster handed out, before never-used ones; the current cluster is finished first."""
    discarded = []
    a = SlotAllocator(4 * C, discard=lambda first, count: discarded.append((first, count)))
    first = [a.alloc() for _ in range(C)]          # cluster 0, full
    second = [a.alloc() for _ in range(10)]        # cluster 1 begins
    for s in first:
        a.free(s)
    assert discarded == [(0, C)]
    assert [a.alloc() for _ in range(C - 10)] == list(range(C + 10, 2 * C))   # finish cluster 1
    assert a.alloc() == 0                          # then the emptied cluster 0
    assert second == list(range(C, C + 10))


def test_full_device_returns_minus_one_and_fragmented_slots_are_found():
    """When every cluster is in use, freed slots inside them are found by a scan; with no free
    slot at all, alloc() returns -1."""
    a = SlotAllocator(2 * C + 5)
    slots = [a.alloc() for _ in range(2 * C + 5)]
    assert slots == list(range(2 * C + 5)) and a.alloc() == -1
    a.free(7)
    a.free(C + 1)
    assert sorted([a.alloc(), a.alloc()]) == [7, C + 1]
    assert a.alloc() == -1 and a.used == 2 * C + 5


def test_double_free_is_refused_and_reset_frees_everything():
    """Freeing a free slot is a ValueError; reset() makes every slot free again."""
    a = SlotAllocator(C)
    s = a.alloc()
    a.free(s)
    with pytest.raises(ValueError, match="freed twice"):
        a.free(s)
    for _ in range(C):
        a.alloc()
    a.reset()
    assert a.used == 0 and a.alloc() == 0 and not a.is_used(1)


def test_a_terabyte_of_slots_costs_no_memory_up_front():
    """2^28 slots (1 TiB of swap) are set up without touching a byte per slot."""
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    a = SlotAllocator(1 << 28)
    assert a.alloc() == 0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 16 * 1024   # KiB
    a.close()
