import os
import re
import shutil
import signal
import tempfile

import psutil
import pytest

from tests.helpers import HostProcess, RawGuest, attached_guest

pytest_plugins = ["tests.redis_server"]   # redis_server, redis_cluster: real servers

# Started in the background by a script (`make test-loaded &`, a CI step), the suite may inherit
# SIGINT ignored, and so would every daemon it starts: Python keeps an ignored SIGINT ignored, as
# a background job should. The tests that press Ctrl-C need it to arrive, so the suite takes it
# back (a handled signal is reset to the default in each child at exec).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def run_dir():
    """A fresh private run dir; afterwards it must be gone or empty of daemon files."""
    parent = tempfile.mkdtemp(prefix="apf-test-")
    path = os.path.join(parent, "run")
    yield path
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def shm_leftovers():
    """Fail the test if it leaves shared-memory files behind: files of a host that is gone.
    (Files of live hosts may belong to other runs on the machine.)"""
    daemon_file = re.compile(r"^apf-(\d+)-[0-9a-f]{8}-(ram|stage2|control)$")

    def orphans() -> set[str]:
        found = set()
        for name in os.listdir("/dev/shm"):
            m = daemon_file.match(name)
            if m and not psutil.pid_exists(int(m.group(1))):
                found.add(name)
        return found

    before = orphans()
    yield
    leaked = orphans() - before
    assert leaked == set(), f"left in /dev/shm by hosts that are gone: {sorted(leaked)}"


@pytest.fixture
def host(run_dir, shm_leftovers):
    """Start a real host: host(*args) -> HostProcess; all are stopped at teardown."""
    started = []

    def start(*args: str) -> HostProcess:
        h = HostProcess(run_dir, *args)
        started.append(h)
        return h

    yield start
    for h in started:
        h.stop()


@pytest.fixture
def raw_guest(host):
    """start(*host_args, nr_vcpus=1) -> a RawGuest attached to a fresh host, pages 0..63 touched
    and reclaim finished; every guest made is closed at teardown. Swap readahead is off
    (--page-cluster 0; a later --page-cluster in host_args wins), so that each trap on a swapped
    page is a major fault of its own, as these tests count them."""
    made: list[RawGuest] = []

    def start(*args: str, nr_vcpus: int = 1) -> RawGuest:
        g = attached_guest(host("--page-cluster", "0", *args).info, nr_vcpus=nr_vcpus)
        made.append(g)
        return g

    yield start
    for g in made:
        g.close()
