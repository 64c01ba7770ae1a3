"""docker-compose.yml and the Dockerfile, checked without a Docker engine: every command is a real
`apf` command line, and the services share what the host and the guest must share."""
import json
import os
import re
import shlex
import tomllib

import pytest
import yaml

from apf.cli import build_parser
from host.swapio.endpoint import parse_endpoint
from tests.helpers import ROOT

COMPOSE = os.path.join(ROOT, "docker-compose.yml")
DOCKERFILE = os.path.join(ROOT, "Dockerfile")


@pytest.fixture(scope="module")
def compose() -> dict:
    with open(COMPOSE, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _services(compose: dict) -> dict:
    return compose["services"]


def _parse(argv: list[str]):
    """argv parsed by the real `apf` parser; a bad option fails the test instead of exiting."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`apf {' '.join(argv)}` does not parse (exit {exc.code})") from None


def _volume_targets(service: dict) -> dict[str, str]:
    """mount target -> source, for short (`src:dst[:mode]`) and long volume syntax."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
        else:
            source, target = v.get("source"), v["target"]
        out[target] = source
    return out


def _docker_bytes(text) -> int:
    """A Docker size (`256m`, `2g`, `512MB`, a number of bytes) in bytes."""
    m = re.fullmatch(r"(\d+)\s*([bkmg]?)b?", str(text).strip().lower())
    assert m, f"{text!r} is not a Docker size"
    return int(m.group(1)) * {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2)]


def _entrypoint(service: dict) -> list[str]:
    """What the container runs: the image's ENTRYPOINT (`apf`) unless the service replaces it."""
    return service.get("entrypoint", ["apf"])


def test_compose_parses_and_has_the_three_services(compose):
    """The file is valid YAML with services host, guest and bench, and a named run-dir volume."""
    assert {"host", "guest", "bench"} <= set(_services(compose))
    assert isinstance(compose.get("volumes"), dict) and compose["volumes"]


@pytest.mark.parametrize("name, subcommand", [("host", "host"), ("guest", "guest"), ("bench", "bench")])
def test_each_command_is_a_real_apf_command_line(compose, name, subcommand):
    """The service runs `apf SUBCOMMAND ...` and its options parse with the real parser."""
    service = _services(compose)[name]
    assert _entrypoint(service) == ["apf"]
    argv = service["command"]
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), "use the exec (list) form"
    commands = next(a.choices for a in build_parser()._actions if hasattr(a, "choices") and
                    isinstance(a.choices, dict))
    assert subcommand in commands, f"the {name} service runs `apf {subcommand}`, which the command line lacks"
    args = _parse(argv)
    assert args.command == subcommand


def test_run_dir_volume_is_mounted_where_host_and_guest_look(compose):
    """host and guest mount the same named volume at the path their --run-dir names."""
    services = _services(compose)
    run_dirs = {}
    for name in ("host", "guest"):
        args = _parse(services[name]["command"])
        targets = _volume_targets(services[name])
        assert args.run_dir in targets, f"{name}: --run-dir {args.run_dir} is not a mount point"
        run_dirs[name] = (args.run_dir, targets[args.run_dir])
    assert run_dirs["host"] == run_dirs["guest"]
    source = run_dirs["host"][1]
    assert source in compose["volumes"], "the run dir must be a named volume, not a bind mount"


def test_guest_shares_the_hosts_ipc_namespace_and_shm_fits(compose):
    """The guest joins the host's IPC namespace (so it sees the host's /dev/shm), the host allows it,
    and the host's /dev/shm holds the resident guest memory with room to spare."""
    services = _services(compose)
    assert services["guest"]["ipc"] == "service:host"
    assert services["host"]["ipc"] == "shareable"
    host = _parse(services["host"]["command"])
    assert host.shm_dir == "/dev/shm"
    assert _docker_bytes(services["host"]["shm_size"]) >= 2 * host.host_mem


def test_guest_fits_the_host(compose):
    """The guest asks for no more vCPUs than the host has, and writes its report to a mounted dir."""
    services = _services(compose)
    host, guest = _parse(services["host"]["command"]), _parse(services["guest"]["command"])
    assert guest.vcpus <= host.vcpus
    assert not host.once, "the host keeps running after the guest (a restart needs no new host)"
    report_dir = os.path.dirname(guest.report)
    assert report_dir in _volume_targets(services["guest"])


