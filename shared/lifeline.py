"""The lifeline: a Unix stream socket in the run dir that hands guest memory to the guest and
tells each side at once when the other has died.

Guest memory (RAM, stage 2, control blocks) is made with `memfd_create`: it has no name in any
file system, and the kernel frees it when the last process holding a descriptor or a mapping of
it is gone, so a host killed by SIGKILL leaves nothing behind. The guest gets the descriptors
over this socket with SCM_RIGHTS, as a vhost-user back-end gets its memory regions.

The dialogue (after WELCOME on the ZeroMQ socket):

    guest                                        host
      |-- connect RUN_DIR/host.lifeline.sock ------>|
      |-- {"guest": NAME} (one JSON line) --------->|   NAME must be the attached guest's
      |<-- {"files": [...], "mode": M} + fds -------|   fds: one per file (none in path mode)
      |             ... the session ...             |
      |<========== EOF: the other side died =======>|

The connection stays open for the whole session. The kernel closes it when either process dies,
however it dies, so each side sees EOF at once (no heartbeat expiry to wait for); heartbeats
remain for a peer that is alive but silent. A refusal is one JSON line {"error": REASON}, then
the host closes the connection.

Path mode (`--shared-memory path`, for a guest that cannot receive descriptors, such as one in
another container that shares only /dev/shm) names files in `--shm-dir` instead; a host then
removes, at start, the files that hosts no longer alive left there (`reclaim_stale`).
"""
from __future__ import annotations

import array
import json
import os
import re
import socket
from typing import Any

from protocol.errors import RunDirError

LIFELINE_NAME = "host.lifeline.sock"
MAX_LINE = 4096                 # a request or answer is one short JSON line
MEMFD_PATH = "/proc/self/fd/{fd}"
CONNECT_BOUND_S = 2.0           # a host that accepts nothing within this is treated as absent
STALE_FILE = re.compile(r"^apf-(\d+)-[0-9a-f]+-(ram|stage2|control)$")


def path(run_dir: str) -> str:
    return os.path.join(os.path.abspath(run_dir), LIFELINE_NAME)


def memfd(name: str) -> tuple[int, str]:
    """A new anonymous memory file: its descriptor and a path (in /proc/self/fd) that opens it."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    return fd, MEMFD_PATH.format(fd=fd)


def listen(run_dir: str) -> socket.socket:
    """The host's listening socket (non-blocking), bound in the run dir."""
    where = path(run_dir)
    try:
        os.unlink(where)    # a dead host's socket: the run dir lock says no live host owns it
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(where)
    sock.listen(8)
    sock.setblocking(False)
    return sock


def read_line(conn: socket.socket) -> dict[str, Any] | None:
    """One JSON line from a non-blocking connection, or None if it is not all there yet or is
    not a JSON object (the caller refuses such a peer)."""
    try:
        data = conn.recv(MAX_LINE, socket.MSG_PEEK)
    except BlockingIOError:
        return None
    if b"\n" not in data:
        return None
    line = conn.recv(data.index(b"\n") + 1)
    try:
        msg = json.loads(line)
    except ValueError:
        return {}
    return msg if isinstance(msg, dict) else {}


def send_line(conn: socket.socket, msg: dict[str, Any], fds: list[int] = ()) -> None:
    data = json.dumps(msg).encode() + b"\n"
    if fds:
        conn.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        conn.sendall(data)


