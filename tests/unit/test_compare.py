"""`python -m apf.compare`: the one-line comparison `make demo` prints."""
import json

from apf.compare import compare, main


def test_compare_reports_the_ratio_and_stalls():
    """The line names both modes, the wall-time ratio and both stall figures."""
    line = compare({"mode": "sync", "wall_s": 4.0, "vcpu_stall_s": 3.5},
                   {"mode": "async", "wall_s": 1.0, "vcpu_stall_s": 0.5})
    assert line.startswith("async wall time is 0.25 of sync") and "3.500s -> 0.500s" in line


def test_compare_adds_cpu_and_halt_polls_when_the_reports_have_them():
    """With both reports' workload CPU and halt-poll counters, the line adds them in order."""
    base = {"mode": "async", "wall_s": 2.0, "vcpu_stall_s": 0.5, "cpu": {"guest_s": 1.0, "host_s": 0.5},
            "idle": {"polls": 0, "poll_hits": 0}}
    polled = {**base, "wall_s": 1.5, "cpu": {"guest_s": 1.25, "host_s": 0.5}, "idle": {"polls": 40, "poll_hits": 30}}
    line = compare(base, polled)
    assert line.endswith("; guest CPU 1.000s -> 1.250s; idle polls caught 0/0 -> 30/40"), line
    assert compare({"mode": "sync", "wall_s": 1.0, "vcpu_stall_s": 0.1}, base).count(";") == 1


def test_compare_cli_errors(tmp_path, capsys):
    """Wrong arguments or an unreadable report give exit 2 and a message, not a traceback."""
    assert main([]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main([str(bad), str(bad)]) == 2
    assert "apf.compare: error" in capsys.readouterr().err
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"mode": "sync", "wall_s": 2.0, "vcpu_stall_s": 1.0}))
    assert main([str(good), str(good)]) == 0


def test_compare_warns_about_a_run_that_never_swapped(tmp_path, capsys):
    """A report whose workload read nothing from swap is compared, with a warning on stderr naming
    it; a report that swapped, or one that does not say, gets none."""
    swapped = {"mode": "sync", "wall_s": 2.0, "vcpu_stall_s": 1.0, "workload_swap": {"reads": 40}}
    idle = {"mode": "async", "wall_s": 1.0, "vcpu_stall_s": 0.0, "workload_swap": {"reads": 0}}
    paths = []
    for name, report in (("a.json", swapped), ("b.json", idle), ("c.json", {**idle, "workload_swap": None})):
        (tmp_path / name).write_text(json.dumps(report))
        paths.append(str(tmp_path / name))
    assert main(paths[:2]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("async wall time is 0.50 of sync")
    assert err.splitlines() == [f"apf.compare: warning: {paths[1]} (async) never swapped in its workload phase "
                                "(workload_swap.reads 0): it measures no page-fault cost; give --host-mem less "
                                "than the working set, or --prefill"]
    assert main([paths[0], paths[2]]) == 0 and capsys.readouterr().err == ""
