"""`apf run --config FILE` for real: the daemons run with the file's values, the command line wins."""
from tests.helpers import run_report

CONFIG = '''
[host]
guest-mem = "1MiB"
host_mem = "256KiB"
swap-latency = "200us"

[guest]
accesses = 200
tasks = 2
mode = "async"
workload = "sequential"
seed = 7
write_frac = 0.75

[run]
quiet = true
'''


def test_run_takes_its_options_from_the_file_and_the_command_line_overrides(tmp_path, shm_leftovers):
    """The report shows the file's host memory, workload and mode, and `--tasks 3` on the command
    line replaces the file's `tasks = 2`; `quiet = true` from [run] silences the summary."""
    path = tmp_path / "run.toml"
    path.write_text(CONFIG, encoding="utf-8")
    proc, r = run_report(tmp_path, "--config", str(path), "--tasks", "3", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    cfg = r["config"]
    assert (cfg["accesses"], cfg["mode"], cfg["workload"], cfg["seed"], cfg["write_frac"]) == \
        (200, "async", "sequential", 7, 0.75)
    assert cfg["tasks"] == 3 and r["tasks"]["total"] == 3
    assert r["tasks"]["accesses"] == 3 * 200
    assert r["host"]["memory"]["budget_pages"] == 256 * 1024 // 4096
    assert r["mode"] == "async" and r["ok"]
