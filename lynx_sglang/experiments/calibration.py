"""How `lynx-sglang calibrate` turns a sweep into one config: bands over the decode batch size, and per
band the candidate that reads the fewest expert bytes while its accuracy loss stays bounded.

Each concurrency level of the calibration sweep stands for the band of decode batch sizes around it:
with levels 8 and 32 the bands are 1-15 rows and 16 rows up (the boundary is the geometric mean of
neighbouring levels, rounded). One policy serves every band (a schedule varies its parameters and
budget, not the policy): for each policy among the candidates, each band takes that policy's arm with
the fewest expert bytes (as a fraction of the model's own routing of the same steps) whose paired
accuracy difference has the lower end of its 95 % interval at or above -(max_loss - margin) points;
the policy whose chosen arms read the fewest bytes on average over the bands wins. A policy with no
such arm in some band is not eligible; with no eligible policy the result is `baseline`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import yaml

from .analysis import within_points


@dataclass(frozen=True)
class Band:
    from_rows: int
    level: int  # the concurrency level whose measurements stand for this band


@dataclass(frozen=True)
class Choice:
    band: Band
    arm: dict  # the sweep's arm: label, policy, params, budget
    bytes_fraction: float
    accuracy_diff: float
    accuracy_diff_ci: tuple[float, float]


def bands_for_levels(levels: list[int]) -> list[Band]:
    """One band per concurrency level; the first starts at 1 row, each later one at the rounded
    geometric mean of its level and the previous one."""
    levels = sorted(set(levels))
    bands = [Band(1, levels[0])]
    for previous, level in zip(levels, levels[1:]):
        bands.append(Band(max(bands[-1].from_rows + 1, round(math.sqrt(previous * level))), level))
    return bands


def eligible_points(frontier: dict, reference: str, floor: float) -> list[dict]:
    """The sweep's arms at one level whose accuracy difference's lower end is at or above `floor`
    (a fraction, e.g. -0.007 for -0.7 points), with their bytes measured."""
    return [p for p in frontier["points"] if p["arm"] != reference and p["bytes_fraction"] is not None
            and within_points(p, -floor)]


def choose(sweep_results: dict, levels: list[int], max_loss_points: float, margin_points: float) -> dict:
    """{"policy": name or None, "choices": [Choice per band], "candidates": {policy: mean bytes or None}}."""
    reference = sweep_results["reference"]
    arms = {arm["label"]: arm for arm in sweep_results["config"]["arms"]}
    frontiers = {f["concurrency"]: f for f in sweep_results["frontiers"]}
    floor = -(max_loss_points - margin_points) / 100
    bands = bands_for_levels(levels)
    policies = list(dict.fromkeys(arm["policy"] for label, arm in arms.items() if label != reference))
    per_policy: dict[str, list[Choice] | None] = {}
    for policy in policies:
        chosen = []
        for band in bands:
            frontier = frontiers.get(band.level)
            points = [p for p in eligible_points(frontier, reference, floor) if arms[p["arm"]]["policy"] == policy] \
                if frontier else []
            if not points:
                chosen = None
                break
            best = min(points, key=lambda p: (p["bytes_fraction"], -p["accuracy_diff"]))
            chosen.append(Choice(band, arms[best["arm"]], best["bytes_fraction"], best["accuracy_diff"],
                                 tuple(best["accuracy_diff_ci"])))
        per_policy[policy] = chosen
    scores = {policy: None if chosen is None else sum(c.bytes_fraction for c in chosen) / len(chosen)
              for policy, chosen in per_policy.items()}
    eligible = [policy for policy, score in scores.items() if score is not None]
    winner = min(eligible, key=lambda policy: scores[policy]) if eligible else None
    return {"policy": winner, "choices": per_policy[winner] if winner else [], "candidates": scores,
            "bands": bands, "floor_points": 100 * floor}


def config_for(choice: dict) -> dict:
    """The lynx-config.yaml content: one setting when every band chose the same arm, else a schedule."""
    choices = choice["choices"]
    if not choices:
        return {"policy": "baseline"}
    first = choices[0].arm
    if all(c.arm["label"] == first["label"] for c in choices):
        config = {"policy": first["policy"], "params": dict(first["params"])}
        if first.get("budget"):
            config["budget"] = first["budget"]
        return config
    schedule = []
    for c in choices:
        band = {"from_rows": c.band.from_rows, "params": dict(c.arm["params"])}
        band["budget"] = c.arm.get("budget") or "none"
        schedule.append(band)
    return {"policy": first["policy"], "schedule": schedule}


def config_yaml(config: dict, header: list[str]) -> str:
    lines = [f"# {' '.join(line.splitlines())}" for line in header]  # a newline in a path would end the comment
    return "\n".join(lines) + "\n" + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
