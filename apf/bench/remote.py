"""`apf bench --preset remote-memory`: what a Redis swap costs per page, and where APF pays on it.

It starts its own redis-server (loopback, a free port, no persistence; stopped at the end) and
measures, in one run so that every ratio compares numbers of the same moment:

1. the limit: `redis-benchmark -P 8 -d 4096` GET on one connection and on 50 (redis-benchmark's
   default), the C client's pipelined throughput on this machine;
2. the host's pipelined swap-in throughput at depth 8: the RemoteSwap and its engine
   (host/swapio/remote_io.py), reads submitted at once and completions taken as the poll loop
   takes them, as `apf bench --micro` measures the file engine;
3. one swap-in's latency at depth 1 against a raw redis-py GET of a 4 KiB value (p50, p99);
4. `apf run` on a local file, on local Redis, and on Redis with `--swap-latency` added as the
   network (one machine has no network to delay: the modelled delay stands in for one), in sync
   and async mode at 1 and 8 tasks.

Results go to OUT/remote-memory.json and OUT/remote-memory.md. Raises BenchError when
redis-server or redis-benchmark is missing.
"""
from __future__ import annotations

import json
import mmap
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from protocol.errors import BenchError
from protocol.messages import PAGE_SIZE

START_BOUND_S = 10.0
DEPTH = 8
NETWORK_DELAY_NS = 200_000     # the modelled network round trip of the "remote" back-end


