"""A remote swap that cannot be used is refused at start, on one line, with exit 2 and nothing
left behind: an unreachable server, a URL the client cannot take, a password on the command
line, credentials refused, the wrong kind of server (TLS to a plain one too), a cluster with a node
down."""
import os
import time

import pytest

from tests.helpers import apf, refusal
from tests.redis_server import free_port, require_tls

HOST = ["--guest-mem", "1MiB", "--host-mem", "256KiB", "--once"]


def _refused(run_dir: str, *args: str) -> str:
    line = refusal(apf("host", "--run-dir", run_dir, *HOST, *args, timeout=30))
    assert not os.path.exists(run_dir) or os.listdir(run_dir) == []
    return line


@pytest.mark.parametrize("url, message", [
    ("redis://u:secret@127.0.0.1:6379", "apf host: error: --swap: the URL carries a password; put it in "
     "--swap-password-file instead (a command line is visible to every user of the machine)"),
    ("redis://127.0.0.1:http", "apf host: error: --swap redis://127.0.0.1:http: port 'http' is not a number "
     "from 1 to 65535"),
    ("redis://127.0.0.1:6379/zero", "apf host: error: --swap redis://127.0.0.1:6379/zero: database 'zero' "
     "is not a number"),
    ("unix://relative.sock", "apf host: error: --swap unix://relative.sock: a Unix socket is written "
     "unix:///PATH/redis.sock (an absolute path)"),
    ("http://127.0.0.1:6379", "apf host: error: --swap http://127.0.0.1:6379: not a file path nor a URL of "
     "redis://, rediss://, unix://, redis+cluster://"),
    ("redis:127.0.0.1:6379", "apf host: error: --swap redis:127.0.0.1:6379: not a file path nor a URL of "
     "redis://, rediss://, unix://, redis+cluster://"),
])
def test_urls_the_client_cannot_take_are_refused_before_anything_starts(run_dir, url, message):
    """Each malformed URL: its own one-line message, exit 2."""
    assert _refused(run_dir, "--swap", url) == message


def test_an_unreachable_server_is_named(run_dir):
    """No server on the port: the error names the endpoint and the reason."""
    port = free_port()
    assert _refused(run_dir, "--swap", f"redis://127.0.0.1:{port}") == (
        f"apf host: error: --swap redis://127.0.0.1:{port}/0: cannot reach 127.0.0.1:{port}: Connection refused")


def test_credentials_refused_and_accepted(run_dir, tmp_path, redis_server, host):
    """A server with a password: none, or a wrong one, is refused with a message saying where the
    password goes; the right one from --swap-password-file works, and host.json never holds it."""
    server = redis_server(password="s3cret-pw")
    assert "wants a password" in _refused(run_dir, "--swap", server.url)
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    assert "refused the credentials" in _refused(run_dir, "--swap", server.url, "--swap-password-file", str(wrong))
    right = tmp_path / "right"
    right.write_text("s3cret-pw\n")
    h = host(*HOST, "--swap", server.url, "--swap-password-file", str(right))
    with open(os.path.join(run_dir, "host.json"), encoding="utf-8") as f:
        assert "s3cret-pw" not in f.read()
    assert h.info["swap_endpoint"] == f"redis://127.0.0.1:{server.port}/0"
    h.stop()
    assert server.apf_keys() == []


def test_the_wrong_kind_of_server_is_refused(run_dir, redis_server):
    """A cluster URL for a plain server, with a hint at the right form."""
    server = redis_server()
    assert _refused(run_dir, "--swap", "redis+cluster://127.0.0.1:%d" % server.port) == (
        f"apf host: error: --swap redis+cluster://127.0.0.1:{server.port}: the server is not in cluster mode; "
        "use redis://HOST:PORT for a single server")


def test_a_single_server_url_pointed_at_a_cluster_node_is_refused(run_dir, redis_cluster):
    """`redis://` naming one node of a cluster would swap into a third of the hash slots and get
    MOVED for the rest: refused at start, in one line naming the node and the URL form to use,
    and no key is written."""
    node = redis_cluster.nodes[0]
    assert _refused(run_dir, "--swap", f"redis://127.0.0.1:{node.port}") == (
        f"apf host: error: --swap redis://127.0.0.1:{node.port}/0: 127.0.0.1:{node.port} is a cluster node; "
        f"use redis+cluster://127.0.0.1:{node.port}")
    assert redis_cluster.apf_keys() == []


def test_a_tls_url_for_a_plain_server_says_the_handshake_failed(run_dir, redis_server):
    """`rediss://` to a server that speaks plain RESP on that port: not a timeout but the TLS
    handshake named as what failed, within a bound of a few --swap-timeouts."""
    server = redis_server()
    started = time.monotonic()
    line = _refused(run_dir, "--swap", f"rediss://127.0.0.1:{server.port}", "--swap-timeout", "300ms")
    assert time.monotonic() - started < 10
    assert line == (f"apf host: error: --swap rediss://127.0.0.1:{server.port}/0: the TLS handshake with "
                    f"127.0.0.1:{server.port} failed: the server did not speak TLS: it answered plain RESP on "
                    "that port (use a URL without TLS, e.g. redis://, or the server's --tls-port)")


def test_a_tls_server_whose_certificate_is_not_trusted_is_named(run_dir, redis_server):
    """`rediss://` without the CA that signed the server's certificate: the handshake's own
    reason, and where the CA goes."""
    require_tls()
    server = redis_server(transport="tls")
    assert _refused(run_dir, "--swap", f"rediss://127.0.0.1:{server.port}") == (
        f"apf host: error: --swap rediss://127.0.0.1:{server.port}/0: the TLS handshake with 127.0.0.1:"
        f"{server.port} failed: its certificate is not trusted: self-signed certificate in certificate chain "
        "(name the CA that signed it with ?ssl_ca_certs=FILE)")


def test_a_remote_swap_refuses_file_options(run_dir):
    """--direct-io and --io-engine are for a swap file."""
    assert "--direct-io is for a swap file" in _refused(run_dir, "--swap", "redis://127.0.0.1:1", "--direct-io")
    assert "leave --io-engine at auto" in _refused(run_dir, "--swap", "redis://127.0.0.1:1", "--io-engine", "aio")
