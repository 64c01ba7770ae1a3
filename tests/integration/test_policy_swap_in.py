"""The adaptive policy's swap-in estimate, fed by a real host: one sample per swap-in request,
from its submission to its completion reaching the poll loop, whatever it reads ahead."""
from __future__ import annotations

import zmq

from protocol import decode, encode
from protocol.messages import Kind, Stats
from tests.helpers import RECV_BOUND_S, wait_until

LATENCY_NS = 200_000_000


def _stats(sock: zmq.Socket) -> dict:
    """The host's STATS, asked and answered on `sock` (bounded)."""
    sock.send(encode(Stats(1)))
    assert sock.poll(int(RECV_BOUND_S * 1000)), "no STATS_REPLY"
    return decode(sock.recv()).stats


def test_the_swap_in_estimate_takes_one_sample_per_request_with_its_queueing(raw_guest):
    """Two synchronous faults at once on two vCPUs, each a swap-in with read-ahead pages, on one
    I/O channel with 200 ms of latency: the second request waits for the first. The policy took
    one sample per request (not one per page read), and its estimate, the moving average of
    about 200 ms then 400 ms, is above 1.05 x the latency: the second sample holds its queueing."""
    g = raw_guest("--guest-mem", "1MiB", "--host-mem", "128KiB", "--policy", "adaptive", "--swap-latency", "200ms",
                  "--io-depth", "1", "--page-cluster", "2", nr_vcpus=2)
    swapped = [gfn for gfn in g.swapped_pages() if gfn < 64]     # touched, then evicted
    first, second = swapped[len(swapped) // 4], swapped[3 * len(swapped) // 4]
    seqs = {g.send_trap(0, first), g.send_trap(1, second)}
    # Both requests submitted, the second waiting for the one channel (not, say, for memory);
    # asked on a socket of its own, so that no answer to the traps is taken meanwhile.
    probe = g._socket("probe")
    try:
        wait_until(lambda: _stats(probe)["swap"]["io_queued"] == 1, "the second request queued behind the first",
                   bound_s=1.0)
    finally:
        probe.close(linger=0)
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
