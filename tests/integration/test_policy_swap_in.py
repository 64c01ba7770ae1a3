"""The adaptive policy's swap-in estimate, fed by a real host: one sample per swap-in request,
from its submission to its completion reaching the poll loop, whatever it reads ahead."""
from __future__ import annotations

from protocol.messages import Kind
from tests.helpers import wait_until

LATENCY_NS = 50_000_000


def test_the_swap_in_estimate_takes_one_sample_per_request_with_its_queueing(raw_guest):
    """Two synchronous faults at once on two vCPUs, each a swap-in with read-ahead pages, on one
    I/O channel with 50 ms of latency: the second request waits for the first. The policy took
    one sample per request (not one per page read), and its estimate, the moving average of
    about 50 ms then 100 ms, is above 1.05 x the latency: the second sample holds its queueing."""
    g = raw_guest("--guest-mem", "1MiB", "--host-mem", "64KiB", "--policy", "adaptive", "--swap-latency", "50ms", "--io-depth", "1", "--page-cluster", "3",
                  nr_vcpus=2)
    swapped = [gfn for gfn in g.swapped_pages() if gfn < 64]     # touched, then evicted
    first, second = swapped[len(swapped) // 4], swapped[3 * len(swapped) // 4]
    seqs = {g.send_trap(0, first), g.send_trap(1, second)}
    answered: set[int] = set()

    def both_answered() -> bool:
        answered.update(msg.seq for msg, _ in g._poll(10) if msg.KIND == Kind.RESUME)
        return seqs <= answered
    wait_until(both_answered, "both faults answered")
    stats = g.stats()
    swap, policy = stats["swap"], stats["policy"]
    assert stats["faults"]["major"] == 2 and swap["readahead"]["pages"] > 0, swap
    assert swap["reads"] == 2 + swap["readahead"]["pages"]
    assert policy["swap_in_samples"] == 2, policy
    assert policy["swap_in_us"] > 1.05 * LATENCY_NS / 1000, policy
