"""How `calibrate` turns sweep figures into a config: bands from the levels, per band the cheapest arm
within the bound, one policy for every band."""

import argparse

import pytest
import yaml

from lynx_sglang.config import LynxConfig
from lynx_sglang.experiments import calibrate, sweep
from lynx_sglang.experiments.arms import parse_arms
from lynx_sglang.experiments.calibration import Band, bands_for_levels, choose, config_for, config_yaml
from lynx_sglang.experiments.tasks import Item


def test_bands_start_at_one_and_split_at_the_geometric_mean():
    assert bands_for_levels([8, 32]) == [Band(1, 8), Band(16, 32)]
    assert bands_for_levels([32, 1, 8]) == [Band(1, 1), Band(3, 8), Band(16, 32)]
    assert bands_for_levels([16]) == [Band(1, 16)]
    assert bands_for_levels([1, 2]) == [Band(1, 1), Band(2, 2)]


def sweep_results(points_by_level: dict[int, list[tuple[str, float, float, float]]]) -> dict:
    """points: (arm label, bytes fraction, accuracy diff, lower end of its interval), as fractions."""
    labels = dict.fromkeys(label for points in points_by_level.values() for label, *_ in points)
    arms = [{"label": "baseline", **parse_arms("baseline")[0].request_body()}]
    arms += [{"label": label, **parse_arms(label)[0].request_body()} for label in labels]
    frontiers = [{"concurrency": level, "points": [
        {"arm": "baseline", "bytes_fraction": 1.0, "accuracy_diff": 0.0, "accuracy_diff_ci": [0.0, 0.0]}] + [
        {"arm": label, "bytes_fraction": fraction, "bytes_vs_reference": fraction, "accuracy_diff": diff,
         "accuracy_diff_ci": [low, diff + 0.01]}
        for label, fraction, diff, low in points]} for level, points in points_by_level.items()]
    return {"reference": "baseline", "config": {"arms": arms}, "frontiers": frontiers}


MEASURED = sweep_results({
    8: [("anchor:ratio=0.3", 0.35, -0.010, -0.018), ("anchor:ratio=0.5", 0.45, -0.002, -0.006),
        ("topn:num_experts_kept=2", 0.30, -0.004, -0.006), ("topn:num_experts_kept=3", 0.50, 0.0, -0.003)],
    32: [("anchor:ratio=0.3", 0.38, -0.001, -0.006), ("anchor:ratio=0.5", 0.50, 0.0, -0.004),
         ("topn:num_experts_kept=2", 0.30, -0.05, -0.06), ("topn:num_experts_kept=3", 0.55, -0.001, -0.005)],
})


def test_each_band_takes_its_cheapest_arm_within_the_bound_and_one_policy_wins():
    choice = choose(MEASURED, [8, 32], max_loss_points=1.0, margin_points=0.3)
    # anchor: 0.45 (band 1) and 0.38 (band 2), mean 0.415; topn: 0.30 then 0.55, mean 0.425
    assert choice["policy"] == "anchor"
    assert [c.arm["label"] for c in choice["choices"]] == ["anchor:ratio=0.5", "anchor:ratio=0.3"]
    assert abs(choice["candidates"]["topn"] - 0.425) < 1e-9 and abs(choice["floor_points"] + 0.7) < 1e-9
    config = config_for(choice)
    assert config == {"policy": "anchor", "schedule": [
        {"from_rows": 1, "params": {"ratio": 0.5}, "budget": "none"},
        {"from_rows": 16, "params": {"ratio": 0.3}, "budget": "none"}]}
    text = config_yaml(config, ["made by a test"])
    assert text.startswith("# made by a test\n")
    loaded = LynxConfig(**yaml.safe_load(text))  # what serve --lynx-config reads
    assert [(start, band.params) for start, band in loaded.bands()] == [(1, {"ratio": 0.5}), (16, {"ratio": 0.3})]


