"""Which swap back-end a configuration names, and opening it: the local swap file, or a remote
memory service on Redis (host/swapio/endpoint.py gives the URL forms).

Both have the device surface the daemon and the slot allocator use (`discard(first, count)`,
`discard_all()`, `allocated_bytes()`, `close()`) and are driven by an IoEngine that
host/swapio/choice.py picks for them. The Redis client is imported only when a remote swap is
asked for: it costs about 0.2 s of start-up.
"""
from __future__ import annotations

from typing import Any

from host.swapio.device import SwapDevice
from host.swapio.endpoint import is_remote, parse_endpoint
from protocol.errors import ConfigError

BACKEND_FILE = "file"


def read_password_file(path: str) -> str:
    """The password in `path`: its first line, without the line end. Raises ConfigError if the
    file cannot be read or is empty."""
    try:
        with open(path, encoding="utf-8") as f:
            password = f.readline().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"--swap-password-file {path}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--swap-password-file {path}: not a text file") from None
    if not password:
        raise ConfigError(f"--swap-password-file {path}: the first line is empty")
    return password


def open_swap(swap: str, nslots: int, direct_io: bool, timeout_ns: int,
              password_file: str | None = None, exclusive: bool = False) -> Any:
    """The swap device `swap` names: a SwapDevice for a path, a RemoteSwap (host/swapio/remote.py)
    for a Redis URL, with `nslots` page-sized slots; with `exclusive`, a file must not exist yet. Raises ConfigError (a bad URL or password
    file, refused credentials) or SwapIOError (cannot open the file, cannot reach the server)."""
    if not is_remote(swap):
        return SwapDevice(swap, direct_io, exclusive=exclusive)
    endpoint = parse_endpoint(swap)
    password = read_password_file(password_file) if password_file else None
    from host.swapio.remote import RemoteSwap   # the client only when it is needed
    return RemoteSwap(endpoint, nslots, timeout_ns / 1e9, password)


def backend_of(device: Any) -> tuple[str, str]:
    """(backend, endpoint) of an open device, as host.json and the report name them: ("file",
    its path) or ("redis" | "redis-cluster", the URL without credentials)."""
    if isinstance(device, SwapDevice):
        return BACKEND_FILE, device.path
    return device.backend, device.text
