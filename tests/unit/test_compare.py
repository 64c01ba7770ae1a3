"""`python -m apf.compare`: the one-line comparison `make demo` prints."""
import json

from apf.compare import compare, main


def test_compare_reports_the_ratio_and_stalls():
    """The line names both modes, the wall-time ratio and both stall figures."""
    line = compare({"mode": "sync", "wall_s": 4.0, "vcpu_stall_s": 3.5},
                   {"mode": "async", "wall_s": 1.0, "vcpu_stall_s": 0.5})
    assert line.startswith("async wall time is 0.25 of sync") and "3.500s -> 0.500s" in line


def test_compare_cli_errors(tmp_path, capsys):
    """Wrong arguments or an unreadable report give exit 2 and a message, not a traceback."""
    assert main([]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main([str(bad), str(bad)]) == 2
    assert "apf.compare: error" in capsys.readouterr().err
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"mode": "sync", "wall_s": 2.0, "vcpu_stall_s": 1.0}))
    assert main([str(good), str(good)]) == 0
