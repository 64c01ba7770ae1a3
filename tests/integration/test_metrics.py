"""The Prometheus endpoints: `apf host --metrics` and `apf guest --metrics` serve their counters in
the Prometheus text format during a run (parsed here with prometheus_client's own parser), on
loopback by default; the host's counters only grow across guests."""
import json
import os
import re
import socket
import subprocess
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from protocol.hypercalls import FuncId
from protocol.messages import InjectExc
from tests.helpers import APF, ROOT, apf, attached_guest, reap, wait_until

HOST_ARGS = ["--guest-mem", "4MiB", "--host-mem", "1MiB", "--vcpus", "2", "--swap-latency", "1ms",
             "--metrics", "0"]


def _scrape(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.headers.get_content_type() == "text/plain"
        text = reply.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _scrape_once_up(url: str) -> dict | None:
    """A scrape, or None while the endpoint is not listening yet (a daemon still starting)."""
    try:
        return _scrape(url)
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            return None
        raise


def _value(families: dict, family: str, sample: str, **labels) -> float:
    found = [s.value for s in families[family].samples if s.name == sample and
             all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (family, sample, labels, families[family].samples[:5])
    return found[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_host_and_guest_metrics_scraped_during_a_run(host, run_dir, tmp_path):
    """Scraped while a guest runs: the host's counters (`apf_faults_total`, `apf_faults_sync_total`
    by reason, swap I/O), gauges (resident pages, outstanding APFs per vCPU) and histograms
    (`apf_fault_latency_seconds` by vCPU, `apf_swap_in_latency_seconds`), and the guest's per-vCPU
    counters and fault-latency histogram; the endpoints listen on 127.0.0.1."""
    h = host(*HOST_ARGS)
    url = h.info["metrics"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    guest_port = _free_port()
    guest = subprocess.Popen(APF + ["guest", "--run-dir", run_dir, "--vcpus", "2", "--tasks", "4", "--mode", "async",
                                    "--accesses", "4000", "--prefill", "--metrics", str(guest_port)],
                             cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        # Swap reads count as they start; the swap-in histogram as they complete: wait for both.
        during = wait_until(lambda: (f := _scrape(url)) and _value(f, "apf_swap_reads", "apf_swap_reads_total") > 10
                            and _value(f, "apf_swap_in_latency_seconds", "apf_swap_in_latency_seconds_count") > 0
                            and f, "the host counted swap-ins", 30, every_s=0.1)
        g = wait_until(lambda: (f := _scrape_once_up(f"http://127.0.0.1:{guest_port}/metrics"))
                       and _value(f, "apf_guest_faults", "apf_guest_faults_total", vcpu="0") > 0 and f,
                       "the guest counted faults", 30, every_s=0.1)
        assert guest.poll() is None, "the scrapes came after the run"
        out, err = guest.communicate(timeout=120)
    finally:
        reap(guest)
    assert guest.returncode == 0, err
    assert during["apf_faults"].type == "counter"
    assert sum(s.value for s in during["apf_faults_sync"].samples if s.name == "apf_faults_sync_total") > 0
    assert all("reason" in s.labels for s in during["apf_faults_sync"].samples if s.name.endswith("_total"))
    assert during["apf_resident_pages"].type == "gauge"
    assert 0 < _value(during, "apf_resident_pages", "apf_resident_pages") <= 256 + 8
    assert {s.labels["vcpu"] for s in during["apf_outstanding_apfs"].samples} == {"0", "1"}
    assert during["apf_fault_latency_seconds"].type == "histogram"
    assert _value(during, "apf_fault_latency_seconds", "apf_fault_latency_seconds_count", vcpu="0") > 0
    assert _value(during, "apf_swap_in_latency_seconds", "apf_swap_in_latency_seconds_count") > 0
    assert "apf_swap_remote_keys" not in during and "apf_swap_remote_rtt_seconds" not in during   # a swap file
    assert g["apf_guest_fault_latency_seconds"].type == "histogram"
    assert _value(g, "apf_guest_fault_latency_seconds", "apf_guest_fault_latency_seconds_bucket",
                  vcpu="0", le="+Inf") > 0

    after = _scrape(url)
    total_after = _value(after, "apf_faults", "apf_faults_total")
    assert total_after >= _value(during, "apf_faults", "apf_faults_total")
    report = str(tmp_path / "second.json")
    second = apf("guest", "--run-dir", run_dir, "--accesses", "100", "--report", report, timeout=60)
    assert second.returncode == 0, second.stderr
    final = wait_until(lambda: (f := _scrape(url)) and _value(f, "apf_sessions", "apf_sessions_total") == 2 and f,
                       "the second guest ended", 20)
    with open(report, encoding="utf-8") as f:
        traps = sum(p["faults"]["total"] for p in json.load(f)["phases"].values())
    assert _value(final, "apf_faults", "apf_faults_total") == total_after + traps   # kept across the reset


def test_a_remote_swap_exports_its_figures(host, redis_server):
    """A host swapping to Redis, one page's requests timed out on purpose: the remote swap's
    keys, bytes and nodes are gauges equal to the host's STATS `swap.remote`, its timeouts and
    errors counters, and the round trip's p50 and p99 a gauge by quantile, in seconds."""
    server = redis_server()
    h = host("--guest-mem", "1MiB", "--host-mem", "64KiB", "--metrics", "0", "--swap", server.url,
             "--inject", "swap-remote:timeout:pages=5")
    g = attached_guest(h.info, pages=64)
    try:
        remote = g.stats()["swap"]["remote"]
        f = _scrape(h.info["metrics"])
    finally:
        g.close()
    assert remote["keys"] >= 40 and remote["timeouts"] >= 1
    assert f["apf_swap_remote_keys"].type == "gauge" and f["apf_swap_remote_timeouts"].type == "counter"
    assert _value(f, "apf_swap_remote_keys", "apf_swap_remote_keys") == remote["keys"]
    assert _value(f, "apf_swap_remote_bytes", "apf_swap_remote_bytes") == remote["keys"] * 4096
    assert _value(f, "apf_swap_remote_nodes", "apf_swap_remote_nodes") == 1
    assert _value(f, "apf_swap_remote_timeouts", "apf_swap_remote_timeouts_total") == remote["timeouts"]
    assert _value(f, "apf_swap_remote_errors", "apf_swap_remote_errors_total") == 0
    p50 = _value(f, "apf_swap_remote_rtt_seconds", "apf_swap_remote_rtt_seconds", quantile="0.5")
    p99 = _value(f, "apf_swap_remote_rtt_seconds", "apf_swap_remote_rtt_seconds", quantile="0.99")
    assert 0 < p50 <= p99 < 1


def test_a_bad_metrics_address_is_one_error():
    """`--metrics` takes PORT or ADDR:PORT with an IP address; anything else is refused at once."""
    proc = apf("host", "--run-dir", "/nonexistent/x", "--guest-mem", "1MiB", "--host-mem", "1MiB",
               "--metrics", "example.org:80", timeout=30)
    assert proc.returncode == 2
    assert "'example.org:80' is not a metrics address: give PORT (on 127.0.0.1) or ADDR:PORT" in proc.stderr


def _documented_host_metrics() -> dict[str, str]:
    """The host's metrics as docs/metrics.md's table lists them: family name -> kind (counter, gauge,
    histogram), with `{a,b}` spelled out and `_total` dropped (the parser's family names); the
    `apf_guest_*` row is the guest's endpoint, not the host's."""
    with open(os.path.join(ROOT, "docs", "metrics.md"), encoding="utf-8") as f:
        text = f.read()
    table = text[text.index("| metric | kind | what |"):]
    table = table[:table.index("\n\n")]
    found: dict[str, str] = {}
    for row in table.splitlines()[2:]:
        names, kind = row.split("|")[1:3]
        if "apf_guest_*" in names:
            continue
        for name in re.findall(r"`(apf_[^`]+)`", names):
            name = re.sub(r"\{[a-z]+\}$", "", name)                     # a label, {vcpu}
            stems = [name]
            while any("{" in n for n in stems):
                n = next(n for n in stems if "{" in n)
                head, alts, tail = re.match(r"(.*?)\{([a-z_,]+)\}(.*)", n).groups()
                stems[stems.index(n):stems.index(n) + 1] = [head + a + tail for a in alts.split(",")]
            for stem in stems:
                found[stem.removesuffix("_total")] = kind.strip()
    return found


# The STATS figure (SPEC §4.6) each documented plain metric shows: (section, key).
STATS_OF = {
    "apf_faults": ("faults", "total"), "apf_faults_async": ("faults", "async"),
    "apf_faults_major": ("faults", "major"), "apf_faults_minor": ("faults", "minor"),
    "apf_faults_spurious": ("faults", "spurious"),
    "apf_swap_reads": ("swap", "reads"), "apf_swap_writes": ("swap", "writes"),
    "apf_swap_evictions": ("swap", "evictions"), "apf_swap_read_errors": ("swap", "read_errors"),
    "apf_swap_write_errors": ("swap", "write_errors"), "apf_tlbi_batches": ("swap", "tlbi_batches"),
    "apf_page_not_present": ("apf", "not_present"), "apf_page_ready": ("apf", "page_ready"),
    "apf_wake_all": ("apf", "wake_all"), "apf_acks": ("apf", "acks"), "apf_reraised": ("apf", "reraised"),
    "apf_dropped_by_disable": ("apf", "dropped_by_disable"),
    "apf_resident_pages": ("memory", "resident_pages"), "apf_budget_pages": ("memory", "budget_pages"),
    "apf_free_pages": ("memory", "free_pages"), "apf_evicting_pages": ("memory", "evicting_pages"),
    "apf_over_budget_pages": ("memory", "over_budget_pages"),
    "apf_sessions": ("session", "sessions_served"),
    "apf_swap_remote_timeouts": ("remote", "timeouts"), "apf_swap_remote_errors": ("remote", "errors"),
    "apf_swap_remote_keys": ("remote", "keys"), "apf_swap_remote_bytes": ("remote", "bytes"),
    "apf_swap_remote_nodes": ("remote", "nodes"),
}
LABELLED = {"apf_faults_sync": ("reason", ("faults", "sync_reasons")), "apf_bad_frames": ("code", ("bad_frames",)),
            "apf_injected": ("fault", ("injected",))}
PER_VCPU = {"apf_outstanding_apfs": "outstanding", "apf_queued_page_ready": "queued"}


def test_every_documented_host_metric_is_served_with_its_stats_figure(host, redis_server):
    """Each host metric docs/metrics.md documents is served, of the kind it says, and no other `apf_`
    family: scraped with the host still (a guest attached, reclaim done, an async fault taken,
    a bad frame and injected faults counted, a remote swap), each counter and gauge equals the
    STATS figure it stands for, labelled ones label by label, and the histograms have counted."""
    documented = _documented_host_metrics()
    assert len(documented) >= 35, documented
    server = redis_server()
    h = host("--guest-mem", "1MiB", "--host-mem", "64KiB", "--vcpus", "2", "--page-cluster", "0",
             "--swap-latency", "2ms", "--metrics", "0", "--swap", server.url, "--inject", "swap-remote:timeout:pages=3")
    g = attached_guest(h.info, nr_vcpus=2, pages=64)
    try:
        g.enable(0)
        g.send_raw(g.ctl, b"\xc1 not msgpack")
        assert g.recv_any(g.ctl).KIND.name == "ERROR"
        gfn = next(p for p in g.swapped_pages() if p < 64 and p not in (3, 4, 5))
        token = g.trap(0, gfn, write=False)
        assert isinstance(token, InjectExc), token
        g.pump_until(lambda: g.control.read(0, "ready_token") == token.token, "the page-ready")
        assert g.take_page_ready(0) == token.token
        g.wait_reclaim_done()
        before = g.stats()
        families = _scrape(h.info["metrics"])
        after = g.stats()
    finally:
        g.close()
    served = {name: f.type for name, f in families.items()      # less the client's own `_created` stamps
              if name.startswith("apf_") and not name.endswith("_created")}
    assert served == documented
    for section in ("faults", "apf", "swap", "memory", "bad_frames", "injected"):
        assert before[section] == after[section] or section == "swap", (section, before[section], after[section])
    stats = {**after, "remote": after["swap"]["remote"]}
    for name, (section, key) in STATS_OF.items():
        sample = name + ("_total" if documented[name] == "counter" else "")
        assert _value(families, name, sample) == stats[section][key], name
    for name, (label, path) in LABELLED.items():
        figures = stats
        for key in path:
            figures = figures[key]
        got = {s.labels[label]: s.value for s in families[name].samples if s.name.endswith("_total")}
        assert got == {str(k): v for k, v in figures.items()} and got, (name, got, figures)
    for name, key in PER_VCPU.items():
        assert [_value(families, name, name, vcpu=str(v)) for v in (0, 1)] == stats["apf"][key], name
    assert _value(families, "apf_guest_attached", "apf_guest_attached") == 1
    assert 0 < _value(families, "apf_swap_remote_rtt_seconds", "apf_swap_remote_rtt_seconds", quantile="0.5") \
        <= _value(families, "apf_swap_remote_rtt_seconds", "apf_swap_remote_rtt_seconds", quantile="0.99")
    assert _value(families, "apf_fault_latency_seconds", "apf_fault_latency_seconds_count", vcpu="0") > 0
    assert _value(families, "apf_swap_in_latency_seconds", "apf_swap_in_latency_seconds_count") > 0


def test_apf_run_metrics_is_the_hosts_endpoint(tmp_path):
    """`apf run --metrics PORT` gives the port to the host (not the guest): scraped during the run
    it serves the host's families (`apf_guest_attached` 1, faults counted), none of the guest's,
    and nothing listens there once the run has ended."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    report = str(tmp_path / "report.json")
    proc = subprocess.Popen(APF + ["run", "--guest-mem", "4MiB", "--host-mem", "1MiB", "--mode", "async",
                                   "--swap-latency", "1ms", "--tasks", "4", "--accesses", "4000", "--prefill",
                                   "--metrics", str(port), "--report", report],
                            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        during = wait_until(lambda: (f := _scrape_once_up(url)) and _value(f, "apf_faults", "apf_faults_total") > 0
                            and f, "the host's endpoint counting faults", 30, every_s=0.1)
        assert proc.poll() is None, "the scrape came after the run"
        out, err = proc.communicate(timeout=120)
    finally:
        reap(proc)
    assert proc.returncode == 0, err
    assert _value(during, "apf_guest_attached", "apf_guest_attached") == 1
    assert not any(name.startswith("apf_guest_") and name != "apf_guest_attached" for name in during)
    assert _scrape_once_up(url) is None


def test_guest_metrics_port_0_is_announced(host, run_dir, tmp_path):
    """`apf guest --metrics 0` takes a free port and says which: a line on stderr as it starts,
    whatever the log level, and the report's `metrics`; that URL is the one that was served."""
    host("--guest-mem", "1MiB", "--host-mem", "1MiB")
    report = str(tmp_path / "guest.json")
    proc = apf("guest", "--run-dir", run_dir, "--accesses", "50", "--metrics", "0", "--report", report, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "metrics on" in line]
    assert len(lines) == 1 and lines[0].startswith("apf guest: metrics on http://127.0.0.1:"), proc.stderr
    url = lines[0].split("metrics on ", 1)[1]
    assert url.endswith("/metrics") and not url.endswith(":0/metrics")
    with open(report, encoding="utf-8") as f:
        assert json.load(f)["metrics"] == url
