"""`apf stats` against a real running host: counters, rates, --watch, --json, and its errors."""
import json
import os
import re
import select
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from itertools import cycle

import pytest

from protocol import encode
from protocol.messages import Heartbeat
from tests.helpers import APF, ROOT, RawGuest, apf, attached_guest, refusal

SMALL = ["--guest-mem", "1MiB", "--host-mem", "64KiB", "--vcpus", "2"]   # 256 pages, 16 resident


def _stats(run_dir: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return apf("stats", "--run-dir", run_dir, *args, timeout=timeout)


def _row(table: str, label: str) -> tuple[str, str]:
    """(value, rate) of the table row labelled `label`; columns are two or more spaces apart."""
    pattern = re.compile(rf"(?:^|\s){re.escape(label)}\s{{2,}}(\S(?:\S| (?! ))*)(?:\s{{2,}}(\S+))?\s*$")
    for line in table.splitlines():
        m = pattern.search(line)
        if m:
            return m.group(1), m.group(2) or ""
    raise AssertionError(f"no row {label!r} in:\n{table}")


@pytest.fixture
def busy_host(host):
    """A host whose 64 touched pages do not fit its 16-page budget: evictions have happened."""
    h = host(*SMALL)
    g = RawGuest(h.info)
    assert g.hello().KIND.name == "WELCOME"
    g.fill(range(64))
    assert g.wait_reclaim_done()["resident_pages"] <= 16
    yield h, g
    g.close()


@contextmanager
def kept_attached(g: RawGuest, work=None):
    """Keep `g` attached while the block runs (the host drops a guest it has not heard from for a
    while): a thread of its own sends a HEARTBEAT each round, then runs `work(g)`, or else serves the
    host's messages for 50 ms. The block must not use `g`'s sockets meanwhile."""
    stop = threading.Event()
    rounds = []

    def loop():
        while not stop.is_set():
            g.ctl.send(encode(Heartbeat(0)))
            if work is None:
                g.pump(50)
            else:
                work(g)
            rounds.append(1)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        yield rounds
    finally:
        stop.set()
        thread.join(timeout=15)
        assert not thread.is_alive(), "the keep-attached thread did not stop"


def test_json_is_the_hosts_own_counters(busy_host):
    """--json prints the host's STATS_REPLY: the faults the guest made, the budget it was given, and
    as many pages resident as stage 2 shows mapped."""
    h, g = busy_host
    with kept_attached(g):
        proc = _stats(h.run_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["faults"]["total"] == 64 and stats["faults"]["minor"] == 64
    assert stats["memory"]["budget_pages"] == 16
    mapped = sum(1 for p in range(256) if g.stage2.perm[p])
    assert stats["memory"]["resident_pages"] - stats["memory"]["evicting_pages"] == mapped <= 16
    assert stats["swap"]["evictions"] >= 64 - 16 and stats["swap"]["writes"] > 0
    assert stats["apf"]["outstanding"] == [0, 0]


def test_table_shows_counters_rates_and_bad_frames(busy_host):
    """The table shows resident/budget, swap and fault counters, a fault rate above zero while a
    guest keeps faulting, and the frames the host rejected."""
    h, g = busy_host
    g.send_raw(g.ctl, b"\xc1 not msgpack")
    assert g.recv_any(g.ctl).KIND.name == "ERROR"
    gfns = cycle(range(64))
    with kept_attached(g, work=lambda g: g.trap(0, next(gfns))) as rounds:
        proc = _stats(h.run_dir, "--interval", "500ms")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert len(rounds) > 0
    resident, budget = re.match(r"(\d+) / (\d+)", _row(out, "resident / budget pages")[0]).groups()
    assert int(budget) == 16 and int(resident) <= 16
    faults, fault_rate = _row(out, "faults")
    assert int(faults) >= 64 and float(fault_rate.replace(",", "")) > 0
    assert float(_row(out, "swap reads")[1].replace(",", "")) > 0
    assert int(_row(out, "evictions")[0]) >= 48
    assert re.fullmatch(r"\d+ / \d+ / \d+", _row(out, "readahead / hits / misses")[0])
    assert _row(out, "bad frames")[0] == "1" and _row(out, "by error")[0] == "malformed 1"
    assert _row(out, "per vCPU (0..1)")[0] == "0 0"
    assert "rates over 500ms" in out
    assert re.fullmatch(r"yes: \S+ \(\d+ served\)", _row(out, "guest attached")[0])
    assert "keys / bytes" not in out and "round trip" not in out     # a swap file: no remote rows


def test_every_row_of_the_table_is_its_stats_figure(host):
    """With the host still (a guest attached that faulted synchronously and asynchronously, took
    its page-ready, read then wrote an untouched page, and sent a bad frame), each row of the table shows the STATS figure it names,
    as `apf stats --json` reads them just before and after (equal: nothing moved), and every rate
    is 0."""
    h = host(*SMALL, "--page-cluster", "0", "--swap-latency", "1ms")
    g = attached_guest(h.info, nr_vcpus=2)
    try:
        g.enable(0)
        exc = g.trap(0, next(p for p in g.swapped_pages() if p < 64), write=False)
        g.pump_until(lambda: g.control.read(0, "ready_token") == exc.token, "the page-ready")
        assert g.take_page_ready(0) == exc.token
        g.trap(1, 200, write=False)               # the zero page, then a write to it
        g.trap(1, 200)
        g.send_raw(g.ctl, b"\xc1 not msgpack")
        assert g.recv_any(g.ctl).KIND.name == "ERROR"
        g.wait_reclaim_done()
        with kept_attached(g):
            before = json.loads(_stats(h.run_dir, "--json").stdout)
            proc = _stats(h.run_dir, "--interval", "100ms")
            after = json.loads(_stats(h.run_dir, "--json").stdout)
    finally:
        g.close()
    assert proc.returncode == 0, proc.stderr
    for section in ("memory", "faults", "apf", "bad_frames"):
        assert before[section] == after[section], section
    mem, swap, faults, apf_ = after["memory"], after["swap"], after["faults"], after["apf"]
    assert faults["async"] == 1 and apf_["page_ready"] >= 1 and faults["write_protect"] >= 1 and faults["zero_page"] >= 1
    swap_in = swap["swap_in_us"]
    expected = {
        "resident / budget pages": f"{mem['resident_pages']} / {mem['budget_pages']}",
        "free / evicting pages": f"{mem['free_pages']} / {mem['evicting_pages']}",
        "over budget pages": str(mem["over_budget_pages"]),
        "swap reads": str(swap["reads"]), "swap writes": str(swap["writes"]),
        "evictions": str(swap["evictions"]), "clean drops (no write)": str(swap["clean_drops"]),
        "slots used": str(swap["slots_used"]),
        "readahead / hits / misses": " / ".join(str(swap["readahead"][k]) for k in ("pages", "hits", "misses")),
        "errors (read / write)": f"{swap['read_errors']} / {swap['write_errors']}",
        "swap-in p50 / p99 (us)": f"{swap_in['p50']:,.0f} / {swap_in['p99']:,.0f}",
        "faults": str(faults["total"]), "sync": str(faults["sync"]), "async": str(faults["async"]),
        "major / minor": f"{faults['major']} / {faults['minor']}",
        "write-protect / zero page": f"{faults['write_protect']} / {faults['zero_page']}",
        "sync reasons": ", ".join(f"{k} {v}" for k, v in sorted(faults["sync_reasons"].items()) if v),
        "outstanding": str(sum(apf_["outstanding"])), "per vCPU (0..1)": " ".join(map(str, apf_["outstanding"])),
        "page ready / acks": f"{apf_['page_ready']} / {apf_['acks']}",
        "bad frames": "1", "by error": "malformed 1",
    }
    out = proc.stdout
    for label, value in expected.items():
        shown, rate = _row(out, label)
        if label == "resident / budget pages":
            shown = shown.split(" (")[0]           # and the share of the budget
        assert shown == value and (rate == "" or float(rate) == 0), (label, shown, value, rate)


def test_table_shows_the_remote_swap_rows(host, redis_server):
    """A host swapping to Redis, one page's requests timed out on purpose: the table names the
    endpoint, shows the keys and bytes the host's own STATS report, the timeout and no other
    error, and round-trip percentiles above zero in order."""
    server = redis_server()
    h = host(*SMALL, "--swap", server.url, "--inject", "swap-remote:timeout:pages=5")
    g = attached_guest(h.info, pages=64)
    try:
        remote = g.stats()["swap"]["remote"]
        proc = _stats(h.run_dir, "--interval", "100ms")
    finally:
        g.close()
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert remote["keys"] >= 40 and remote["timeouts"] >= 1
    assert _row(out, "redis")[0] == f"redis://127.0.0.1:{server.port}/0"
    assert _row(out, "keys / bytes")[0] == f"{remote['keys']} / {remote['keys'] * 4}KiB"
    assert _row(out, "timeouts / errors")[0] == f"{remote['timeouts']} / 0"
    p50, p99 = (int(v.replace(",", "")) for v in _row(out, "round trip p50 / p99 (us)")[0].split(" / "))
    assert 0 < p50 <= p99


def test_watch_refreshes_count_times_then_exits(host):
    """--watch --count 3 refreshes three times, --interval apart, and exits 0."""
    h = host(*SMALL)
    start = time.monotonic()
    proc = _stats(h.run_dir, "--watch", "--count", "3", "--interval", "200ms")
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert "refresh 3/3 every 200ms" in proc.stdout and "Traceback" not in proc.stderr
    assert elapsed >= 0.4


def test_watch_json_prints_one_line_per_refresh(busy_host):
    """--watch --json prints one JSON object per refresh; an idle host's counters do not move."""
    h, g = busy_host
    with kept_attached(g):
        proc = _stats(h.run_dir, "--watch", "--json", "--count", "3", "--interval", "100ms")
    assert proc.returncode == 0, proc.stderr
    samples = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(samples) == 3
    assert [s["faults"]["total"] for s in samples] == [64, 64, 64]


def test_watch_stops_cleanly_on_ctrl_c(host):
    """In a terminal, --watch redraws until Ctrl-C, then exits 0 without a traceback."""
    h = host(*SMALL)
    master, slave = os.openpty()
    proc = subprocess.Popen(APF + ["stats", "--run-dir", h.run_dir, "--watch", "--interval", "100ms"],
                            cwd=ROOT, stdin=slave, stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    screen = b""
    try:
        deadline = time.monotonic() + 20
        while b"refresh 3 every" not in screen and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                screen += os.read(master, 65536)
        assert b"refresh 3 every" in screen, screen[-2000:]
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=10)
        stderr = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        proc.stderr.close()
        os.close(master)
    assert rc == 0, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert b"Ctrl-C to stop" in screen


def test_no_host_is_a_one_line_error(run_dir):
    """A run dir that does not exist, or that no host serves, is named in one line, exit status 2."""
    proc = _stats(run_dir)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"apf stats: error: run dir {run_dir} does not exist; "
                                   f"start `apf host --run-dir {run_dir}` first")
    os.mkdir(run_dir, 0o700)
    proc = _stats(run_dir, "--json")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == f"apf stats: error: run dir {run_dir} has no host.json: no host is serving it"


def test_a_host_that_does_not_answer_is_waited_for_only_so_long(host):
    """A stopped (SIGSTOP) host gets --timeout to answer; then one line names it and its pid."""
    h = host(*SMALL)
    assert _stats(h.run_dir, "--json").returncode == 0     # it answers while it runs
    os.kill(h.proc.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        proc = _stats(h.run_dir, "--timeout", "300ms")
        elapsed = time.monotonic() - start
    finally:
        os.kill(h.proc.pid, signal.SIGCONT)
    line = refusal(proc)
    assert f"(pid {h.proc.pid}," in line and "did not answer within 300ms" in line
    assert 0.3 <= elapsed < 10


def test_watch_ends_with_an_error_when_the_host_stops(host):
    """A watch whose host goes away stops with a line saying so, instead of waiting forever."""
    h = host(*SMALL)
    watch = subprocess.Popen(APF + ["stats", "--run-dir", h.run_dir, "--watch", "--json", "--interval", "100ms",
                                    "--count", "600", "--timeout", "1s"],
                             cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(watch.stdout.readline())["memory"]["budget_pages"] == 16
        assert h.stop() == 0
        out, err = watch.communicate(timeout=20)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate(timeout=5)
    assert watch.returncode == 2
    assert err.strip() == f"apf stats: error: the host of {h.run_dir} has stopped (no host.json any more)"


def test_table_says_no_guest_is_attached(host):
    """A host with no guest: the table says so (its counters are then the last guest's, reset)."""
    h = host(*SMALL)
    proc = _stats(h.run_dir, "--interval", "100ms")
    assert proc.returncode == 0, proc.stderr
    assert _row(proc.stdout, "guest attached")[0] == "no (0 served)"


def test_json_into_a_pipe_closed_early_ends_quietly(host):
    """`apf stats --json | head -c 20`: the reader going away is no error: no traceback, status 0."""
    h = host(*SMALL)
    proc = subprocess.run(["bash", "-o", "pipefail", "-c",
                           " ".join(APF) + f" stats --run-dir {h.run_dir} --json | head -c 20"],
                          capture_output=True, text=True, timeout=30, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert proc.stderr == "" and proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("{")
