"""The daemons' log lines on stderr, with --log-level given after the command."""
import os

from protocol.hypercalls import FuncId
from protocol.messages import Hvc, Kind
from tests.helpers import RawGuest, apf


def test_host_logs_start_guest_attached_and_shutdown(host):
    """`apf host --log-level info` writes, in order, a line when it is ready, when a guest attaches,
    when the guest powers off and when the host stops."""
    h = host("--log-level", "info", "--guest-mem", "1MiB", "--host-mem", "256KiB", "--vcpus", "1")
    g = RawGuest(h.info, name="logged")
    try:
        assert g.hello().KIND == Kind.WELCOME
        assert g.request(g.ctl, Hvc(0, 0, int(FuncId.PSCI_SYSTEM_OFF), ())).KIND == Kind.HVC_RET
    finally:
        g.close()
    assert h.stop() == 0
    lines = h.stderr.splitlines()
    expected = [f"apf.host INFO host ready on {h.info['endpoint']}",
                f"apf.host INFO guest 'logged' (pid {os.getpid()}, 1 vCPUs) attached",
                "apf.host INFO guest 'logged' detached (guest powered off)",
                "apf.host INFO host stopped"]
    found = [next((i for i, line in enumerate(lines) if want in line), None) for want in expected]
    assert None not in found, (expected, h.stderr)
    assert found == sorted(found), "in the order they happened"


def test_default_level_keeps_the_host_quiet(host):
    """Without --log-level the host writes nothing to stderr in a clean start, a STATS request and
    a stop."""
    h = host("--guest-mem", "1MiB", "--host-mem", "256KiB")
    assert apf("stats", "--run-dir", h.run_dir, "--json", timeout=30).returncode == 0   # serving now
    assert h.stop() == 0
    assert h.stderr.strip() == ""


def test_log_level_after_the_command_is_checked():
    """--log-level after the command takes the same choices as before it."""
    proc = apf("host", "--log-level", "loud", "--run-dir", "/nonexistent/r", "--guest-mem", "1MiB",
               "--host-mem", "256KiB", timeout=30)
    assert proc.returncode == 2
    assert "argument --log-level: invalid choice: 'loud'" in proc.stderr
