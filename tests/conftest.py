import os
import re
import shutil
import tempfile

import pytest

from tests.helpers import HostProcess


@pytest.fixture
def run_dir():
    """A fresh private run dir; afterwards it must be gone or empty of daemon files."""
    parent = tempfile.mkdtemp(prefix="apf-test-")
    path = os.path.join(parent, "run")
    yield path
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def shm_leftovers():
    """Fail the test if it leaves shared-memory files of its daemons behind."""
    daemon_file = re.compile(r"^apf-\d+-[0-9a-f]{8}-(ram|stage2|control)$")
    before = {f for f in os.listdir("/dev/shm") if daemon_file.match(f)}
    yield
    after = {f for f in os.listdir("/dev/shm") if daemon_file.match(f)}
    assert after - before == set(), f"left in /dev/shm: {sorted(after - before)}"


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
