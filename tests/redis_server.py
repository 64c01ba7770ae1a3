"""Real redis-server processes for the remote-swap tests: one server, or a three-node cluster,
each on a free loopback port in a temporary directory, stopped and removed afterwards. A server
listens on TCP (`transport="tcp"`), on its Unix socket alone (`"unix"`), or on TLS instead of
plain TCP (`"tls"`, with a throwaway CA and server certificate made by the
`openssl` command line).

A machine without redis-server (or openssl, for TLS) fails these tests with a message saying what
to install (`make test` installs them as root); they never pass by skipping. The one exception: a
redis-server built without TLS skips the TLS tests, saying so. Every wait is bounded.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any

import pytest
import redis

START_BOUND_S = 10.0
STOP_BOUND_S = 5.0
MISSING = ("redis-server is not installed: these tests run a real Redis. Install the Debian package "
           "(`apt-get install redis-server redis-tools`; `make test` does it when run as root)")
TRANSPORTS = ("tcp", "unix", "tls")


def require(program: str = "redis-server") -> str:
    """The path of `program`; fails the calling test (never skips) if it is not installed."""
    path = shutil.which(program)
    if path is None:
        pytest.fail(MISSING if program == "redis-server" else f"{program} is not installed: {MISSING}",
                    pytrace=False)
    return path


def require_tls() -> None:
    """Skip the calling test if the installed redis-server cannot serve TLS (a build without it
    takes no `tls-port` directive): the reason names the binary and what it lacks."""
    try:
        out = subprocess.run([require(), "--port", "0", "--tls-port", "0"], capture_output=True, text=True,
                             timeout=START_BOUND_S, stdin=subprocess.DEVNULL).stdout
    except subprocess.TimeoutExpired:
        raise AssertionError(f"redis-server --port 0 --tls-port 0 did not exit within {START_BOUND_S:g}s")
    if "Bad directive" in out or "FATAL CONFIG" in out:
        pytest.skip(f"{shutil.which('redis-server')} was built without TLS support: it does not know the "
                    "'tls-port' directive (a redis-server built with BUILD_TLS=yes is needed)")


def make_tls_files(directory: str) -> dict[str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost, signed by it, made
    with the openssl command line in `directory`: {"ca": PEM, "cert": PEM, "key": PEM} paths."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not installed: the TLS tests make their certificates with it "
                    "(`apt-get install openssl`; `make test` does it when run as root)", pytrace=False)
    files = {name: os.path.join(directory, f"tls-{name}.pem") for name in ("ca", "ca-key", "cert", "key", "csr")}
    ext = os.path.join(directory, "tls-server.ext")
    with open(ext, "w", encoding="ascii") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
                "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    steps = [
        ["req", "-x509", *ec, "-days", "2", "-subj", "/CN=apf-emu test CA", "-keyout", files["ca-key"],
         "-out", files["ca"], "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", *ec, "-subj", "/CN=localhost", "-keyout", files["key"], "-out", files["csr"]],
        ["x509", "-req", "-in", files["csr"], "-CA", files["ca"], "-CAkey", files["ca-key"], "-CAcreateserial",
         "-days", "2", "-extfile", ext, "-out", files["cert"]],
    ]
    for step in steps:
        proc = subprocess.run([openssl, *step], capture_output=True, text=True, timeout=START_BOUND_S,
                              stdin=subprocess.DEVNULL, cwd=directory)
        assert proc.returncode == 0, f"openssl {' '.join(step[:2])} failed: {proc.stderr}"
    return {"ca": files["ca"], "cert": files["cert"], "key": files["key"]}


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port free now, with its cluster bus port (port + 10000) free too: a cluster
    node needs both, so the port is at most 55535 (the kernel's ephemeral ports go higher)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 55536)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise AssertionError("no free loopback port pair (port, port + 10000) found in 200 tries")


class RedisServer:
    """One redis-server: no persistence, loopback only, a Unix socket in its directory. `transport`
    says where else it listens: "tcp" (a plain port), "unix" (nowhere: --port 0) or "tls" (a TLS
    port and no plain one; certificates from make_tls_files; the caller checks require_tls)."""

    def __init__(self, directory: str, *extra: str, password: str | None = None, transport: str = "tcp"):
        assert transport in TRANSPORTS, transport
        self.dir = directory
        self.password = password
        self.transport = transport
        self.sock_path = os.path.join(directory, "redis.sock")
        self.tls = make_tls_files(directory) if transport == "tls" else {}
        for _ in range(3):           # a port taken between free_port() and the bind: another one
            self.port = free_port()
            listen = ["--port", str(self.port)] if transport == "tcp" else ["--port", "0"]
            if transport == "tls":
                listen += ["--tls-port", str(self.port), "--tls-cert-file", self.tls["cert"],
                           "--tls-key-file", self.tls["key"], "--tls-ca-cert-file", self.tls["ca"],
                           "--tls-auth-clients", "no"]
            argv = [require(), *listen, "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", directory, "--unixsocket", self.sock_path,
                    "--unixsocketperm", "700", "--daemonize", "no", "--logfile", "redis.log", *extra]
            if password:
                argv += ["--requirepass", password]
            self.proc = subprocess.Popen(argv, cwd=directory, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._wait_ready():
                return
            self.stop()
        raise AssertionError(f"redis-server did not start; its log:\n{self.log()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_BOUND_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if self.client().ping():
                    return True
            except redis.RedisError:
                pass
            time.sleep(0.02)
        return False

    @property
    def url(self) -> str:
        """The --swap URL of this server over its transport (TLS: trusting the test CA)."""
        if self.transport == "unix":
            return f"unix://{self.sock_path}"
        if self.transport == "tls":
            return f"rediss://127.0.0.1:{self.port}?ssl_ca_certs={self.tls['ca']}"
        return f"redis://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        """The endpoint as host.json and the report show it: no credentials, no options."""
        if self.transport == "unix":
            return f"unix://{self.sock_path}"
        return f"{'rediss' if self.transport == 'tls' else 'redis'}://127.0.0.1:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A client of this server over its transport (bounded timeouts)."""
        where: dict[str, Any] = {"port": self.port}
        if self.transport == "unix":
            where = {"unix_socket_path": self.sock_path}
        elif self.transport == "tls":
            where.update(ssl=True, ssl_ca_certs=self.tls["ca"])
        return redis.Redis(password=self.password, socket_timeout=5, socket_connect_timeout=5, **where, **kwargs)

    def apf_keys(self) -> list[bytes]:
        return sorted(self.client().scan_iter(match="apf:*", count=1000))

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "redis.log"), encoding="utf-8", errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return "(no log)"

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=STOP_BOUND_S)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_BOUND_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_BOUND_S)


