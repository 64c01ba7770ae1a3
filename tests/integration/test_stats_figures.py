"""The host's STATS figures across guests (SPEC §4.6): what restarts for each guest, what the host
keeps, and the resources figures, asked of a real host by hand-driven guests."""
from protocol.hypercalls import FuncId
from protocol.messages import Kind
from tests.helpers import RawGuest, attached_guest


def _power_off(g: RawGuest) -> None:
    assert g.hvc(0, FuncId.PSCI_SYSTEM_OFF).ret[0] == 0
    g.close()


def _second_guest(info: dict) -> RawGuest:
    g = RawGuest(info, name="second")
    assert g.hello().KIND == Kind.WELCOME
    return g


def test_session_counters_restart_per_guest_and_the_remote_ones_do_not(host, redis_server):
    """The counters SPEC §4.6 marks *session* (`faults`, `apf`) read 0 for the next guest, while
    the remote swap's `timeouts` and `errors` ("since the host started") and `sessions_served`
    carry over: a first guest whose swap-ins time out on purpose leaves them above 0."""
    server = redis_server()
    h = host("--guest-mem", "1MiB", "--host-mem", "64KiB", "--page-cluster", "0", "--swap", server.url,
             "--inject", "swap-remote:timeout:pages=3")
    first = attached_guest(h.info, pages=64)
    first.enable(0)
    for gfn in [p for p in first.swapped_pages() if p < 64][:8]:
        first.trap(0, gfn, write=False)
    before = first.stats()
    _power_off(first)
    second = _second_guest(h.info)
    try:
        after = second.stats()
    finally:
        second.close()
    assert before["faults"]["total"] > 64 and before["apf"]["not_present"] > 0 and before["apf"]["wake_all"] == 1
    remote = before["swap"]["remote"]
    assert remote["timeouts"] > 0
    assert all(v == 0 for k, v in after["faults"].items() if k != "sync_reasons") and after["faults"]["sync_reasons"] == {}
    assert all(v == 0 for k, v in after["apf"].items() if isinstance(v, int))
    assert after["swap"]["read_device_ns"] == 0
    kept = after["swap"]["remote"]
    assert (kept["timeouts"], kept["errors"]) == (remote["timeouts"], remote["errors"])
    assert after["session"]["sessions_served"] == 1 and after["session"]["guest"] == "second"


def test_peak_rss_is_the_high_water_mark_not_the_rss(host):
    """`resources.peak_rss_bytes` is the kernel's high-water mark (VmHWM), not the RSS: a first
    guest's swap traffic makes the host touch 8 MiB of guest RAM; once that guest has gone and the
    host freed its RAM, the RSS is down by most of it while the peak still holds about the first value."""
    h = host("--guest-mem", "32MiB", "--host-mem", "16MiB", "--page-cluster", "0")
    first = attached_guest(h.info, pages=6000)
    for gfn in [p for p in first.swapped_pages() if p < 6000][:2000]:
        first.trap(0, gfn, write=False)          # each swap-in: the host writes the page into guest RAM
    during = first.stats()["resources"]
    _power_off(first)
    second = _second_guest(h.info)
    try:
        after = second.stats()["resources"]
    finally:
        second.close()
    assert after["rss_bytes"] <= during["rss_bytes"] - (4 << 20), (during, after)
    assert after["peak_rss_bytes"] - after["rss_bytes"] >= 4 << 20, (during, after)
    # The kernel folds the RSS into the mark lazily (and counts RSS per thread in batches), so the
    # mark may sit a little below an RSS read earlier: within 1 MiB.
    assert after["peak_rss_bytes"] >= during["rss_bytes"] - (1 << 20), (during, after)
