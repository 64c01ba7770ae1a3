"""Remote swap URLs: what each form means, how it is shown (never with credentials), and the
exact refusal of each malformed one."""
import pytest

from host.swapio.endpoint import is_remote, parse_endpoint
from protocol.errors import ConfigError


@pytest.mark.parametrize("url, backend, text, nodes, db", [
    ("redis://127.0.0.1:7000", "redis", "redis://127.0.0.1:7000/0", ((("127.0.0.1", 7000),)), 0),
    ("redis://app@cache.example:7000/3", "redis", "redis://cache.example:7000/3", ((("cache.example", 7000),)), 3),
    ("redis://[::1]:7000", "redis", "redis://[::1]:7000/0", ((("::1", 7000),)), 0),
    ("redis://localhost", "redis", "redis://localhost:6379/0", ((("localhost", 6379),)), 0),
    ("rediss://h:7000?ssl_ca_certs=/ca.pem", "redis", "rediss://h:7000/0", ((("h", 7000),)), 0),
    ("redis+cluster://a:1,b:2,c:3", "redis-cluster", "redis+cluster://a:1,b:2,c:3",
     (("a", 1), ("b", 2), ("c", 3)), 0),
])
def test_urls_parse_to_nodes_and_show_without_credentials(url, backend, text, nodes, db):
    """Each accepted form: its back-end, its nodes and database, and its text without the user."""
    ep = parse_endpoint(url)
    assert (ep.backend, ep.text, ep.nodes, ep.db) == (backend, text, nodes, db)


def test_a_unix_socket_and_tls_options():
    """unix:///PATH takes ?db=N; rediss:// passes the client's SSL options on."""
    ep = parse_endpoint("unix:///run/redis/redis.sock?db=2")
    assert (ep.path, ep.db, ep.text) == ("/run/redis/redis.sock", 2, "unix:///run/redis/redis.sock?db=2")
    assert parse_endpoint("rediss://h:1?ssl_cert_reqs=none").tls == {"ssl_cert_reqs": "none"}
    assert parse_endpoint("redis://u@h:1").username == "u"


@pytest.mark.parametrize("url, message", [
    ("redis://u:pw@h:1", "--swap: the URL carries a password; put it in --swap-password-file instead "
                         "(a command line is visible to every user of the machine)"),
    ("redis://h:1?password=pw", "--swap: the URL carries a password; put it in --swap-password-file instead "
                                "(a command line is visible to every user of the machine)"),
    ("redis://:1", "--swap redis://:1: no host before :1"),
    ("redis://h:0", "--swap redis://h:0: port '0' is not a number from 1 to 65535"),
    ("redis://h:1?ssl_ca_certs=x", "--swap redis://h:1?ssl_ca_certs=x: unknown option ssl_ca_certs"),
    ("redis+cluster://a:1/2", "--swap redis+cluster://a:1/2: a cluster has one database only; drop the /2"),
])
def test_malformed_urls_are_refused_with_their_reason(url, message):
    with pytest.raises(ConfigError, match=r"^" + __import__("re").escape(message) + r"$"):
        parse_endpoint(url)


def test_only_known_schemes_are_remote():
    """A path, even one with a colon, stays a swap file."""
    assert is_remote("redis://h:1") and is_remote("unix:///s.sock") and is_remote("redis+cluster://a:1")
    assert not is_remote("/tmp/swap") and not is_remote("swap:file") and not is_remote(None)
    assert not is_remote("http://h:1")