def test_a_tighter_bound_drops_a_policy_with_no_arm_in_some_band():
    choice = choose(MEASURED, [8, 32], max_loss_points=0.6, margin_points=0.0)
    # the floor is -0.6 points: anchor has ratio=0.5 at 8 (-0.6) and 32 (-0.4); topn at 32 only =3 (-0.5)
    assert choice["policy"] == "anchor" and choice["candidates"]["topn"] is not None
    tight = choose(MEASURED, [8, 32], max_loss_points=0.35, margin_points=0.0)
    assert tight["policy"] is None and config_for(tight) == {"policy": "baseline"}


def test_the_same_arm_in_every_band_is_one_plain_setting():
    same = sweep_results({8: [("lynx+experts=3:alpha=1", 0.4, 0.0, -0.002)], 32: [("lynx+experts=3:alpha=1", 0.3, 0.0, -0.002)]})
    assert config_for(choose(same, [8, 32], 1.0, 0.3)) == {"policy": "lynx", "params": {"alpha": 1},
                                                          "budget": "experts=3"}


def test_the_sweeps_summary_line_names_the_bound_calibrate_applies():
    """Under calibrate the line applies -(max loss - margin) points and says so, not the sweep's 1 point."""
    results = sweep_results({6: [("topn:num_experts_kept=2", 0.3, -0.002, -0.008)]})  # lower end -0.8 points
    (frontier,) = results["frontiers"]
    assert sweep.goal_line(results, frontier, calibrate.loss_bound(1.0, 0.3)) == (
        "c=6: no arm is within 0.7 points of baseline (max loss 1 point less the 0.3-point margin; "
        "lower end of the 95 % interval)")
    assert choose(results, [6], 1.0, 0.3)["policy"] is None  # the rule the line names
    assert sweep.goal_line(results, frontier).startswith("c=6: fewest expert bytes within 1 point of baseline: topn")
    line = sweep.goal_line(results, frontier, calibrate.loss_bound(1.0, 0.0))
    assert line.startswith("c=6: fewest expert bytes within 1 point of baseline (max loss 1 point, no margin): "
                           "topn:num_experts_kept=2, 70.0 % fewer") and "60 % goal" not in line
    assert choose(results, [6], 1.0, 0.0)["policy"] == "topn"
    assert calibrate.loss_bound(2.0, 0.5).within() == "within 1.5 points"


def test_calibrate_hands_its_bound_to_the_sweep(tmp_path, monkeypatch):
    seen = {}

    def sweep_main(argv, bound=None, restore=True):
        seen["bound"] = bound
        return 3  # stop calibrate right after its sweep

    monkeypatch.setattr(sweep, "main", sweep_main)
    args = argparse.Namespace(max_loss=1.0, margin=0.3, concurrency="6", api_key=None, admin_api_key=None,
                              max_tokens=16, seed=0, score="exact", endpoint="completions", blocks=2, bootstrap=200)
    items = [Item(f"{i}+1=", str(i + 1), "add") for i in range(4)]
    candidates = parse_arms("topn:num_experts_kept=2")
    assert calibrate.calibrate(args, tmp_path, [6], "http://x", "t", candidates, items, items, 0.0) == 3
    assert seen["bound"].points == pytest.approx(0.7)
    assert seen["bound"].why == "max loss 1 point less the 0.3-point margin"


def test_the_config_header_names_the_model_it_was_calibrated_on():
    Namespace, serve_with = argparse.Namespace, calibrate.serve_with
    # both paths as given, so the command holds from where the calibration ran (the file's bare name
    # held only in --out, where a relative model path did not)
    own = serve_with(Namespace(url=None, model_path="models/my moe", out="runs/cal"))
    assert own == ["Calibrated on models/my moe; serve it, from where the calibration ran, with:",
                   "  lynx-sglang serve --model-path 'models/my moe' --lynx-config runs/cal/lynx-config.yaml"]
    assert serve_with(Namespace(url=None, model_path=None, out="c"))[1] == (
        "  lynx-sglang serve --lynx-config c/lynx-config.yaml")
    assert "served at http://h:1" in serve_with(Namespace(url="http://h:1", model_path=None, out="c"))[0]
    text = config_yaml({"policy": "lynx"}, serve_with(Namespace(url=None, model_path="odd\npath", out="c")))
    assert yaml.safe_load(text) == {"policy": "lynx"}  # a newline in the path stays inside the comment
