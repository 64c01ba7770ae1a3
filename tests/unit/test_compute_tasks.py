"""Compute-only tasks: the option (command line, TOML, validation) and the scheduler's phases,
which wait at each boundary until the guest's main thread lets the next one start."""
import os
import select

import pytest

from apf.cli import build_parser
from apf.config_file import ConfigFileError, _commands, load, parse_args
from apf.options import GUEST, config_kwargs, forward
from guest.config import ConfigError, GuestConfig
from guest.scheduler import Scheduler, Task, TaskState
from guest.workload import Compute, compute_stream
from tests.helpers import apf


def _guest_values(*argv: str) -> dict:
    return vars(parse_args(build_parser(), ["guest", "--run-dir", "/tmp/r", *argv]))


def test_compute_options_reach_the_config_and_are_forwarded():
    """--compute-tasks and --compute-work set the guest config, and `apf run` forwards them
    exactly (the default of 0 compute tasks is left out)."""
    values = _guest_values("--compute-tasks", "2", "--compute-work", "5ms", "--accesses", "10")
    cfg = GuestConfig(**config_kwargs(GUEST, values)).validate()
    assert cfg.compute_tasks == 2 and cfg.compute_ns == 5_000_000
    argv = forward(GUEST, values)
    assert "--compute-tasks=2" in argv and "--compute-work=5000000ns" in argv
    assert not any(a.startswith("--compute") for a in forward(GUEST, _guest_values()))


def test_compute_work_defaults_to_what_a_memory_task_thinks():
    """Without --compute-work a compute task does --accesses x --think of CPU work."""
    cfg = GuestConfig(**config_kwargs(GUEST, _guest_values("--compute-tasks", "1", "--accesses", "300",
                                                           "--think", "200us"))).validate()
    assert cfg.compute_ns == 300 * 200_000


def test_compute_options_from_a_config_file(tmp_path):
    """In TOML the keys parse as on the command line; a refused value names the file and key."""
    path = tmp_path / "apf.toml"
    path.write_text('[guest]\ncompute-tasks = 3\ncompute_work = "2ms"\n', encoding="utf-8")
    values = load(str(path), "guest", _commands(build_parser()))
    assert values["compute_tasks"] == 3 and values["compute_work_ns"] == 2_000_000
    path.write_text('[guest]\ncompute-tasks = -1\n', encoding="utf-8")
    with pytest.raises(ConfigFileError, match=r"compute-tasks: -1 must not be negative"):
        load(str(path), "guest", _commands(build_parser()))


@pytest.mark.parametrize("argv, needle", [
    (["--compute-tasks", "-1"], "-1 must not be negative"),
    (["--compute-tasks", "two"], "'two' is not a whole number"),
    (["--compute-work", "0"], "0 must be above 0"),
])
def test_bad_compute_values_are_usage_errors(capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        _guest_values(*argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_compute_tasks_without_work_are_refused():
    """A compute task with nothing to do (no --compute-work, no think) is a configuration error,
    in the config and on the command line (one line, status 2, before looking for a host)."""
    with pytest.raises(ConfigError, match="--compute-tasks needs CPU work"):
        GuestConfig("/tmp/r", compute_tasks=1).validate()
    GuestConfig("/tmp/r", compute_tasks=1, compute_work_ns=1).validate()
    proc = apf("guest", "--run-dir", "/nonexistent/apf", "--compute-tasks", "1", timeout=30)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        "apf guest: error: --compute-tasks needs CPU work to do: give --compute-work, or --accesses and "
        "--think above 0 (its default is --accesses x --think)"]


def test_compute_stream_is_the_work_in_steps():
    """The work is cut in steps of at most the step size, summing to exactly the work; a task
    counts the work of the steps it completed."""
    assert list(compute_stream(250_000, 100_000)) == [Compute(100_000), Compute(100_000), Compute(50_000)]
    task = Task(0, "compute-0", compute_stream(250_000, 100_000), compute=True)
    while task.current is not None:
        task.advance()
    assert task.completed == 3 and task.work_ns == 250_000


def _boundary_signalled(sched: Scheduler) -> bool:
    return bool(select.select([sched.boundary_fd], [], [], 0)[0])


def _run_phase(sched: Scheduler) -> None:
    """Take every runnable task and finish it, as vCPUs would."""
    while (task := sched.pick(0)) is not None:
        sched.finish(task)


def test_next_phase_waits_for_advance_and_empty_phases_pass_without_a_boundary():
    """When a phase's last task finishes, the scheduler signals the boundary and runs nothing until
    advance(); a phase without tasks starts and ends inside advance(); the run is finished only
    once the boundary after the last phase has been handled."""
    one = lambda name: (lambda: [Task(0, name, iter([Compute(1)]), phase=name, compute=True)])  # noqa: E731
    sched = Scheduler(1, [("a", one("a")), ("empty", list), ("c", one("c"))])
    try:
        assert not sched.finished and sched.pick(0) is None      # nothing before the first advance
        sched.advance()
        assert sched.current_phase == "a"
        _run_phase(sched)
        assert sched.phase_over == "a" and _boundary_signalled(sched)
        assert not sched.finished and sched.pick(0) is None
        sched.drain_boundary()
        sched.advance()
        assert sched.phase_over is None and sched.current_phase == "c"
        start, end = sched.phase_ns["empty"]
        assert start == end
        _run_phase(sched)
        assert sched.phase_over == "c" and not sched.finished
        sched.advance()
        assert sched.finished
        assert all(t.state == TaskState.DONE for t in sched.all_tasks)
    finally:
        sched.close()
