"""The swap-slot allocator: which page-sized slot of the swap file a page is written to.

As Linux's swap allocator (mm/swapfile.c) does, slots are handed out in clusters of
SLOTS_PER_CLUSTER (256, Linux's SWAPFILE_CLUSTER): the allocator fills its current cluster from
the lowest free slot up, then takes a cluster that is wholly free (one never used, or one whose
slots were all freed), and only when there is none scans the partly used clusters for a free
slot. Pages evicted together (one reclaim batch) thus sit together on the device, which is what
lets swap readahead read neighbours in one request. A cluster that becomes empty is handed to
`discard` (the swap file punches it out), so the file holds only clusters in use.

The slot map is one byte per slot in an anonymous private mapping: never-touched slots cost no
memory, so a terabyte of swap starts instantly. `alloc()` returns -1 when the device is full
(the caller treats it as ENOSPC).
"""
from __future__ import annotations

import mmap
from array import array
from collections import deque
from typing import Callable

from shared import sparse

SLOTS_PER_CLUSTER = 256
_FREE = b"\x00"


class SlotAllocator:
    def __init__(self, nslots: int, discard: Callable[[int, int], None] = lambda first, count: None):
        if nslots <= 0:
            raise ValueError("a swap device needs at least one slot")
        self.nslots = nslots
        self.nclusters = -(-nslots // SLOTS_PER_CLUSTER)
        self._discard = discard
        self._map = sparse.byte_map(nslots)
        self._in_use = array("H", bytes(2 * self.nclusters))   # used slots per cluster
        self._free_clusters: deque[int] = deque()   # emptied clusters, reused before fresh ones
        self._fresh = 0                              # clusters below this were used at some time
        self._cur = -1                               # the cluster being filled, or -1
        self._scan = 0                               # where the search of partly used clusters resumes
        self.used = 0

    def _cluster_end(self, cluster: int) -> int:
        return min(self.nslots, (cluster + 1) * SLOTS_PER_CLUSTER)

    def alloc(self) -> int:
        """A free slot, preferring the current cluster, then a free cluster; -1 if none is left."""
        if self._cur >= 0:
            slot = self._map.find(_FREE, self._cur * SLOTS_PER_CLUSTER, self._cluster_end(self._cur))
            if slot >= 0:
                return self._take(slot)
        if self._free_clusters:
            self._cur = self._free_clusters.popleft()
        elif self._fresh < self.nclusters:
            self._cur = self._fresh
            self._fresh += 1
        else:
            return self._alloc_fragmented()
        return self._take(self._cur * SLOTS_PER_CLUSTER)

    def _alloc_fragmented(self) -> int:
        """Every cluster is in use: the first free slot of any, from where the last search ended."""
        self._cur = -1
        if self.used >= self.nslots:
            return -1
        slot = self._map.find(_FREE, self._scan)
        if slot < 0:
            slot = self._map.find(_FREE, 0, self._scan)
        if slot < 0:
            return -1
        self._scan = slot + 1
        self._cur = slot // SLOTS_PER_CLUSTER
        return self._take(slot)

    def _take(self, slot: int) -> int:
        self._map[slot] = 1
        self._in_use[slot // SLOTS_PER_CLUSTER] += 1
        self.used += 1
        return slot

    def free(self, slot: int) -> None:
        """Give `slot` back; a cluster left empty (and not being filled) is free again, and discarded."""
        if not self._map[slot]:
            raise ValueError(f"swap slot {slot} freed twice")
        self._map[slot] = 0
        self.used -= 1
        cluster = slot // SLOTS_PER_CLUSTER
        self._in_use[cluster] -= 1
        if not self._in_use[cluster] and cluster != self._cur:
            self._free_clusters.append(cluster)
            self._discard(cluster * SLOTS_PER_CLUSTER, self._cluster_end(cluster) - cluster * SLOTS_PER_CLUSTER)

    def is_used(self, slot: int) -> bool:
        return bool(self._map[slot])

    def reset(self) -> None:
        """Every slot free, as at creation (the mapping's pages are given back)."""
        self._map.madvise(mmap.MADV_DONTNEED)
        self._in_use = array("H", bytes(2 * self.nclusters))
        self._free_clusters.clear()
        self._fresh = 0
        self._cur = -1
        self._scan = 0
        self.used = 0

    def close(self) -> None:
        self._map.close()
