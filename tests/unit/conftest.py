import shutil
import tempfile

import pytest


@pytest.fixture
def shm_dir():
    """A private directory on tmpfs (/dev/shm), removed afterwards."""
    path = tempfile.mkdtemp(prefix="apf-unit-", dir="/dev/shm")
    yield path
    shutil.rmtree(path, ignore_errors=True)
