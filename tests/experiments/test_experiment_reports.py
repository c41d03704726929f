"""ab's and sweep's figures and files from known blocks (no server): the numbers land where the report
and results.json say they are."""

import argparse
import json

import pytest
from rich.console import Console

from lynx_sglang.experiments import ab, sweep
from lynx_sglang.experiments.arms import Arm
from lynx_sglang.experiments.experiment import Experiment
from lynx_sglang.experiments.store import Block
from lynx_sglang.experiments.tasks import Item

def items(count):
    return [Item(f"{i}+0=", str(i), "add" if i % 2 else "sub") for i in range(count)]


def layer_stats(after: float, before: float = 6.0):
    return {"decode_steps": 10, "pruned_steps": 10, "fallback_steps": 0, "policy_failures": 0,
            "layers": [{"layer": i, "num_experts": 8, "top_k": 2, "expert_bytes": 1_000_000, "steps": 10,
                        "decode_tokens": 100, "distinct_experts_before": before, "distinct_experts_after": after,
                        "tokens_rerouted": 20 if after < before else 0, "router_mass_dropped": 1.0, "fallbacks": 0}
                       for i in range(2)]}


def blocks_for(arm: str, correct: list[bool], concurrency: int, after: float, tpot: float) -> list[Block]:
    """Two blocks, each half of the items."""
    size, out = len(correct) // 2, []
    for index, first in enumerate((0, size)):
        part = correct[first:first + size]
        out.append(Block(concurrency, arm, index, first, part, ["x"] * size, [5] * size, [10.0 + i % 20 for i in range(size)],
                         [tpot + 0.1 * (i % 20) for i in range(size)], [50.0] * size, 1.0 + index * 0.1, layer_stats(after)))
    return out


def experiment(tool, arms, tmp_path, levels=(8,), count=40):
    args = argparse.Namespace(out=str(tmp_path), bootstrap=200, seed=0, task="arithmetic", n=count, score="exact",
                              endpoint="completions", max_tokens=16, blocks=2, url=None, model_path=None, serve_arg=[])
    return Experiment(tool, args, arms, list(levels), items(count))


RUN_INFO = {"status": "complete", "message": None, "seconds": 12.0, "blocks": 4,
            "versions": {"packages": {"scipy": "x"}, "python": "3", "machine": "2-core CPU",
                         "model": {"name": "embedded", "weights_sha256": "0" * 64}}}