class RedisCluster3:
    """Three redis-server nodes in cluster mode, the hash slots split in three, no replicas."""

    def __init__(self, directory: str):
        self.nodes: list[RedisServer] = []
        try:
            for i in range(3):
                d = os.path.join(directory, f"node{i}")
                os.mkdir(d)
                self.nodes.append(RedisServer(d, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                              "--cluster-node-timeout", "5000"))
            # What `redis-cli --cluster create` does, without its one-second waits: each node takes
            # a third of the hash slots, then meets the others.
            bounds = [0, 5461, 10923, 16384]
            for i, n in enumerate(self.nodes):
                n.client().execute_command("CLUSTER", "ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
            for n in self.nodes[1:]:
                self.nodes[0].client().execute_command("CLUSTER", "MEET", "127.0.0.1", n.port)
            deadline = time.monotonic() + START_BOUND_S
            while not all(n.client().cluster("info").get("cluster_state") == "ok" for n in self.nodes):
                assert time.monotonic() < deadline, "the cluster did not reach cluster_state:ok"
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def apf_keys(self) -> list[bytes]:
        return sorted(k for n in self.nodes if n.proc.poll() is None for k in n.apf_keys())

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


@pytest.fixture
def redis_server():
    """start(*extra_args, password=None, transport="tcp") -> a running RedisServer (RedisServer
    says what each transport listens on); all stopped and removed after."""
    made: list[RedisServer] = []
    parent = tempfile.mkdtemp(prefix="apf-redis-")

    def start(*extra: str, password: str | None = None, transport: str = "tcp") -> RedisServer:
        d = tempfile.mkdtemp(dir=parent)
        server = RedisServer(d, *extra, password=password, transport=transport)
        made.append(server)
        return server

    yield start
    for s in made:
        s.stop()
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def redis_cluster():
    """A running three-node RedisCluster3; stopped and removed after. Skips, saying so, with a
    redis-server older than 7.0 (the cluster is made with CLUSTER ADDSLOTSRANGE)."""
    from tests.environment import require_redis_version     # it imports this module
    require_redis_version(7, 0, "the test cluster is made with CLUSTER ADDSLOTSRANGE")
    parent = tempfile.mkdtemp(prefix="apf-redis-cluster-")
    cluster = RedisCluster3(parent)
    yield cluster
    cluster.stop()
    shutil.rmtree(parent, ignore_errors=True)
