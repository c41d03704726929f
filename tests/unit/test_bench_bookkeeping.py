"""`lynx-sglang bench bookkeeping`: the runtime's per-layer work after a decision, timed on a CPU."""

import pytest

from lynx_sglang.bench_bookkeeping import main
from lynx_sglang.cli import main as cli_main


def test_prints_a_row_per_shape_with_the_decision_and_both_ways_of_bookkeeping(capsys):
    assert main(["--experts", "16", "--tokens", "1,5", "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert "C++: checks" in out and "torch: +statistics" in out  # the C++ op builds here
    rows = [line.split() for line in out.splitlines() if line.startswith("lynx ")]
    assert [(row[1], row[3]) for row in rows] == [("16", "1"), ("16", "5")]
    for row in rows:
        assert len(row) == 9 and all(float(cell) > 0 for cell in row[4:])


def test_reachable_from_the_cli_and_bad_arguments_are_refused(capsys):
    assert cli_main(["bench", "bookkeeping", "--experts", "8", "--tokens", "2", "--repeats", "1",
                     "--policy", "oea"]) == 0
    assert "oea " in capsys.readouterr().out
    for bad in (["--tokens", "0"], ["--experts", "a"], ["--repeats", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            main(bad)
        assert exit_info.value.code == 2