def closed(conn: socket.socket) -> bool:
    """True once the peer's end is closed (EOF or reset); never blocks, consumes nothing."""
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class GuestLifeline:
    """The guest's end: connect, ask for the memory, keep the connection to watch the host."""

    def __init__(self, where: str, guest_name: str, host_pid: Any, timeout_s: float):
        """`where`: the lifeline socket (host.json's and WELCOME's `lifeline`)."""
        self.host_pid = host_pid
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        try:
            self.sock.connect(where)
            self.sock.sendall(json.dumps({"guest": guest_name}).encode() + b"\n")
            self.answer, self.fds = self._receive()
        except (OSError, ValueError) as exc:
            self.sock.close()
            raise RunDirError(f"cannot get guest memory from the host (pid {host_pid}) over "
                              f"{where}: {exc}") from exc
        if "error" in self.answer:
            self.close_fds()
            self.sock.close()
            raise RunDirError(f"host refused to hand over guest memory: {self.answer['error']}")
        self.sock.setblocking(False)   # from now on only watched, never waited on

    def _receive(self) -> tuple[dict[str, Any], list[int]]:
        fds = array.array("i")
        data, ancdata, _, _ = self.sock.recvmsg(MAX_LINE, socket.CMSG_SPACE(16 * fds.itemsize))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
        if not data.endswith(b"\n"):
            raise ValueError("the host closed the connection without an answer")
        answer = json.loads(data)
        if not isinstance(answer, dict):
            raise ValueError("the host's answer is not a JSON object")
        return answer, list(fds)

    def paths(self) -> dict[str, str] | None:
        """In memfd mode, file name -> a path that opens the received descriptor; else None."""
        if self.answer.get("mode") != "memfd":
            return None
        names = self.answer.get("files")
        if not isinstance(names, list) or len(names) != len(self.fds):
            raise RunDirError(f"host sent {len(self.fds)} descriptors for files {names!r}")
        return {name: MEMFD_PATH.format(fd=fd) for name, fd in zip(names, self.fds)}

    def close_fds(self) -> None:
        """The descriptors are not needed once mapped: the mappings keep the memory."""
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def host_gone(self) -> bool:
        return closed(self.sock)

    def close(self) -> None:
        self.close_fds()
        self.sock.close()


def host_alive(run_dir: str, info: dict[str, Any]) -> None:
    """Raise RunDirError at once if the host that wrote `info` (host.json) is gone: its pid no
    longer runs (checked when it is in this pid namespace) or nothing listens on its lifeline."""
    pid = info.get("pid")
    gone = f"the host of run dir {run_dir} (pid {pid}) is gone"
    if isinstance(pid, int) and info.get("pid_ns") == pid_namespace() and not pid_running(pid):
        raise RunDirError(f"{gone}: no such process (it exited or was killed); start a new one")
    if "lifeline" not in info:
        return   # a host without a lifeline socket (path mode of an older host): no probe
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(CONNECT_BOUND_S)
    try:
        probe.connect(path(run_dir))
    except (ConnectionRefusedError, FileNotFoundError):
        raise RunDirError(f"{gone}: nothing listens on {path(run_dir)}; start a new one") from None
    except OSError:
        pass     # busy or slow: let the caller's own bounded wait decide
    finally:
        probe.close()


def pid_namespace() -> str | None:
    """This process's pid namespace (for host.json), so a reader knows whether its pid applies."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


PF_EXITING = 0x4   # include/linux/sched.h: set by do_exit() before it closes the process's files


def pid_running(pid: int | None) -> bool:
    """True if `pid` runs: not gone, not a zombie waiting to be reaped, and not exiting (proc(5)
    /proc/PID/stat `state` and `flags`). A killed process closes its sockets while it exits, before
    it is a zombie; PF_EXITING is set first, so a peer that sees the socket close finds it set."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0] not in ("Z", "X") and not int(fields[6]) & PF_EXITING
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return False
    except OSError:
        return True


def reclaim_stale(shm_dir: str) -> list[str]:
    """Remove the shared files (apf-PID-*-ram/stage2/control) in `shm_dir` that belong to this user
    and whose host PID no longer runs; return their paths. Path mode only."""
    removed = []
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return removed
    for name in names:
        m = STALE_FILE.match(name)
        if not m or pid_running(int(m.group(1))):
            continue
        full = os.path.join(shm_dir, name)
        try:
            if os.stat(full).st_uid == os.getuid():
                os.unlink(full)
                removed.append(full)
        except OSError:
            pass
    return removed
