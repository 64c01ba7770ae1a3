"""`apf bench --out`: one kind of results per folder (apf/bench/outdir.py), with real folders."""
import json

import pytest

from apf.bench import outdir
from apf.bench.cli import main
from protocol.errors import BenchError


def test_kind_names_the_options_that_choose_the_files():
    """The kind is the selecting options in a fixed order; sweep sizes do not change it."""
    assert outdir.kind({}) == outdir.kind({"repeat": 7, "latencies": "0,1ms"}) == "default"
    assert outdir.kind({"quick": True}) == "quick"
    assert outdir.kind({"only": ["sweep", "haltpoll"]}) == outdir.kind({"only": ["haltpoll", "sweep"]}) \
        == "only=haltpoll+sweep"
    assert outdir.kind({"preset": ["b", "a"], "quick": True}) == "quick preset=a+b"
    assert outdir.kind({"validate": True, "quick": True}) == "validate"


def test_a_folder_of_another_kind_is_refused_and_the_same_kind_passes(tmp_path):
    """Empty or missing: passes. Marked with the same kind: passes. Marked with another kind, or
    holding files and no marker: BenchError naming both and a subfolder to use."""
    out = tmp_path / "bench-out"
    outdir.check(str(out), "quick")
    out.mkdir()
    outdir.check(str(out), "quick")
    outdir.mark(str(out), "quick")
    (out / "results.json").write_text("{}")
    outdir.check(str(out), "quick")
    with pytest.raises(BenchError, match=r"^--out .*bench-out already holds results of another kind \(quick\), "
                       r"and this run \(micro\) would mix its files with them: give an empty or new folder, "
                       r"e\.g\. .*bench-out/micro$"):
        outdir.check(str(out), "micro")
    (out / outdir.MARKER).unlink()
    with pytest.raises(BenchError, match="holds files of something other than apf bench"):
        outdir.check(str(out), "quick")


def test_apf_bench_refuses_before_running_and_leaves_the_folder_as_it_was(tmp_path, capsys):
    """The CLI: exit 2, one line, the earlier results untouched."""
    out = tmp_path / "out"
    out.mkdir()
    (out / outdir.MARKER).write_text(json.dumps({"kind": "micro"}))
    (out / "results.json").write_text('{"kept": true}')
    assert main({"out": str(out), "quick": True}) == 2
    err = capsys.readouterr().err
    assert err.startswith("apf bench: error: --out ") and "(micro)" in err and err.count("\n") == 1
    assert (out / "results.json").read_text() == '{"kept": true}'
    assert json.loads((out / outdir.MARKER).read_text()) == {"kind": "micro"}
