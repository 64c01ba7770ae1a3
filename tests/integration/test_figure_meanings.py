"""Each STATS figure means one thing (SPEC §4.6), read from a real host: the page-readies a
disable drops, by where they were; the pages charged to the budget, by state; the Prometheus
help of the figures whose help said something else."""
from __future__ import annotations

from host.metrics import GAUGES, REMOTE_COUNTERS
from protocol.hypercalls import FuncId, SmcccRet
from protocol.messages import InjectExc
from tests.helpers import RawGuest

SMALL = ("--guest-mem", "1MiB", "--host-mem", "64KiB", "--io-engine", "threads")


def _swapped(g: RawGuest, n: int) -> list[int]:
    pages = [p for p in g.swapped_pages() if p < 64][:n]
    assert len(pages) == n
    return pages


def test_a_disable_counts_each_dropped_page_ready_once_by_where_it_was(raw_guest):
    """Page a's page-ready sits in the slot (untaken), b's waits in the done queue behind it, c's
    swap-in runs: APF_DISABLE drops b's at once (`dropped_queued`) and c's when its page comes
    in (`dropped_in_flight`); `dropped_by_disable` is their sum, 2, and `flushed`, its older
    name, equals it (it no longer counts each drop a second time)."""
    g = raw_guest(*SMALL, "--swap-latency", "100ms")
    g.enable(0)
    a, b, c = _swapped(g, 3)
    token_a = g.trap(0, a).token
    g.pump_until(lambda: g.control.read(0, "ready_token") == token_a, "a's page-ready in the slot")
    assert isinstance(g.trap(0, b), InjectExc)
    g.pump_until(lambda: g.stats()["apf"]["queued"][0] == 1, "b's page-ready queued behind a's")
    assert isinstance(g.trap(0, c), InjectExc)
    assert g.hvc(0, FuncId.APF_DISABLE).ret[0] == SmcccRet.SUCCESS
    apf = g.pump_until(lambda: (s := g.stats()["apf"])["dropped_in_flight"] == 1 and s, "c's page to come in")
    assert (apf["dropped_queued"], apf["dropped_in_flight"], apf["dropped_by_disable"], apf["flushed"]) == (1, 1, 2, 2)


def test_pages_being_read_are_charged_but_not_resident_only(raw_guest):
    """During a swap-in of 300 ms, STATS counts its page in `reading_pages`; `resident_pages`
    (pages charged to the budget) is `resident_only_pages` + `reading_pages` + `evicting_pages`;
    once the page is in, `reading_pages` is 0 again."""
    g = raw_guest(*SMALL, "--swap-latency", "300ms")
    seq = g.send_trap(0, _swapped(g, 1)[0])
    memory = g.pump_until(lambda: (m := g.stats()["memory"])["reading_pages"] == 1 and m, "the swap-in running")
    assert memory["resident_pages"] == (memory["resident_only_pages"] + memory["reading_pages"]
                                        + memory["evicting_pages"])
    g.wait_reply(g.vcpu_socks[0], seq)
    memory = g.stats()["memory"]
    assert memory["reading_pages"] == 0
    assert memory["resident_pages"] == memory["resident_only_pages"] + memory["evicting_pages"]


def test_the_prometheus_help_says_what_stats_counts():
    """`apf_evicting_pages` counts unmapped victims awaiting their TLBI ack or write-back (not only
    pages being written back), `apf_resident_pages` the pages charged to the budget, and the
    remote failure counters count pages, not requests (an MGET of several pages is one)."""
    help_of = {name: text for name, text, *_ in GAUGES + REMOTE_COUNTERS}
    assert help_of["apf_evicting_pages"] == "unmapped victims waiting for their TLBI ack or write-back"
    assert "charged to the budget" in help_of["apf_resident_pages"]
    for name in ("apf_swap_remote_timeouts", "apf_swap_remote_errors"):
        assert help_of[name].startswith("pages whose remote swap I/O"), help_of[name]