class _Server:
    """A throw-away redis-server on a free loopback port."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None or shutil.which("redis-benchmark") is None:
            raise BenchError("--preset remote-memory needs redis-server and redis-benchmark "
                             "(apt-get install redis-server redis-tools)")
        self.dir = tempfile.mkdtemp(prefix="apf-bench-redis-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.dir, "--logfile", "redis.log"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis
        deadline = time.monotonic() + START_BOUND_S
        while True:
            try:
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise BenchError("redis-server did not start") from None
                time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_benchmark(port: int, requests: int, clients: int) -> float:
    """GETs per second of `redis-benchmark -P 8 -d 4096 -c CLIENTS` (a SET first fills the key)."""
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set,get", "-P", str(DEPTH), "-d",
                          str(PAGE_SIZE), "-n", str(requests), "-c", str(clients), "--csv"],
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    for line in out.stdout.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if cells and cells[0] == "GET":
            return float(cells[1])
    raise BenchError(f"redis-benchmark gave no GET figure: {out.stdout[-300:]} {out.stderr[-300:]}")


def _engine(url: str, slots: int, depth: int):
    from host.swapio.endpoint import parse_endpoint
    from host.swapio.remote import RemoteSwap
    from host.swapio.remote_io import RedisEngine
    ram = mmap.mmap(-1, slots * PAGE_SIZE)
    view = memoryview(ram)
    swap = RemoteSwap(parse_endpoint(url), slots, 5.0)
    engine = RedisEngine(swap, lambda gfn: view[gfn * PAGE_SIZE:(gfn + 1) * PAGE_SIZE], depth)
    engine.start()
    return ram, view, swap, engine


def _complete(engine, n: int) -> list[int]:
    """Wait for `n` completions as the poll loop does; their device times (ns)."""
    times: list[int] = []
    while len(times) < n:
        if not engine.wait(10.0):
            raise BenchError("the Redis engine stopped reporting completions")
        for done in engine.drain():
            if done.err:
                raise BenchError(f"swap I/O of page {done.gfn} failed: {os.strerror(done.err)}")
            times.append(done.end_ns - done.start_ns)
    return times


def swap_in_figures(url: str, reads: int, slots: int = 4096) -> dict[str, Any]:
    """The host's pipelined swap-in throughput at depth 8 (pages/s), and the p50/p99 (µs) of one
    swap-in at depth 1 and of a raw client GET."""
    import redis

    from host.swapio.engine import IoOp
    out: dict[str, Any] = {}
    for depth in (DEPTH, 1):
        ram, view, swap, engine = _engine(url, slots, depth)
        try:
            for gfn in range(slots):
                view[gfn * PAGE_SIZE:gfn * PAGE_SIZE + 8] = gfn.to_bytes(8, "little")
                engine.submit(IoOp.WRITE, gfn)
            _complete(engine, slots)
            n = reads if depth > 1 else reads // 4
            start = time.perf_counter_ns()
            for i in range(n):
                engine.submit(IoOp.READ, (i * 7919) % slots)
            times = _complete(engine, n)
            elapsed = time.perf_counter_ns() - start
        finally:
            engine.stop()
            swap.close()
            view.release()
            ram.close()
        if depth > 1:
            out["swap_in_pages_per_s"] = n / (elapsed / 1e9)
        else:
            times.sort()
            out["swap_in_p50_us"] = times[len(times) // 2] / 1000
            out["swap_in_p99_us"] = times[int(len(times) * 0.99)] / 1000
    client = redis.Redis.from_url(url)
    client.set("apf-bench:page", os.urandom(PAGE_SIZE))
    lat = []
    for _ in range(reads // 4):
        t = time.perf_counter_ns()
        client.get("apf-bench:page")
        lat.append(time.perf_counter_ns() - t)
    client.delete("apf-bench:page")
    lat.sort()
    out["raw_get_p50_us"] = lat[len(lat) // 2] / 1000
    out["raw_get_p99_us"] = lat[int(len(lat) * 0.99)] / 1000
    return out


def apf_run(swap: list[str], mode: str, tasks: int, quick: bool, out: str) -> dict[str, Any]:
    """One `apf run` (prefill not timed, no verification): workload wall time and swap figures."""
    accesses = 600 if quick else 2000
    report = os.path.join(out, "runs", f"remote-{'-'.join(swap).replace('/', '_').replace(':', '_')}-{mode}-t{tasks}.json")
    argv = [sys.executable, "-m", "apf", "run", "--guest-mem", "32MiB", "--host-mem", "8MiB", "--tasks", str(tasks),
            "--accesses", str(max(1, accesses // tasks)), "--think", "200us", "--prefill", "--no-verify",
            "--mode", mode, "--report", report, "--quiet", *swap]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise BenchError(f"apf run {' '.join(argv[4:])} failed: {proc.stderr.strip()[-400:]}")
    with open(report, encoding="utf-8") as f:
        r = json.load(f)
    return {"wall_s": r["wall_s"], "swap_in_p50_us": r["swap"]["swap_in_us"]["p50"],
            "swap_in_p99_us": r["swap"]["swap_in_us"]["p99"], "reads": r["swap"]["reads"]}


def run_remote(out: str, quick: bool) -> dict[str, Any]:
    """The whole preset into `out` (module docstring); returns the results."""
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    server = _Server()
    try:
        reads = 6000 if quick else 20000
        results: dict[str, Any] = {"preset": "remote-memory", "depth": DEPTH, "started_unix": time.time(),
                                   "redis_server": subprocess.run(["redis-server", "--version"], capture_output=True,
                                                                  text=True, timeout=10).stdout.strip()}
        results["redis_benchmark_P8_c1_gets_per_s"] = redis_benchmark(server.port, reads * 10, 1)
        results["redis_benchmark_P8_c50_gets_per_s"] = redis_benchmark(server.port, reads * 10, 50)
        figures = [swap_in_figures(server.url, reads) for _ in range(1 if quick else 3)]
        for key in figures[0]:
            results[key] = statistics.median(f[key] for f in figures)
        results["swap_in_vs_redis_benchmark_c1"] = results["swap_in_pages_per_s"] / results["redis_benchmark_P8_c1_gets_per_s"]
        backends = {"file": [], "redis": ["--swap", server.url],
                    "redis+200us": ["--swap", server.url, "--swap-latency", f"{NETWORK_DELAY_NS}ns"]}
        runs = []
        for name, swap in backends.items():
            for tasks in (1, 8):
                row: dict[str, Any] = {"backend": name, "tasks": tasks}
                for mode in ("sync", "async"):
                    row[mode] = apf_run(swap, mode, tasks, quick, out)
                row["async_vs_sync"] = row["async"]["wall_s"] / row["sync"]["wall_s"]
                runs.append(row)
        results["runs"] = runs
    finally:
        server.stop()
    with open(os.path.join(out, "remote-memory.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out, "remote-memory.md"), "w", encoding="utf-8") as f:
        f.write(markdown(results))
    return results


def markdown(r: dict[str, Any]) -> str:
    """The results as the tables BENCHMARKS.md shows."""
    lines = [f"Redis: {r['redis_server']}", "",
             "| pipelined 4 KiB GETs, depth 8 | per second | vs redis-benchmark -c 1 |", "|---|---:|---:|",
             f"| redis-benchmark -P 8, 1 connection | {r['redis_benchmark_P8_c1_gets_per_s']:,.0f} | 100 % |",
             f"| redis-benchmark -P 8, 50 connections | {r['redis_benchmark_P8_c50_gets_per_s']:,.0f} | "
             f"{r['redis_benchmark_P8_c50_gets_per_s'] / r['redis_benchmark_P8_c1_gets_per_s']:.0%} |",
             f"| host swap-in (RemoteSwap + engine, 1 connection) | {r['swap_in_pages_per_s']:,.0f} | "
             f"{r['swap_in_vs_redis_benchmark_c1']:.0%} |", "",
             "| one 4 KiB read, depth 1 | p50 µs | p99 µs |", "|---|---:|---:|",
             f"| raw redis-py GET | {r['raw_get_p50_us']:.0f} | {r['raw_get_p99_us']:.0f} |",
             f"| host swap-in (submit to completion) | {r['swap_in_p50_us']:.0f} | {r['swap_in_p99_us']:.0f} |", "",
             "| swap | tasks | sync wall s | async wall s | async / sync | swap-in p50 µs (sync) |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in r["runs"]:
        lines.append(f"| {row['backend']} | {row['tasks']} | {row['sync']['wall_s']:.2f} | {row['async']['wall_s']:.2f} "
                     f"| {row['async_vs_sync']:.2f} | {row['sync']['swap_in_p50_us']:.0f} |")
    return "\n".join(lines) + "\n"
