"""`lynx-sglang bench bookkeeping`: the runtime's per-layer work after a decision, timed on a CPU."""

import pytest
import torch

from lynx_sglang.cli import main as cli_main
from lynx_sglang.kernels.bookkeeping import bookkeeping_for
from lynx_sglang.tools.bench import bookkeeping
from lynx_sglang.tools.bench.bookkeeping import main


def test_prints_a_row_per_shape_and_times_what_it_names(capsys, monkeypatch):
    """A row per (E, T) asked for with the model's k, the cells in the header's order, and the timed
    calls are what they say: the policy's decision, then the C++ and the torch bookkeeping of that
    decision, which agree with each other and keep it (a decision the checks accept)."""
    results = []

    def recording_timer(call, repeats):
        results.append(call())
        return float(len(results))

    monkeypatch.setattr(bookkeeping, "time_cpu", recording_timer)
    assert main(["--experts", "16", "--tokens", "1,5", "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert bookkeeping_for("cpu").name == "cpu"  # the C++ op builds here: both ways are timed
    header = next(line for line in out.splitlines() if line.startswith("policy"))
    assert header.split() == ["policy", "E", "k", "T", "select", "C++:", "checks+mask", "C++:", "+statistics",
                              "torch:", "checks+mask", "torch:", "+statistics"]  # fmt: skip
    rows = [line.split() for line in out.splitlines() if line.startswith("lynx ")]
    assert rows == [["lynx", "16", "8", "1", "1.0", "2.0", "3.0", "4.0", "5.0"],
                    ["lynx", "16", "8", "5", "6.0", "7.0", "8.0", "9.0", "10.0"]]  # fmt: skip
    for num_rows, start in ((1, 0), (5, 5)):
        decision, *ways = results[start : start + 5]
        assert decision.topk_ids.shape == (num_rows, 8)
        for final_ids, final_weights, fell_back, mask in ways:
            assert not fell_back and torch.equal(final_ids, decision.topk_ids)
            assert torch.equal(final_weights, decision.topk_weights)
            used = torch.zeros(16, dtype=torch.bool).index_fill(0, final_ids.flatten().long(), True)
            assert torch.equal(mask, used)  # the experts the final ids use (every row is real)
        cpp, torch_ways = ways[:2], ways[2:]
        for (ids, weights, _, mask), (want_ids, want_weights, _, want_mask) in zip(cpp, torch_ways):
            assert torch.equal(ids, want_ids) and torch.equal(weights, want_weights) and torch.equal(mask, want_mask)


def test_reachable_from_the_cli_and_bad_arguments_are_refused(capsys):
    assert cli_main(["bench", "bookkeeping", "--experts", "8", "--tokens", "2", "--repeats", "1",
                     "--policy", "oea"]) == 0
    assert "oea " in capsys.readouterr().out
    for bad in (["--tokens", "0"], ["--experts", "a"], ["--repeats", "0"], ["--policy", "no-such-policy"]):
        with pytest.raises(SystemExit) as exit_info:
            main(bad)
        assert exit_info.value.code == 2