def test_ab_results_and_report(tmp_path):
    a_correct = [True] * 36 + [False] * 4
    b_correct = [True] * 30 + [False] * 10  # B loses 6 items, gains none
    arms = [Arm("baseline"), Arm("topn", {"num_experts_kept": 3})]
    exp = experiment("ab", arms, tmp_path)
    blocks = blocks_for("baseline", a_correct, 8, 6.0, 20.0) + blocks_for(arms[1].label, b_correct, 8, 3.0, 15.0)
    results = ab.analyse(exp, blocks, RUN_INFO)
    (c,) = results["comparisons"]
    assert c["concurrency"] == 8 and c["items"] == 40
    assert c["accuracy_a"] == 0.9 and c["accuracy_b"] == 0.75 and c["accuracy_diff"] == pytest.approx(-0.15)
    assert c["accuracy_diff_ci"][0] < -0.15 < c["accuracy_diff_ci"][1] < 0
    assert c["mcnemar_p"] == pytest.approx(2 * 0.5**6) and (c["only_a_correct"], c["only_b_correct"]) == (6, 0)
    assert c["expert_bytes_per_decode_token_a"] == pytest.approx(2 * 6 * 1e6 * 10 / 100)  # layers x experts x bytes x steps / tokens
    assert c["expert_bytes_fraction_b"] == pytest.approx(0.5) and c["expert_bytes_ratio"] == pytest.approx(0.5)
    assert c["tpot_median_ms_b"] < c["tpot_median_ms_a"] and c["tpot_median_ratio"] == pytest.approx(16.0 / 21.0, rel=0.02)
    assert set(c["by_task"]) == {"add", "sub"} and sum(t["items"] for t in c["by_task"].values()) == 40

    ab.publish(exp, results, Console(file=open(tmp_path / "console.txt", "w")))
    report = (tmp_path / "report.md").read_text()
    assert "# A/B: A = baseline, B = topn:num_experts_kept=3" in report
    assert "B is significantly less accurate" in report and "within 1 point: no" in report
    assert "50.0 % fewer than the model's routing" in report
    for name in ("accuracy_vs_expert_bytes.png", "experts_per_layer.png", "latency.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_sweep_frontier_and_goal(tmp_path):
    arms = [Arm("baseline"), Arm("oea", {"k0": 1}), Arm("topn", {"num_experts_kept": 2}), Arm("random", {"num_experts_kept": 4})]
    exp = experiment("sweep", arms, tmp_path, levels=(32,), count=2000)
    right = [True] * 2000
    blocks = (blocks_for("baseline", right, 32, 6.0, 20.0) + blocks_for(arms[1].label, right, 32, 2.0, 20.0)
              + blocks_for(arms[2].label, [True] * 1000 + [False] * 1000, 32, 1.0, 20.0)
              + blocks_for(arms[3].label, [False] * 2000, 32, 4.0, 20.0))
    results = sweep.analyse(exp, blocks, RUN_INFO)
    (frontier,) = results["frontiers"]
    points = {p["arm"]: p for p in frontier["points"]}
    assert [p["arm"] for p in frontier["points"]] == ["topn:num_experts_kept=2", "oea:k0=1", "random:num_experts_kept=4", "baseline"]
    assert points["oea:k0=1"]["on_frontier"] and points["topn:num_experts_kept=2"]["on_frontier"]
    assert not points["random:num_experts_kept=4"]["on_frontier"] and not points["baseline"]["on_frontier"]
    assert points["oea:k0=1"]["bytes_fraction"] == pytest.approx(1 / 3)
    assert points["oea:k0=1"]["meets_goal"] and not points["topn:num_experts_kept=2"]["meets_goal"]
    assert "oea:k0=1, 66.7 % fewer" in sweep.goal_line(results, frontier) and "meets the 60 % goal" in sweep.goal_line(results, frontier)
    sweep.publish(exp, results, Console(file=open(tmp_path / "console.txt", "w")))
    assert (tmp_path / "frontier_c32.png").stat().st_size > 10_000
    assert "| oea:k0=1 |" in (tmp_path / "report.md").read_text()


def test_no_arm_is_within_a_point_on_a_small_sample(tmp_path):
    """40 items cannot rule out a one-point loss, even with identical answers."""
    arms = [Arm("baseline"), Arm("oea", {"k0": 1})]
    exp = experiment("sweep", arms, tmp_path, levels=(32,))
    blocks = blocks_for("baseline", [True] * 40, 32, 6.0, 20.0) + blocks_for(arms[1].label, [True] * 40, 32, 2.0, 20.0)
    results = sweep.analyse(exp, blocks, RUN_INFO)
    (frontier,) = results["frontiers"]
    assert not any(p["meets_goal"] for p in frontier["points"])
    assert "no arm is within 1 point of baseline" in sweep.goal_line(results, frontier)
    json.dumps(results, default=float)  # every figure serialises


def test_the_frontier_plot_numbers_every_arm_and_zooms_where_they_crowd(tmp_path):
    import matplotlib.image

    from lynx_sglang.experiments import plots

    def point(arm, fraction, accuracy, front=False):
        return {"arm": arm, "bytes_fraction": fraction, "accuracy": accuracy,
                "accuracy_ci": [accuracy - 0.01, accuracy + 0.01], "on_frontier": front}

    crowded = [point("baseline", 1.0, 0.93, True), point("far", 0.3, 0.70, True)]
    crowded += [point(f"near-{i}", 0.40 + i / 100, 0.93 - i / 1000, i == 0) for i in range(12)]
    lines = plots.legend_lines(sorted(crowded, key=lambda p: p["bytes_fraction"]), "baseline")
    assert lines[0] == " 1  far" and lines[-1] == "14  baseline  (reference)" and len(lines) == 14
    zoomed = matplotlib.image.imread(tmp_path / plots.frontier(crowded, 32, tmp_path / "z.png", reference="baseline"))
    plain = matplotlib.image.imread(tmp_path / plots.frontier(crowded[:3], 32, tmp_path / "p.png", reference="baseline"))
    assert zoomed.shape[1] > plain.shape[1] * 1.3  # the zoom panel is there only when arms crowd near the reference


def test_the_zoom_holds_the_arms_near_the_reference_not_their_wide_intervals():
    """A run of 40 items: intervals of +-12 points made the zoom span 10-35 %, arms 5-7 points below too."""
    from lynx_sglang.experiments.plots import zoom_limits

    def point(fraction, accuracy):
        return {"bytes_fraction": fraction, "accuracy": accuracy, "accuracy_ci": [accuracy - 0.12, accuracy + 0.12]}

    ref = point(1.0, 0.25)
    (x_low, x_high), (y_low, y_high) = zoom_limits([point(0.5, 0.24), point(0.6, 0.26)], ref, "bytes_fraction")
    assert x_low < 0.5 and 0.6 < x_high < 0.7
    assert (y_low, y_high) == pytest.approx((22.5, 26.5))  # the 2 points below the reference, 0.5 around
