"""Micro-benchmarks for `apf bench --micro`: each of the emulator's costs next to its limit, both
measured in the same run on the same machine, so only the ratio is reported as a result.

    trap     minor-fault latency of a real `apf run` (every fault minor) against a bare pyzmq
             DEALER/ROUTER + msgpack round trip between two processes; a pipe ping-pong is the floor
    swap_in  the host's swap-in path (the I/O engine the host picks: native AIO for O_DIRECT,
             host/swapio/aio.py; else the worker threads of host/swapio/threads.py; completions drained per
             wake-up) at depth d against threads doing raw O_DIRECT 4 KiB preadv at the same depth;
             for O_DIRECT the worker threads are measured too
    scale    start-up, host RSS (per guest page, and after 2,000 random faults) and minor-fault
             latency at 64 MiB and at 1 TiB (sparse per-page state: shared/sparse.py)
    sched    the guest scheduler's cost per access (CFS, EEVDF and rr): the check at every
             instruction boundary, plus a park, wake and pick as if every access faulted
             asynchronously, in-process, against the minor-fault p50 of `trap` (same run)
    replay   the guest's cost per access, end to end (generator, MMU check, vCPU loop), when
             replaying a shipped memtrace against the synthetic generators (random, zipf,
             sequential) over as many distinct pages, every page resident (no fault is timed)
"""
from __future__ import annotations

import json
import mmap
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import msgpack
import zmq

from apf.procs import run_bounded, stop_bounded

PAGE = 4096
TRAP_GOAL_RATIO = 1.5           # minor fault p50 / raw ZeroMQ round trip p50, at most
SWAP_IN_GOAL_FRACTION = 0.80    # host swap-in throughput / raw O_DIRECT throughput, at least
SCALE_LATENCY_GOAL_RATIO = 1.2  # minor fault p50 at 1 TiB / at 64 MiB, at most
SCALE_METADATA_GOAL_BYTES = 16  # host RSS growth per guest page, at most
SCALE_STARTUP_GOAL_S = 1.0      # a 1 TiB host ready (host.json written) within this
SCALE_RSS_GOAL_BYTES = 100 << 20   # a 1 TiB host's RSS after the guest's random first touches, at most
SCHED_GOAL_FRACTION = 0.05     # CFS's cost per access / a trap's (minor fault p50), at most
SCHED_BOUNDARIES = 200_000      # instruction boundaries timed per class
SCHED_CYCLES = 20_000           # park, wake and pick cycles timed per class
REPLAY_GOAL_RATIO = 1.10        # trace replay ns per access / the synthetic generators' mean, at most
REPLAY_SYNTHETIC = ("random", "zipf", "sequential")
REPLAY_TRACE = "sqlite-join.apfmt"     # of traces/: the smallest footprint, so the guest stays small
REPLAY_GUEST_MEM = 32 << 20
HOST_READY_BOUND_S = 60.0
STOP_BOUND_S = 15.0
PEER_READY_BOUND_S = 20.0


@dataclass(frozen=True)
class MicroSizes:
    round_trips: int = 5000     # raw ZeroMQ and pipe round trips (after a warm-up)
    trap_trials: int = 3        # alternating ZeroMQ / pipe / minor-fault trials
    minor_faults: int = 2000    # accesses of the minor-fault run (each one a first touch)
    swap_reads: int = 20000     # 4 KiB reads per swap-in throughput trial
    swap_file_mib: int = 256    # file the reads are spread over
    swap_trials: int = 3        # alternating raw / host trials; the median of each is kept
    io_depth: int = 8
    scale_big: int = 1 << 40
    scale_small: int = 64 << 20
    scale_host_mem: int = 64 << 20
    scale_trials: int = 2       # per size, in A B B A order so linear drift cancels
    replay_accesses: int = 20000   # accesses of each replay-cost run
    replay_trials: int = 3      # rounds of the four workloads, each round in a rotated order


QUICK_SIZES = MicroSizes(round_trips=2000, trap_trials=1, minor_faults=1000, swap_reads=6000, swap_file_mib=64,
                         swap_trials=1, scale_trials=1, replay_accesses=5000, replay_trials=1)


def _p50_us(samples_ns: list[int]) -> float:
    return statistics.median(samples_ns) / 1000


