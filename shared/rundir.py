"""The run directory: where the host publishes `host.json`, its ipc socket and its lock.

The host creates it 0700 (or accepts an existing one it owns that nobody else may write), takes
an exclusive lock so a second host on the same directory is refused, and publishes `host.json`
atomically once it is ready. The guest only reads `host.json`.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
from typing import Any
from protocol.errors import RunDirError

HOST_JSON = "host.json"
LOCK_FILE = "host.lock"
SOCKET_NAME = "host.sock"
OWNER_ENV = "APF_RUN_DIR_OWNER"   # set by `apf run` for its daemons: its pid; the run dir is its own
RUN_ENV = "APF_RUN"               # set by `apf run` for its daemons: it prints the run's summary itself


def under_apf_run() -> bool:
    return os.environ.get(RUN_ENV) is not None


def orphaned() -> bool:
    """True in a daemon whose `apf run` (OWNER_ENV) is gone: this process has another parent now."""
    owner = os.environ.get(OWNER_ENV)
    return owner is not None and owner.isdigit() and os.getppid() != int(owner)


def remove_if_orphaned(run_dir: str) -> bool:
    """A daemon of an `apf run` that died (even by SIGKILL, which leaves it no chance to clean up)
    removes that run's temporary run dir as it exits; True if it did. Both daemons call this, so
    whichever exits last removes what the other wrote."""
    if not orphaned():
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


def check_private(path: str) -> None:
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise RunDirError(f"run dir {path} is not a directory")
    if st.st_uid != os.getuid():
        raise RunDirError(f"run dir {path} belongs to uid {st.st_uid}, not to this user ({os.getuid()})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise RunDirError(f"run dir {path} is writable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                          "use a directory only you can write")


def prepare(path: str) -> bool:
    """Make sure `path` is a private run dir; return True if this call created it."""
    created = False
    try:
        os.mkdir(path, 0o700)
        created = True
    except FileExistsError:
        pass
    except FileNotFoundError as exc:
        raise RunDirError(f"cannot create run dir {path}: its parent does not exist") from exc
    check_private(path)
    return created


class HostLock:
    """One host per run dir: an exclusive, non-blocking flock held for the host's life."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LOCK_FILE)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            holder = read_host_json(run_dir, missing_ok=True)
            pid = f" (pid {holder['pid']})" if holder and "pid" in holder else ""
            raise RunDirError(f"another host already serves run dir {run_dir}{pid}") from None

    def release(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)


def write_host_json(run_dir: str, info: dict[str, Any]) -> str:
    path = os.path.join(run_dir, HOST_JSON)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return path


def read_host_json(run_dir: str, missing_ok: bool = False) -> dict[str, Any] | None:
    if not os.path.isdir(run_dir):
        raise RunDirError(f"run dir {run_dir} does not exist; start `apf host --run-dir {run_dir}` first")
    path = os.path.join(run_dir, HOST_JSON)
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise RunDirError(f"run dir {run_dir} has no {HOST_JSON}: no host is serving it") from None
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path} is not a host description ({exc})") from exc
    if not isinstance(info, dict) or info.get("kind") != "apf-emu-host":
        raise RunDirError(f"{path} was not written by an apf-emu host")
    return info


def endpoint(run_dir: str) -> str:
    return "ipc://" + os.path.join(os.path.abspath(run_dir), SOCKET_NAME)
