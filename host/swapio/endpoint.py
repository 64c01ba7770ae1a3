"""Where the swap lives: a file path, or a Redis URL naming a remote memory service.

    --swap FILE                                   the local swap file (host/swapio/device.py)
    --swap redis://[USER@]HOST:PORT[/DB]          one Redis server over TCP
    --swap rediss://[USER@]HOST:PORT[/DB][?ssl_ca_certs=F&ssl_certfile=F&ssl_keyfile=F&ssl_cert_reqs=R]
                                                  the same over TLS (the client's SSL options)
    --swap unix:///PATH/redis.sock[?db=N]         one Redis server on a Unix socket
    --swap redis+cluster://HOST:PORT[,HOST:PORT...]   a Redis Cluster, found from any of these nodes

The password never rides in the URL (the command line is visible to every user of the machine):
it comes from `--swap-password-file`. `RemoteEndpoint.text` is the URL as host.json and the
report show it: no user, no password.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from protocol.errors import ConfigError

SCHEMES = ("redis", "rediss", "unix", "redis+cluster")
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
DEFAULT_PORT = 6379


def is_remote(swap: str | None) -> bool:
    """Whether `--swap` names a remote service rather than a file: anything with a `scheme://`,
    or one of ours followed by a colon (a URL missing its `//`); parse_endpoint refuses those it
    cannot use, so that `http://...` or `redis:host:6379` is an error, not a file of that name."""
    if not swap:
        return False
    scheme, colon, _ = swap.partition(":")
    return "://" in swap or bool(colon) and scheme.lower() in SCHEMES


@dataclass(frozen=True)
class RemoteEndpoint:
    """A parsed remote swap URL. `nodes` are (host, port) pairs (one unless `cluster`), or empty
    with `path` for a Unix socket; `tls` holds the client's SSL keyword options."""
    backend: str                         # "redis" or "redis-cluster", as host.json and the report say
    scheme: str
    nodes: tuple[tuple[str, int], ...] = ()
    path: str | None = None
    db: int = 0
    username: str | None = None
    tls: dict[str, str] = field(default_factory=dict)

    @property
    def cluster(self) -> bool:
        return self.backend == "redis-cluster"

    @property
    def text(self) -> str:
        """The endpoint without credentials, e.g. `redis://127.0.0.1:6379/0`."""
        if self.path is not None:
            return f"unix://{self.path}" + (f"?db={self.db}" if self.db else "")
        nodes = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.nodes)
        return f"{self.scheme}://{nodes}" + ("" if self.cluster else f"/{self.db}")


def parse_endpoint(url: str, flag: str = "--swap") -> RemoteEndpoint:
    """Parse a remote swap URL (forms in the module docstring). Raises ConfigError naming what is
    wrong: an unknown scheme, no host, a bad port or DB, a password in the URL, a query option
    the client does not take."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ConfigError(f"{flag} {url}: not a file path nor a URL of {', '.join(s + '://' for s in SCHEMES)}")
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    if "password" in query or _password_in(parts.netloc):
        raise ConfigError(f"{flag}: the URL carries a password; put it in --swap-password-file instead "
                          "(a command line is visible to every user of the machine)")
    username = unquote(parts.netloc.rpartition("@")[0]) or None
    if scheme == "unix":
        if parts.netloc or not parts.path:
            raise ConfigError(f"{flag} {url}: a Unix socket is written unix:///PATH/redis.sock (an absolute path)")
        db = _db(query.pop("db", "0"), url, flag)
        _no_more(query, (), url, flag)
        return RemoteEndpoint("redis", scheme, path=unquote(parts.path), db=db)
    hostport = parts.netloc.rpartition("@")[2]
    if scheme == "redis+cluster":
        if parts.path not in ("", "/"):
            raise ConfigError(f"{flag} {url}: a cluster has one database only; drop the /{parts.path.strip('/')}")
        nodes = tuple(_hostport(item, url, flag) for item in hostport.split(","))
        tls = _no_more(query, TLS_OPTIONS, url, flag)
        return RemoteEndpoint("redis-cluster", scheme, nodes=nodes, username=username, tls=tls)
    path = parts.path.strip("/")
    db = _db(query.pop("db", path or "0"), url, flag)
    tls = _no_more(query, TLS_OPTIONS if scheme == "rediss" else (), url, flag)
    return RemoteEndpoint("redis", scheme, nodes=(_hostport(hostport, url, flag),), db=db,
                          username=username, tls=tls)


def _password_in(netloc: str) -> bool:
    userinfo = netloc.rpartition("@")[0]
    return ":" in userinfo


def _hostport(text: str, url: str, flag: str) -> tuple[str, int]:
    if not text:
        raise ConfigError(f"{flag} {url}: no host (e.g. redis://127.0.0.1:6379)")
    if text.startswith("["):              # [::1]:6379
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ConfigError(f"{flag} {url}: no host before :{port}")
    if not port:
        return host, DEFAULT_PORT
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{flag} {url}: port '{port}' is not a number from 1 to 65535")
    return host, int(port)


def _db(text: str, url: str, flag: str) -> int:
    if not text.isdigit():
        raise ConfigError(f"{flag} {url}: database '{text}' is not a number")
    return int(text)


def _no_more(query: dict[str, str], allowed: tuple[str, ...], url: str, flag: str) -> dict[str, str]:
    extra = sorted(set(query) - set(allowed))
    if extra:
        hint = f"; this scheme takes {', '.join(allowed)}" if allowed else ""
        raise ConfigError(f"{flag} {url}: unknown option {', '.join(extra)}{hint}")
    return dict(query)
