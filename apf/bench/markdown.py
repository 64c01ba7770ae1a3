"""results.md of `apf bench`: the tables of results.json, in Markdown.

A section for each part of the benchmark that ran: the sweep (speedup, adaptive and efficiency
pivots, every point, the verified and traced runs, the plots), the published scenarios and the
micro-benchmarks. Missing figures print as "–", so an older results.json still renders.
"""
from __future__ import annotations

from typing import Any, Callable

from apf.bench.plan import ADAPTIVE, latency_label
from apf.bench.plan import number as _f
from shared.units import format_duration_ns, format_size

PLOTS = (("speedup.png", "Speedup"), ("fault_latency_cdf.png", "Fault latency CDF"), ("timeline.png", "vCPU timeline"))


def markdown(results: dict[str, Any]) -> str:
    """results.md from a results.json dict: the command and machine, then the sweep, presets and
    micro sections that are in it. Raises KeyError when "machine" or "command" is missing, or
    "plan" while there is a sweep."""
    out = _header(results)
    if results.get("sweep"):
        out += _sweep_section(results)
    if results.get("presets"):
        out += _presets_section(results)
    if results.get("micro"):
        out += _micro_section(results["micro"])
    if results.get("traces"):
        from apf.bench.traces import markdown_section
        out += markdown_section(results["traces"])
    if results.get("scale-check"):
        from apf.bench.realscale import markdown_scale_check
        out += markdown_scale_check(results["scale-check"])
    if results.get("real-scale"):
        from apf.bench.realscale import markdown_real_scale
        out += markdown_real_scale(results["real-scale"])
    if results.get("haltpoll"):
        from apf.bench.haltpoll import markdown_section as haltpoll_section
        out += haltpoll_section(results["haltpoll"])
    return "\n".join(out) + "\n"


# -- cells and tables ----------------------------------------------------------------------------



def _mib_of(n: float | None) -> str:
    return _f(None if n is None else n / (1 << 20), ".0f")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1f} %"


def _cpu(res: dict[str, Any] | None) -> float | None:
    return None if not res else res.get("cpu_user_s", 0) + res.get("cpu_system_s", 0)


def _wall_spread(row: dict[str, Any]) -> str:
    return f"{_f(row.get('wall_min_s'))}–{_f(row.get('wall_max_s'))}"


def _runs_ok(row: dict[str, Any]) -> str:
    return f"{row['repeats_ok']}/{row['repeats']}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def _pivot(rows: list[dict[str, Any]], mode: str, value: Callable[[dict], str]) -> list[str]:
    """A latency x tasks table of `value` of the rows of `mode`."""
    lats = sorted({r["swap_latency_ns"] for r in rows})
    tasks = sorted({r["tasks"] for r in rows})
    by = {(r["swap_latency_ns"], r["tasks"]): r for r in rows if r["mode"] == mode}
    return _table(["swap latency \\ tasks", *map(str, tasks)],
                  [[latency_label(lat), *(value(by[(lat, t)]) if (lat, t) in by else "–" for t in tasks)]
                   for lat in lats])


def _in_mode_order(results: dict[str, Any], rows: dict[str, Any]) -> list[tuple[str, Any]]:
    """results.json is written with sorted keys; tables list modes in the order they were run."""
    order = list(results.get("plan", {}).get("modes", [])) + sorted(rows)
    return [(m, rows[m]) for m in dict.fromkeys(order) if m in rows]


# -- header --------------------------------------------------------------------------------------