def test_guest_starts_only_once_the_host_is_healthy(compose):
    """The host's healthcheck looks for host.json in its run dir and asks the host itself with a
    real `apf stats` command line; the guest waits for it."""
    services = _services(compose)
    run_dir = _parse(services["host"]["command"]).run_dir
    test = services["host"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    script = test[1]
    assert os.path.join(run_dir, "host.json") in script
    words = shlex.split(script)
    stats_argv = words[words.index("apf") + 1:]
    stats_argv = stats_argv[:next((i for i, w in enumerate(stats_argv) if w in (">", "&&", "||")),
                                  len(stats_argv))]
    args = _parse(stats_argv)
    assert args.command == "stats" and args.run_dir == run_dir and args.json
    assert services["guest"]["depends_on"]["host"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", ["host", "guest", "bench"])
def test_every_service_has_resource_limits(compose, name):
    """Each service is bounded in CPU and memory, within this 2-core machine's reach."""
    service = _services(compose)[name]
    assert 0 < float(service["cpus"]) <= 2
    assert 64 << 20 <= _docker_bytes(service["mem_limit"]) <= 4 << 30


def test_bench_is_a_one_shot_writing_to_out(compose):
    """The bench runs `apf bench --quick --out /out` only when asked for, and /out is mounted."""
    bench = _services(compose)["bench"]
    assert bench["command"][:1] == ["bench"] and "--quick" in bench["command"]
    out = bench["command"][bench["command"].index("--out") + 1]
    assert out in _volume_targets(bench)
    assert bench.get("profiles"), "a one-shot must not start with `docker compose up`"
    assert bench.get("restart", "no") == "no"


def test_dockerfile_installs_the_project_with_apf_as_entry_point():
    """The image copies every package the project ships, pip-installs the project, and runs `apf`."""
    with open(DOCKERFILE, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    assert lines[0].startswith("FROM python:3.11")
    copied = {part.rstrip("/").lstrip("./") for line in lines if line.startswith("COPY")
              for part in line.split()[1:-1]}
    # a subpackage (host.swapio) ships from its top-level package's directory, copied whole
    assert {package.split(".")[0] for package in project["tool"]["setuptools"]["packages"]} <= copied
    assert {"pyproject.toml", project["project"]["readme"]} <= copied
    assert any(re.match(r"RUN pip install (--[\w-]+ )*\.(\s|$)", line) for line in lines)
    entry = next(line for line in lines if line.startswith("ENTRYPOINT"))
    assert json.loads(entry[len("ENTRYPOINT"):]) == ["apf"]
    assert project["project"]["scripts"]["apf"] == "apf.cli:main"


def test_dockerignore_keeps_the_packages_in_the_build_context():
    """The build context leaves out the venv and caches but none of the files the image copies."""
    with open(os.path.join(ROOT, ".dockerignore"), encoding="utf-8") as f:
        ignored = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    assert ".venv" in ignored and ".git" in ignored
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        packages = tomllib.load(f)["tool"]["setuptools"]["packages"]
    assert not ignored & {*packages, "pyproject.toml", "README.md"}


def test_host_metrics_port_is_published_on_loopback(compose):
    """The host serves Prometheus metrics on a port inside its container, and compose publishes that
    port on the Docker host's loopback only."""
    from shared.prom import parse_listen
    host = _services(compose)["host"]
    addr, port = parse_listen(_parse(host["command"]).metrics)
    assert addr == "0.0.0.0"
    assert f"127.0.0.1:{port}:{port}" in host["ports"]


def test_the_remote_profile_is_a_host_swapping_to_the_redis_service_and_its_guest(compose):
    """Profile `remote`: redis, host-remote and guest-remote all in it (none starts with a plain
    `docker compose up`); redis never evicts a page (noeviction, no persistence) and has room for
    the whole guest; host-remote's --swap URL (parsed by the real parser) names the redis service
    on its port, and the host starts once redis is healthy; guest-remote joins host-remote's IPC
    namespace and run-dir volume (its own, not the file-swap host's), fits its vCPUs and writes
    its report to a mounted dir, once the host is healthy."""
    services = _services(compose)
    redis, host, guest = services["redis"], services["host-remote"], services["guest-remote"]
    for service in (redis, host, guest):
        assert service["profiles"] == ["remote"]
    argv = redis["command"]
    assert argv[0] == "redis-server"
    options = dict(zip(argv[1::2], argv[2::2]))
    assert options["--maxmemory-policy"] == "noeviction" and options["--save"] == "" and options["--appendonly"] == "no"
    host_args, guest_args = _parse(host["command"]), _parse(guest["command"])
    assert host_args.command == "host" and guest_args.command == "guest"
    assert _docker_bytes(options["--maxmemory"]) >= host_args.guest_mem
    endpoint = parse_endpoint(host_args.swap)
    assert endpoint.backend == "redis" and endpoint.nodes == (("redis", 6379),)
    assert host["depends_on"]["redis"]["condition"] == "service_healthy"
    assert redis["healthcheck"]["test"][:2] == ["CMD", "redis-cli"]
    assert guest["ipc"] == "service:host-remote" and host["ipc"] == "shareable"
    assert host_args.shared_memory == "path" and _docker_bytes(host["shm_size"]) >= 2 * host_args.host_mem
    host_volumes, guest_volumes = _volume_targets(host), _volume_targets(guest)
    assert host_volumes[host_args.run_dir] == guest_volumes[guest_args.run_dir] == "rundir-remote"
    assert "rundir-remote" in compose["volumes"] and _volume_targets(services["host"])[host_args.run_dir] != "rundir-remote"
    assert guest_args.vcpus <= host_args.vcpus
    assert os.path.dirname(guest_args.report) in guest_volumes
    assert guest["depends_on"]["host-remote"]["condition"] == "service_healthy"