def _goal(met: bool) -> str:
    return "met" if met else "missed"


# -- (1) trap overhead ---------------------------------------------------------------------------

def _echo_main() -> None:
    """Entry point of the peer process: `python -c ... zmq ENDPOINT COUNT` or `pipe RFD WFD COUNT`."""
    kind = sys.argv[1]
    if kind == "zmq":
        endpoint, count = sys.argv[2], int(sys.argv[3])
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(endpoint)
        print("ready", flush=True)
        try:
            for _ in range(count):
                route, payload = sock.recv_multipart()
                msg = msgpack.unpackb(payload)
                sock.send_multipart([route, msgpack.packb([msg[0], 17, msg[2], msg[3]])])
        finally:
            sock.close()
            ctx.term()
    else:
        rfd, wfd, count = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
        print("ready", flush=True)
        for _ in range(count):
            os.write(wfd, os.read(rfd, 64))


def _start_peer(args: list[str], pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    peer = subprocess.Popen([sys.executable, "-c", "from apf.microbench import _echo_main; _echo_main()", *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, pass_fds=pass_fds)
    if peer.stdout.readline().strip() != "ready":
        _stop_peer(peer)
        raise RuntimeError("the echo peer process did not start")
    return peer


def _stop_peer(peer: subprocess.Popen) -> None:
    try:
        peer.wait(5)
    except subprocess.TimeoutExpired:
        peer.kill()
        peer.wait(5)
    peer.stdout.close()


def zmq_round_trip_ns(count: int, warmup: int = 200) -> list[int]:
    """Round trips of a TRAP-sized msgpack frame, DEALER to a ROUTER in another process (ipc)."""
    tmp = tempfile.mkdtemp(prefix="apf-micro-")
    endpoint = "ipc://" + os.path.join(tmp, "rt.sock")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    samples: list[int] = []
    peer = None
    try:
        peer = _start_peer(["zmq", endpoint, str(count + warmup)])
        sock.connect(endpoint)
        for seq in range(1, count + warmup + 1):
            start = time.perf_counter_ns()
            sock.send(msgpack.packb([1, 2, seq, 0, seq * PAGE, 1, 0]))
            reply = msgpack.unpackb(sock.recv())
            end = time.perf_counter_ns()
            if reply[2] != seq:
                raise RuntimeError(f"echo answered seq {reply[2]} to {seq}")
            if seq > warmup:
                samples.append(end - start)
    finally:
        sock.close()
        ctx.term()
        if peer is not None:
            _stop_peer(peer)
        shutil.rmtree(tmp, ignore_errors=True)
    return samples


def pipe_round_trip_ns(count: int, warmup: int = 200) -> list[int]:
    """Round trips of the same frame over two pipes between two processes: the floor."""
    to_peer_r, to_peer_w = os.pipe()
    from_peer_r, from_peer_w = os.pipe()
    frame = msgpack.packb([1, 2, 1, 0, PAGE, 1, 0])
    samples: list[int] = []
    try:
        peer = _start_peer(["pipe", str(to_peer_r), str(from_peer_w), str(count + warmup)],
                           pass_fds=(to_peer_r, from_peer_w))
        try:
            for i in range(count + warmup):
                start = time.perf_counter_ns()
                os.write(to_peer_w, frame)
                os.read(from_peer_r, 64)
                end = time.perf_counter_ns()
                if i >= warmup:
                    samples.append(end - start)
        finally:
            _stop_peer(peer)
    finally:
        for fd in (to_peer_r, to_peer_w, from_peer_r, from_peer_w):
            os.close(fd)
    return samples


def _run_report(what: str, timeout_s: float, args: list[str]) -> dict[str, Any]:
    """The report of one quiet `apf run ARGS` bounded by `timeout_s` (its own --timeout, plus a
    margin for the kill). Raises RuntimeError, with the end of its stderr, if it wrote none."""
    tmp = tempfile.mkdtemp(prefix="apf-micro-")
    report_path = os.path.join(tmp, "report.json")
    argv = [sys.executable, "-m", "apf", "run", *args, "--report", report_path, "--quiet",
            "--timeout", f"{timeout_s:g}s"]
    try:
        proc = _run_bounded(argv, timeout_s + 30)
        if not os.path.exists(report_path):
            raise RuntimeError(f"{what} wrote no report: {proc.stderr.strip()[-400:]}")
        with open(report_path, encoding="utf-8") as f:
            return json.load(f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def minor_fault_run(accesses: int, guest_mem: int = 16 << 20, timeout_s: float = 300) -> dict[str, Any]:
    """A real `apf run` where host memory = guest memory and every access is a first touch of a
    new page (sequential), so every fault is minor: its latency is the emulator's trap cost."""
    guest_mem = max(guest_mem, accesses * PAGE)
    report = _run_report("the minor-fault run", timeout_s,
                         ["--guest-mem", str(guest_mem), "--host-mem", str(guest_mem), "--tasks", "1",
                          "--accesses", str(accesses), "--workload", "sequential", "--mode", "sync", "--no-verify"])
    return {"fault_latency_us": report["fault_latency_us"], "faults": report["faults"]["total"],
            "minor": report.get("host_faults", {}).get("minor"), "major": report.get("host_faults", {}).get("major")}


def trap_overhead(sizes: MicroSizes) -> dict[str, Any]:
    """Trials alternate the three measurements, so a burst of load elsewhere hits all of them; the
    median of each over the trials is kept."""
    zmq_p50, pipe_p50, minor_p50, minor_p99 = [], [], [], []
    zmq_all: list[int] = []
    pipe_all: list[int] = []
    minor: dict[str, Any] = {}
    for _ in range(sizes.trap_trials):
        zmq_ns = zmq_round_trip_ns(sizes.round_trips)
        pipe_ns = pipe_round_trip_ns(sizes.round_trips)
        minor = minor_fault_run(sizes.minor_faults)
        zmq_p50.append(_p50_us(zmq_ns))
        pipe_p50.append(_p50_us(pipe_ns))
        minor_p50.append(minor["fault_latency_us"]["p50"])
        minor_p99.append(minor["fault_latency_us"]["p99"])
        zmq_all += zmq_ns
        pipe_all += pipe_ns
    z, p, m = statistics.median(zmq_p50), statistics.median(pipe_p50), statistics.median(minor_p50)
    ratio = m / z if z else float("inf")
    return {
        "minor_fault_p50_us": m, "minor_fault_p99_us": statistics.median(minor_p99),
        "minor_faults": minor["faults"], "host_minor_faults": minor["minor"],
        "zmq_round_trip_p50_us": z, "zmq_round_trip_p99_us": _pct_us(zmq_all, 0.99),
        "pipe_round_trip_p50_us": p, "pipe_round_trip_p99_us": _pct_us(pipe_all, 0.99),
        "trials": {"minor_fault_p50_us": minor_p50, "zmq_round_trip_p50_us": zmq_p50,
                   "pipe_round_trip_p50_us": pipe_p50},
        "ratio_vs_zmq": ratio, "ratio_vs_pipe": m / p if p else float("inf"),
        "goal": f"minor fault p50 <= {TRAP_GOAL_RATIO}x raw ZeroMQ round trip p50",
        "met": ratio <= TRAP_GOAL_RATIO, "status": _goal(ratio <= TRAP_GOAL_RATIO),
    }


def _pct_us(samples_ns: list[int], q: float) -> float:
    ordered = sorted(samples_ns)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] / 1000 if ordered else 0.0


# -- (2) swap-in throughput ----------------------------------------------------------------------

def _fill_file(path: str, mib: int) -> None:
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def raw_direct_reads(path: str, offsets: list[int], depth: int, direct: bool = True) -> float:
    """Pages per second: `depth` threads, each preadv-ing 4 KiB at the next offset into its own
    page-aligned buffer, until every offset has been read once."""
    flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
    fd = os.open(path, flags)
    cursor = iter(range(len(offsets)))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        buf = mmap.mmap(-1, PAGE)
        view = memoryview(buf)
        try:
            while True:
                with lock:
                    i = next(cursor, None)
                if i is None:
                    return
                if os.preadv(fd, [view], offsets[i]) != PAGE:
                    raise OSError("short read")
        except BaseException as exc:   # reported by the caller, not lost in the thread
            errors.append(exc)
        finally:
            view.release()
            buf.close()

    threads = [threading.Thread(target=worker, name=f"raw-io-{i}") for i in range(depth)]
    try:
        start = time.perf_counter_ns()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter_ns() - start
    finally:
        os.close(fd)
    if errors:
        raise RuntimeError(f"raw read failed: {errors[0]!r}")
    return len(offsets) / (elapsed / 1e9)


def host_swap_in(path: str, offsets: list[int], depth: int, direct: bool = True,
                 engine: str = "auto") -> tuple[float, str]:
    """Pages per second, and the engine's name, through the host's own swap-in path: SwapDevice and
    the I/O engine the host would pick (or `engine`) at `depth`, completions taken as the poll loop
    takes them (wait on the eventfd, then drain() the batch)."""
    from shared.chaos import Chaos
    from host.swapio.choice import open_io_engine
    from host.swapio.device import SwapDevice
    from host.swapio.engine import IoOp

    slots = 256
    ram = mmap.mmap(-1, slots * PAGE)
    ram_view = memoryview(ram)
    swap = SwapDevice(path, direct, truncate=False)
    workers = open_io_engine(engine, swap, lambda gfn: ram_view[(gfn % slots) * PAGE:(gfn % slots + 1) * PAGE],
                             depth, 0, Chaos())
    try:
        workers.start()
        start = time.perf_counter_ns()
        for off in offsets:
            workers.submit(IoOp.READ, off // PAGE)
        left = len(offsets)
        while left:
            if not workers.wait(30.0):
                raise RuntimeError("the host's I/O workers stopped reporting completions")
            for done in workers.drain():
                if done.err:
                    raise RuntimeError(f"host swap-in of page {done.gfn} failed: errno {done.err}")
                left -= 1
        elapsed = time.perf_counter_ns() - start
    finally:
        stuck = workers.stop()
        swap.close(unlink=False)
        ram_view.release()
        ram.close()
    if stuck:
        raise RuntimeError(f"I/O workers did not stop: {stuck}")
    return len(offsets) / (elapsed / 1e9), workers.name


def swap_in_throughput(sizes: MicroSizes, directory: str | None = None) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="apf-micro-swap-", dir=directory)
    path = os.path.join(tmp, "swap")
    try:
        _fill_file(path, sizes.swap_file_mib)
        pages = sizes.swap_file_mib * (1 << 20) // PAGE
        rng = random.Random(7)
        results: dict[str, Any] = {"depth": sizes.io_depth, "file_mib": sizes.swap_file_mib,
                                   "reads_per_trial": sizes.swap_reads, "trials": sizes.swap_trials,
                                   "file_dir": os.path.dirname(os.path.abspath(path))}
        for label, depth, direct in (("direct_d1", 1, True), (f"direct_d{sizes.io_depth}", sizes.io_depth, True),
                                     (f"buffered_d{sizes.io_depth}", sizes.io_depth, False)):
            raw, host, threads, engines = [], [], [], set()
            for _ in range(sizes.swap_trials):
                n = sizes.swap_reads if depth > 1 else max(1000, sizes.swap_reads // 4)
                offsets = [rng.randrange(pages) * PAGE for _ in range(n)]
                raw.append(raw_direct_reads(path, offsets, depth, direct))
                pages_per_s, engine = host_swap_in(path, offsets, depth, direct)
                host.append(pages_per_s)
                engines.add(engine)
                if direct:   # the worker threads too: what the host uses with modelled latency
                    threads.append(host_swap_in(path, offsets, depth, direct, engine="threads")[0])
            raw_m, host_m = statistics.median(raw), statistics.median(host)
            results[label] = {"depth": depth, "o_direct": direct, "io_engine": "/".join(sorted(engines)),
                              "raw_pages_per_s": raw_m, "host_pages_per_s": host_m,
                              "fraction_of_raw": host_m / raw_m, "raw_trials": raw, "host_trials": host}
            if threads:
                results[label].update(threads_pages_per_s=statistics.median(threads),
                                      threads_fraction_of_raw=statistics.median(threads) / raw_m,
                                      threads_trials=threads)
        main = results[f"direct_d{sizes.io_depth}"]
        met = main["fraction_of_raw"] >= SWAP_IN_GOAL_FRACTION
        results.update(goal=f"host swap-in >= {SWAP_IN_GOAL_FRACTION:.0%} of raw O_DIRECT at depth {sizes.io_depth}",
                       fraction_of_raw=main["fraction_of_raw"], met=met, status=_goal(met))
        return results
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- (3) scale -----------------------------------------------------------------------------------

def _run_bounded(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    """Run a child to completion; on timeout SIGTERM it (so it can clean up), then SIGKILL."""
    done, timed_out = run_bounded(argv, timeout_s, STOP_BOUND_S)
    if timed_out:
        done.stderr = (done.stderr or "") + f"\nkilled after {timeout_s:g}s"
    return done


def scale_trial(guest_mem: int, host_mem: int, accesses: int) -> dict[str, Any]:
    """Start a host of `guest_mem`; time until host.json; its RSS when ready and after a guest has
    made `accesses` random accesses (first touches: minor faults); the guest's fault latency."""
    import psutil

    from shared import rundir

    parent = tempfile.mkdtemp(prefix="apf-micro-scale-")
    run_dir = os.path.join(parent, "run")
    report_path = os.path.join(parent, "report.json")
    apf = [sys.executable, "-m", "apf"]
    start = time.perf_counter()
    host = subprocess.Popen(apf + ["host", "--run-dir", run_dir, "--guest-mem", str(guest_mem),
                                   "--host-mem", str(host_mem), "--vcpus", "1"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        info = None
        while time.perf_counter() - start < HOST_READY_BOUND_S:
            if host.poll() is not None:
                raise RuntimeError(f"the host exited with status {host.returncode}: {host.stderr.read()[-400:]}")
            if os.path.isdir(run_dir):
                info = rundir.read_host_json(run_dir, missing_ok=True)
                if info:
                    break
            time.sleep(0.005)
        startup_s = time.perf_counter() - start
        if not info:
            raise RuntimeError(f"the host did not become ready within {HOST_READY_BOUND_S:g}s")
        ps = psutil.Process(host.pid)
        time.sleep(0.2)        # let the loop settle so the ready RSS is not mid-allocation
        rss_ready = ps.memory_info().rss
        guest = _run_bounded(apf + ["guest", "--run-dir", run_dir, "--vcpus", "1", "--tasks", "1",
                                    "--accesses", str(accesses), "--workload", "random", "--no-verify",
                                    "--report", report_path], 300)
        if guest.returncode != 0 or not os.path.exists(report_path):
            raise RuntimeError(f"the scale guest failed ({guest.returncode}): {guest.stderr.strip()[-400:]}")
        rss_after = ps.memory_info().rss
        with open(report_path, encoding="utf-8") as f:
            report = json.load(f)
    finally:
        if host.poll() is None:
            stop_bounded([host], STOP_BOUND_S)
        host.stderr.close()
        shutil.rmtree(parent, ignore_errors=True)
    return {"guest_mem": guest_mem, "guest_pages": guest_mem // PAGE, "startup_s": startup_s,
            "host_rss_ready": rss_ready, "host_rss_after": rss_after,
            "fault_latency_us": report["fault_latency_us"], "faults": report["faults"]["total"],
            "guest_rss": report["guest"]["rss_bytes"]}


def scale(sizes: MicroSizes, accesses: int = 2000) -> dict[str, Any]:
    small, big = sizes.scale_small, sizes.scale_big
    host_mem = min(sizes.scale_host_mem, small)
    order = [small, big, big, small] if sizes.scale_trials > 1 else [small, big]
    trials: dict[int, list[dict[str, Any]]] = {small: [], big: []}
    for mem in order:
        trials[mem].append(scale_trial(mem, host_mem, accesses))

    def med(mem: int, key: Callable[[dict], float]) -> float:
        return statistics.median(key(t) for t in trials[mem])

    p50 = {m: med(m, lambda t: t["fault_latency_us"]["p50"]) for m in trials}
    ready = {m: med(m, lambda t: t["host_rss_ready"]) for m in trials}
    after = {m: med(m, lambda t: t["host_rss_after"]) for m in trials}
    startup = {m: med(m, lambda t: t["startup_s"]) for m in trials}
    extra_pages = (big - small) // PAGE
    per_page_ready = (ready[big] - ready[small]) / extra_pages
    per_page_after = (after[big] - after[small]) / extra_pages
    latency_ratio = p50[big] / p50[small]
    goals = {
        "latency": {"goal": f"minor fault p50 at {_mib(big)} <= {SCALE_LATENCY_GOAL_RATIO}x at {_mib(small)}",
                    "value": latency_ratio, "met": latency_ratio <= SCALE_LATENCY_GOAL_RATIO},
        "metadata": {"goal": f"host RSS growth <= {SCALE_METADATA_GOAL_BYTES} bytes per guest page",
                     "value": max(per_page_ready, per_page_after),
                     "met": max(per_page_ready, per_page_after) <= SCALE_METADATA_GOAL_BYTES},
        "startup": {"goal": f"a {_mib(big)} host ready within {SCALE_STARTUP_GOAL_S:g} s",
                    "value": startup[big], "met": startup[big] <= SCALE_STARTUP_GOAL_S},
        "rss": {"goal": f"a {_mib(big)} host's RSS after {accesses} random faults <= "
                        f"{SCALE_RSS_GOAL_BYTES >> 20} MiB",
                "value": after[big], "met": after[big] <= SCALE_RSS_GOAL_BYTES},
    }
    for g in goals.values():
        g["status"] = _goal(g["met"])
    return {
        "small": {"guest_mem": small, "fault_p50_us": p50[small], "host_rss_ready": ready[small],
                  "host_rss_after": after[small], "startup_s": startup[small]},
        "big": {"guest_mem": big, "fault_p50_us": p50[big], "host_rss_ready": ready[big],
                "host_rss_after": after[big], "startup_s": startup[big]},
        "host_mem": host_mem, "accesses": accesses, "trials": {_mib(m): t for m, t in trials.items()},
        "latency_ratio": latency_ratio, "metadata_bytes_per_page_ready": per_page_ready,
        "metadata_bytes_per_page_after": per_page_after, "goals": goals,
        "met": all(g["met"] for g in goals.values()),
    }


# -- replay cost -----------------------------------------------------------------------------------

def replay_run(workload: str, accesses: int, working_set: int | None = None, guest_mem: int = REPLAY_GUEST_MEM,
               timeout_s: float = 300) -> dict[str, Any]:
    """One real `apf run` of `accesses` accesses of `workload` by 1 task, host memory = guest
    memory, prefilled, no think and no trace compute (`--ns-per-insn 0`), no verification: the
    workload phase's wall time per access (ns) is the guest's own cost of an access."""
    args = ["--guest-mem", str(guest_mem), "--host-mem", str(guest_mem), "--tasks", "1", "--accesses", str(accesses),
            "--workload", workload, "--think", "0ns", "--ns-per-insn", "0", "--prefill", "--mode", "sync", "--no-verify"]
    if working_set is not None:
        args += ["--working-set", str(working_set)]
    report = _run_report(f"the replay-cost run ({workload})", timeout_s, args)
    return {"ns_per_access": report["wall_s"] * 1e9 / accesses, "faults": report["faults"]["total"],
            "pages_touched": report.get("pages_touched")}


def replay_cost(sizes: MicroSizes, trace: str | None = None) -> dict[str, Any]:
    """Replay of `trace` (default traces/REPLAY_TRACE) against each synthetic generator, per access.
    The trace runs first to learn how many distinct pages it touches; the generators then get a
    working set of as many pages, so locality does not favour either side. Each round runs the four
    workloads in a rotated order; the median of each over the rounds is kept."""
    from apf.bench.traces import TRACES_DIR

    path = trace or os.path.join(TRACES_DIR, REPLAY_TRACE)
    workload = f"trace:{path}"
    first = replay_run(workload, sizes.replay_accesses)
    working_set = max(1, first["pages_touched"] or 1) * PAGE
    names = (workload,) + REPLAY_SYNTHETIC
    samples: dict[str, list[float]] = {w: [] for w in names}
    faults = 0
    for r in range(sizes.replay_trials):
        for w in names[r % len(names):] + names[:r % len(names)]:
            run = first if (r == 0 and w == workload) else replay_run(
                w, sizes.replay_accesses, None if w == workload else working_set)
            samples[w].append(run["ns_per_access"])
            faults += run["faults"]
    med = {w: statistics.median(v) for w, v in samples.items()}
    synthetic = statistics.mean(med[w] for w in REPLAY_SYNTHETIC)
    ratio = med[workload] / synthetic
    return {
        "trace": os.path.basename(path), "accesses": sizes.replay_accesses, "trials": sizes.replay_trials,
        "working_set_pages": working_set // PAGE, "faults": faults,
        "trace_ns_per_access": med[workload], "synthetic_ns_per_access": {w: med[w] for w in REPLAY_SYNTHETIC},
        "synthetic_mean_ns_per_access": synthetic, "ratio": ratio,
        "ratio_vs": {w: med[workload] / med[w] for w in REPLAY_SYNTHETIC},
        "samples_ns_per_access": {("trace" if w == workload else w): v for w, v in samples.items()},
        "goal": f"trace replay ns per access <= {REPLAY_GOAL_RATIO}x the synthetic generators' mean",
        "met": ratio <= REPLAY_GOAL_RATIO, "status": _goal(ratio <= REPLAY_GOAL_RATIO),
    }


def _mib(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n >> 20} MiB"


# -- the guest scheduler ------------------------------------------------------------------------------

def _sched_ns(policy: str, boundaries: int, cycles: int) -> tuple[float, float]:
    """(ns per instruction-boundary check, ns per park + wake + pick) of `policy` with four tasks
    on one vCPU, one of them running."""
    from guest.scheduler import Scheduler, Task
    from guest.workload import compute_stream

    tasks = [Task(i, f"t{i}", compute_stream(1 << 40), compute=True) for i in range(4)]
    sched = Scheduler(1, [("workload", lambda: tasks)], policy)
    try:
        sched.advance()
        task = sched.pick(0)
        start = time.perf_counter_ns()
        for _ in range(boundaries):
            if sched.preempt_due(0, task):
                task = sched.pick(0)
        boundary = (time.perf_counter_ns() - start) / boundaries
        start = time.perf_counter_ns()
        for i in range(cycles):
            sched.park(task, i + 1)
            sched.wake(task, 0)
            task = sched.pick(0)
        cycle = (time.perf_counter_ns() - start) / cycles
    finally:
        sched.close()
    return boundary, cycle


def sched_cost(trap_p50_us: float | None, boundaries: int = SCHED_BOUNDARIES,
               cycles: int = SCHED_CYCLES) -> dict[str, Any]:
    """Each class's cost per access, worst case (every access a boundary and an asynchronous
    fault: park, wake, pick), against `trap_p50_us` (the trap benchmark's minor-fault p50, µs)."""
    per_class = {}
    for policy in ("cfs", "eevdf", "rr"):
        boundary, cycle = _sched_ns(policy, boundaries, cycles)
        per_class[policy] = {"boundary_ns": boundary, "park_wake_pick_ns": cycle, "per_access_ns": boundary + cycle}
    cfs = per_class["cfs"]["per_access_ns"]
    fraction = cfs / (trap_p50_us * 1000) if trap_p50_us else None
    met = fraction is not None and fraction <= SCHED_GOAL_FRACTION
    return {"classes": per_class, "trap_p50_us": trap_p50_us, "fraction_of_trap": fraction,
            "goal": f"CFS per access <= {SCHED_GOAL_FRACTION:.0%} of a trap", "met": met, "status": _goal(met)}


# -- all of them ----------------------------------------------------------------------------------

def run_all(sizes: MicroSizes, progress: Callable[[str], None] = lambda step: None) -> dict[str, Any]:
    """Every micro-benchmark; one that fails is reported with its error, the others still run."""
    out: dict[str, Any] = {}
    for name, fn in (("trap", lambda: trap_overhead(sizes)), ("swap_in", lambda: swap_in_throughput(sizes)),
                     ("scale", lambda: scale(sizes, accesses=sizes.minor_faults)),
                     ("sched", lambda: sched_cost(out.get("trap", {}).get("minor_fault_p50_us"))),
                     ("replay", lambda: replay_cost(sizes))):
        progress(name)
        try:
            out[name] = fn()
        except Exception as exc:   # a broken micro-benchmark must not lose the sweep's results
            out[name] = {"error": f"{type(exc).__name__}: {exc}", "met": False, "status": "error"}
    return out