def _header(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    out = ["# apf bench results", "",
           f"Command: `{results['command']}`  ",
           f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_bytes'] / (1 << 30):.1f} GiB, "
           f"Python {m['python']}, Linux {m['kernel']}  ",
           f"Duration: {results.get('duration_s', 0):.0f} s; complete: {'yes' if results.get('complete') else 'NO'}; "
           f"load average at start {m['loadavg_at_start'][0]:.2f}, at end {m.get('loadavg_at_end', [0])[0]:.2f}"]
    load = m.get("loadavg_1min_during_runs")
    if load:
        out[-1] += f"; 1-min load before each run: min {load['min']:.2f}, median {load['median']:.2f}, max {load['max']:.2f}"
    out.append("")
    return out


# -- sweep ---------------------------------------------------------------------------------------

def _sweep_section(results: dict[str, Any]) -> list[str]:
    sweep = results["sweep"]
    rows = sweep["rows"]
    return (_sweep_intro(results) + _speedup_pivots(results, rows) + _adaptive_pivots(rows)
            + _efficiency_pivots(results, rows) + _every_point(rows) + _failed_runs(rows)
            + _verified_runs(sweep["verified"]) + _traced_runs(sweep["traced"]) + _plot_links(results))


def _sweep_intro(results: dict[str, Any]) -> list[str]:
    plan = results["plan"]["sweep"]
    w = plan["workload"]
    return ["## Sweep", "",
            f"Workload: {format_size(w['guest_mem'])} guest, {format_size(w['host_mem'])} host memory, "
            f"{w['vcpus']} vCPU, `--workload {w['pattern']} --seed {w['seed']} --prefill`, think "
            f"{format_duration_ns(w['think_ns'])}, io-depth {w['io_depth']}, {plan['total_accesses']} accesses per "
            f"point split over its tasks; {plan['repeat']} run(s) per point, median shown. "
            "Times are the workload phase of the guest report.", "",
            f"Ideal: `{results['ideal_formula']}`.", ""]


def _speedup_pivots(results: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for mode in [m for m in results["plan"]["modes"] if m != "sync"]:
        out += [f"### Speedup of {mode} over sync (sync wall / {mode} wall; > 1 is faster)", "",
                *_pivot(rows, mode, lambda r: _f(r.get("speedup"), ".2f")), ""]
    return out


def _adaptive_pivots(rows: list[dict[str, Any]]) -> list[str]:
    if not any(r["mode"] == ADAPTIVE for r in rows):
        return []
    return ["### Adaptive: slower than the better of sync and async by (%)", "",
            "Medians over repeats compared:", "",
            *_pivot(rows, ADAPTIVE, lambda r: _f(r.get("slower_than_best_pct"), "+.1f")), "",
            "Paired: the median over repeats of adaptive / the better mode of the same repeat "
            "(the modes of a repeat run back to back):", "",
            *_pivot(rows, ADAPTIVE, lambda r: _f(r.get("slower_than_best_paired_pct"), "+.1f")), "",
            "Paired against the better mode (the one with the better median) in every repeat, "
            "without the bias of taking each repeat's faster mode:", "",
            *_pivot(rows, ADAPTIVE, lambda r: _f(r.get("slower_than_better_mode_paired_pct"), "+.1f")), ""]


def _efficiency_pivots(results: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for mode in results["plan"]["modes"]:
        out += [f"### Efficiency of {mode} (ideal / wall)", "",
                *_pivot(rows, mode, lambda r: _f(r.get("efficiency"), ".2f")), ""]
    return out


def _every_point(rows: list[dict[str, Any]]) -> list[str]:
    out = ["### Every point", ""]
    out += _table(["mode", "swap latency", "tasks", "wall s", "min–max s", "speedup", "ideal s", "efficiency",
                   "stall s", "idle s", "fault p50 µs", "fault p99 µs", "swap-ins", "write-backs",
                   "clean drops", "read ahead (hits)", "write-protect", "host RSS MiB",
                   "host CPU s", "guest RSS MiB", "guest CPU s", "runs ok"],
                  [[r["mode"], r["swap_latency"], str(r["tasks"]), _f(r.get("wall_s")),
                    _wall_spread(r), _f(r.get("speedup"), ".2f"),
                    _f(r.get("ideal_s")), _f(r.get("efficiency"), ".2f"), _f(r.get("vcpu_stall_s")),
                    _f(r.get("vcpu_idle_s")), _f(r.get("fault_latency_us", {}).get("p50"), ".0f"),
                    _f(r.get("fault_latency_us", {}).get("p99"), ".0f"), _f(r.get("major_faults"), ".0f"),
                    _f(r.get("write_backs"), ".0f"), _f(r.get("clean_drops"), ".0f"),
                    f"{_f(r.get('readahead_pages'), '.0f')} ({_f(r.get('readahead_hits'), '.0f')})",
                    _f(r.get("write_protect"), ".0f"), _mib_of(r.get("host", {}).get("rss_bytes")),
                    _f(_cpu(r.get("host")), ".2f"), _mib_of(r.get("guest", {}).get("rss_bytes")),
                    _f(_cpu(r.get("guest")), ".2f"), _runs_ok(r)] for r in rows])
    return out + ["", "Daemon RSS and CPU are whole-process figures (start-up and prefill included). Swap-ins "
                  "count the pages read, read-ahead ones included; \"read ahead (hits)\" is the pages read ahead "
                  "and the faults that found one.", ""]


def _failed_runs(rows: list[dict[str, Any]]) -> list[str]:
    errors = [(r["mode"], r["swap_latency"], r["tasks"], e) for r in rows for e in r["errors"]]
    if not errors:
        return []
    return ["Failed runs:", "", *(f"- {m} {l} x{t}: {e}" for m, l, t, e in errors), ""]


def _verified_runs(verified: list[dict[str, Any]]) -> list[str]:
    out = ["### Verified runs (read back every written page)", ""]
    out += _table(["mode", "swap latency", "tasks", "ok", "pages written", "pages verified", "pages corrupt"],
                  [[v["mode"], latency_label(v["swap_latency_ns"]), str(v["tasks"]), "yes" if v["ok"] else
                    f"NO ({v['error']})", str(v["pages_written"]), str(v["pages_verified"]),
                    str(v["pages_corrupt"])] for v in verified])
    return out


def _traced_runs(traced: list[dict[str, Any]]) -> list[str]:
    out = ["", "### Per-fault latency of the traced runs (guest \"stall\" spans, µs)", ""]
    out += _table(["mode", "swap latency", "tasks", "faults", "p50", "p90", "p99", "max"],
                  [[t["mode"], latency_label(t["swap_latency_ns"]), str(t["tasks"]), *_stall_cells(t)]
                   for t in traced])
    return out + [""]


def _stall_cells(traced: dict[str, Any]) -> list[str]:
    summary = traced.get("stall_us_summary")
    if not summary:
        return [f"failed: {traced.get('error')}", "", "", "", ""]
    return [str(summary["count"])] + [_f(summary[k], ".0f") for k in ("p50", "p90", "p99", "max")]


def _plot_links(results: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for png, title in PLOTS:
        if png in results.get("plots", []):
            out += [f"![{title}]({png})", ""]
    return out


# -- published scenarios -------------------------------------------------------------------------

def _presets_section(results: dict[str, Any]) -> list[str]:
    out = ["## Published scenarios", ""]
    for p in results["presets"]:
        out += _preset_intro(p)
        out += _table(["mode", "run time s (median)", "min–max s", "change vs sync", "swap-ins",
                       "write-backs", "slower than best", "(paired)", "(paired, better mode)", "runs ok"],
                      [[mode, _f(r.get("wall_s")), _wall_spread(r),
                        "(baseline)" if mode == "sync" else _pct(r.get("change_vs_sync_pct")),
                        _f(r.get("major_faults"), ".0f"), _f(r.get("write_backs"), ".0f"),
                        _f(r.get("slower_than_best_pct"), "+.1f"), _f(r.get("slower_than_best_paired_pct"), "+.1f"),
                        _f(r.get("slower_than_better_mode_paired_pct"), "+.1f"),
                        _runs_ok(r)] for mode, r in _in_mode_order(results, p["modes"])])
        out.append("")
    return out


def _preset_intro(preset: dict[str, Any]) -> list[str]:
    c = preset["config"]
    compute = (f", {c['compute_tasks']} compute task(s) x {format_duration_ns(c['compute_work_ns'])} of CPU work"
               if c.get("compute_tasks") else "")
    return [f"### {preset['name']}: {preset['title']}", "",
            f"Published: {preset['published']}.  ",
            f"Here: {format_size(c['guest_mem'])} guest, {format_size(c['host_mem'])} host, {c['vcpus']} vCPU, "
            f"{c['tasks']} memory task(s) x {c['accesses_per_task']} accesses, think "
            f"{format_duration_ns(c['think_ns'])}{compute}, swap latency {latency_label(c['swap_latency_ns'])}.  ",
            f"Approximation: {preset['approximation']}", ""]


# -- micro-benchmarks ----------------------------------------------------------------------------

def _micro_section(micro: dict[str, Any]) -> list[str]:
    out = ["## Micro-benchmarks (each against a limit measured in the same run)", ""]
    out += _table(["benchmark", "measured", "limit (same run)", "ratio", "goal", "status"], _micro_rows(micro))
    return out + [""]


def _micro_rows(micro: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    for key, name, result_rows in (("trap", "trap overhead", _trap_rows),
                                   ("swap_in", "swap-in throughput", _swap_in_rows),
                                   ("scale", "scale", _scale_rows),
                                   ("sched", "guest scheduler", _sched_rows),
                                   ("replay", "replay cost", _replay_rows)):
        result = micro.get(key, {})
        if "error" in result:
            rows.append([name, result["error"], "", "", "", "error"])
        elif result:
            rows += result_rows(result)
    return rows


def _trap_rows(t: dict[str, Any]) -> list[list[str]]:
    return [["trap overhead: minor fault p50 (`apf run`, host-mem = guest-mem)",
             f"{t['minor_fault_p50_us']:.1f} µs",
             f"ZeroMQ DEALER/ROUTER + msgpack round trip p50 {t['zmq_round_trip_p50_us']:.1f} µs "
             f"(pipe ping-pong floor {t['pipe_round_trip_p50_us']:.1f} µs)",
             f"{t['ratio_vs_zmq']:.2f}x ZeroMQ ({t['ratio_vs_pipe']:.0f}x pipe)", t["goal"], t["status"]]]


def _swap_in_rows(s: dict[str, Any]) -> list[list[str]]:
    """One row per depth and medium measured (O_DIRECT first), the goal on the main one; a second
    row with the worker threads where the host picked another engine."""
    rows: list[list[str]] = []
    for key in sorted((k for k in s if k.startswith(("direct_d", "buffered_d"))),
                      key=lambda k: (k.startswith("buffered"), s[k]["depth"])):
        v = s[key]
        main = key == f"direct_d{s['depth']}"
        medium = "O_DIRECT" if v["o_direct"] else "page cache"
        rows.append([f"swap-in throughput, depth {v['depth']}, {medium} (host, {v.get('io_engine', 'threads')})",
                     f"{v['host_pages_per_s']:,.0f} pages/s",
                     f"raw threaded preadv {v['raw_pages_per_s']:,.0f} pages/s", f"{v['fraction_of_raw']:.0%} of raw",
                     s["goal"] if main else "(for reference)", s["status"] if main else "–"])
        if "threads_pages_per_s" in v and v.get("io_engine") != "threads":
            rows.append([f"swap-in throughput, depth {v['depth']}, {medium} (host, worker threads)",
                         f"{v['threads_pages_per_s']:,.0f} pages/s", "the same raw figure",
                         f"{v['threads_fraction_of_raw']:.0%} of raw", "(for reference)", "–"])
    return rows


def _sched_rows(r: dict[str, Any]) -> list[list[str]]:
    c = r["classes"]
    frac = "–" if r.get("fraction_of_trap") is None else f"{r['fraction_of_trap']:.1%} of a trap"
    return [["guest scheduler: CFS per access (boundary check + park, wake, pick)",
             f"{c['cfs']['per_access_ns'] / 1000:.2f} µs (EEVDF {c['eevdf']['per_access_ns'] / 1000:.2f}, "
             f"rr {c['rr']['per_access_ns'] / 1000:.2f})",
             f"minor fault p50 {r['trap_p50_us'] or 0:.1f} µs", frac, r["goal"], r["status"]]]


def _replay_rows(r: dict[str, Any]) -> list[list[str]]:
    synthetic = ", ".join(f"{w} {ns / 1000:.1f}" for w, ns in r["synthetic_ns_per_access"].items())
    return [[f"replay cost: `trace:{r['trace']}`, per access (`apf run`, every page resident, "
             f"{r['accesses']:,} accesses, {r['working_set_pages']} pages)",
             f"{r['trace_ns_per_access'] / 1000:.1f} µs",
             f"synthetic generators over as many pages: {synthetic} µs (mean "
             f"{r['synthetic_mean_ns_per_access'] / 1000:.1f})",
             f"{r['ratio']:.2f}x", r["goal"], r["status"]]]


def _scale_rows(c: dict[str, Any]) -> list[list[str]]:
    g = c["goals"]
    small, big = c["small"], c["big"]
    return [[f"scale: minor fault p50 at {format_size(big['guest_mem'])}", f"{big['fault_p50_us']:.1f} µs",
             f"at {format_size(small['guest_mem'])}: {small['fault_p50_us']:.1f} µs",
             f"{c['latency_ratio']:.2f}x", g["latency"]["goal"], g["latency"]["status"]],
            [f"scale: host metadata per guest page", f"{g['metadata']['value']:.1f} B/page "
             f"(ready {c['metadata_bytes_per_page_ready']:.1f}, after run {c['metadata_bytes_per_page_after']:.1f})",
             f"host RSS {_mib_of(small['host_rss_ready'])} MiB at {format_size(small['guest_mem'])}, "
             f"{_mib_of(big['host_rss_ready'])} MiB at {format_size(big['guest_mem'])} (ready)",
             "–", g["metadata"]["goal"], g["metadata"]["status"]],
            [f"scale: host start-up to host.json", f"{big['startup_s']:.2f} s at {format_size(big['guest_mem'])}",
             f"{small['startup_s']:.2f} s at {format_size(small['guest_mem'])}",
             f"{big['startup_s'] / small['startup_s']:.2f}x" if small["startup_s"] else "–",
             g["startup"]["goal"], g["startup"]["status"]]] + ([
            [f"scale: host RSS after the run", f"{_mib_of(big['host_rss_after'])} MiB at {format_size(big['guest_mem'])}",
             f"{_mib_of(small['host_rss_after'])} MiB at {format_size(small['guest_mem'])}", "–",
             g["rss"]["goal"], g["rss"]["status"]]] if "rss" in g else [])
