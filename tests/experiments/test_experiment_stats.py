"""Statistics helpers of the experiments against known values, and the merging of server stats."""

import math

import numpy as np
import pytest

from lynx_sglang.experiments import stats
from lynx_sglang.experiments.analysis import merge_server_stats
from lynx_sglang.experiments.runner import block_slices, plan_blocks
from lynx_sglang.experiments.arms import Arm


def paired(both, only_a, only_b, neither):
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    return a, b


def test_wilson_interval_matches_the_closed_form():
    correct, total, z = 170, 200, 1.959963984540054
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    assert stats.accuracy_interval(correct, total) == pytest.approx((centre - half, centre + half), abs=1e-9)
    low, high = stats.accuracy_interval(0, 50)
    assert low == 0 and 0 < high < 0.1


def test_mcnemar_exact_p_values():
    assert stats.mcnemar_exact(*paired(100, 0, 0, 20)) == stats.McNemar(0, 0, 1.0)
    # 10 discordant pairs all favouring A: p = 2 * 0.5**10
    assert stats.mcnemar_exact(*paired(100, 10, 0, 20)).p_value == pytest.approx(2 * 0.5**10)
    # 3 vs 5: symmetric two-sided binomial, p = 2 * P(X <= 3 | n=8)
    expected = 2 * sum(math.comb(8, i) for i in range(4)) / 2**8
    result = stats.mcnemar_exact(*paired(50, 5, 3, 10))
    assert (result.only_a, result.only_b) == (5, 3) and result.p_value == pytest.approx(expected)


def test_newcombe_interval_reproduces_a_published_example():
    # Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables" (2017), chapter 8:
    # complete response before (rows) and after (columns) consolidation therapy, Cavo et al. (2012),
    # table [[59, 6], [16, 80]]: Newcombe square-and-add, estimate -0.0621, 95 % CI -0.1186 to -0.0046.
    a, b = paired(59, 16, 6, 80)  # B = rows (before), A = columns (after)
    low, high = stats.paired_difference_interval(a, b)
    assert (low, high) == pytest.approx((-0.1186, -0.0046), abs=6e-5)


def test_identical_arms_give_a_symmetric_interval_around_zero():
    a, _ = paired(1700, 0, 0, 300)
    low, high = stats.paired_difference_interval(a, a)
    assert low < 0 < high and low == pytest.approx(-high, abs=1e-3) and high < 0.01


def test_difference_interval_excludes_zero_exactly_when_the_loss_is_clear():
    clear = stats.paired_difference_interval(*paired(1600, 60, 10, 330))
    unclear = stats.paired_difference_interval(*paired(1600, 12, 8, 380))
    assert clear[1] < 0 and unclear[0] < 0 < unclear[1]
    assert clear[0] < -0.025 < clear[1]  # the estimate, -50/2000, lies inside


def test_quantile_interval_brackets_the_estimate():
    values = np.random.default_rng(0).exponential(10.0, 2000)
    median, low, high = stats.quantile_interval(values, 0.5, resamples=1000)
    assert low < median < high and median == pytest.approx(10 * math.log(2), rel=0.1)
    assert stats.quantile_interval([5.0, 5.0, None], 0.9) == (5.0, 5.0, 5.0)


def test_ratio_of_medians_is_paired_and_scale_free():
    a = np.random.default_rng(1).gamma(4.0, 5.0, 500)
    estimate, low, high = stats.paired_ratio_of_medians(a, 0.5 * a)
    assert estimate == pytest.approx(0.5) and low == pytest.approx(0.5) and high == pytest.approx(0.5)


def test_ratio_of_medians_takes_its_interval_over_blocks_where_the_machine_moved_them():
    # Identical arms on a shared machine: each block's load moved B against A by a few per cent, the
    # same for all its items (the arms ran a block side by side). Resampling items as independent
    # called that a significant difference; an interval over the blocks does not.
    rng = np.random.default_rng(3)
    blocks = np.repeat(np.arange(4), 100)
    a = rng.gamma(50.0, 0.4, 400)
    b = a * np.array([1.12, 1.02, 0.97, 1.06])[blocks] * rng.normal(1.0, 0.01, 400)
    _, item_low, item_high = stats.paired_ratio_of_medians(a, b, resamples=1000)
    estimate, low, high = stats.paired_ratio_of_medians(a, b, blocks=blocks, resamples=1000)
    assert item_low > 1.0  # the item bootstrap's verdict: B slower
    assert low < 1.0 < high and low <= estimate <= high
    # A difference every block shows stays significant; fewer than three blocks resample items
    _, low, high = stats.paired_ratio_of_medians(a, a * 1.2 * np.array([1.02, 0.99, 1.01, 1.0])[blocks], blocks=blocks,
                                                 resamples=1000)  # fmt: skip
    assert 1.15 < low < high < 1.25
    two = stats.paired_ratio_of_medians(a[:200], b[:200], blocks=blocks[:200], resamples=1000)
    assert two == stats.paired_ratio_of_medians(a[:200], b[:200], resamples=1000)


def test_throughput_ratio_from_blocks():
    estimate, low, high = stats.paired_ratio_of_sums([100, 100, 100, 100], [1, 1, 1, 1], [150, 160, 140, 150], [1, 1, 1, 1],
                                                     resamples=500)
    assert estimate == pytest.approx(1.5) and 1.4 <= low <= 1.5 <= high <= 1.6
    assert math.isnan(stats.paired_ratio_of_sums([1, 1], [1, 1], [2, 2], [1, 1])[1])  # too few blocks


def test_non_dominated_points():
    points = [(1.0, 0.80), (2.0, 0.90), (2.0, 0.85), (3.0, 0.90), (0.5, 0.50), (1.0, 0.80)]
    assert stats.non_dominated(points) == [True, True, False, False, True, True]


def layer(index, steps, tokens, before, after, rerouted=0, dropped=0.0):
    return {"layer": index, "num_experts": 8, "top_k": 2, "expert_bytes": 1000, "steps": steps, "decode_tokens": tokens,
            "distinct_experts_before": before, "distinct_experts_after": after, "tokens_rerouted": rerouted,
            "router_mass_dropped": dropped, "fallbacks": 0}


def test_server_stats_merge_weights_means_by_steps_and_bytes_by_tokens():
    first = {"decode_steps": 10, "pruned_steps": 10, "layers": [layer(0, 10, 100, 8.0, 4.0, 20), layer(1, 10, 100, 6.0, 6.0)]}
    second = {"decode_steps": 30, "pruned_steps": 30, "layers": [layer(0, 30, 900, 7.0, 3.0, 30), layer(1, 30, 900, 6.0, 5.0)]}
    merged = merge_server_stats([first, second])
    zero = merged["layers"][0]
    assert zero["distinct_experts_before"] == pytest.approx((10 * 8 + 30 * 7) / 40)
    assert zero["expert_bytes_per_decode_token_after"] == pytest.approx((10 * 4 + 30 * 3) * 1000 / 1000)
    assert zero["tokens_rerouted_fraction"] == pytest.approx(50 / 1000)
    assert merged["decode_steps"] == 40
    assert merged["decode_batch"] == pytest.approx(2000 / 80)  # decode tokens per step, every layer counted alike
    assert merged["expert_bytes_per_decode_token_before"] == pytest.approx(
        sum(l["expert_bytes_per_decode_token_before"] for l in merged["layers"]))
    assert merged["cache_misses_per_decode_token"] is None  # no expert cache on that server


def test_expert_cache_misses_add_up_over_blocks_and_layers():
    from lynx_sglang.experiments.store import compact_stats

    def served(misses, tokens):
        cache = {"policy": "lru", "cache_hits": 0, "layers": [
            {"layer": i, "cache_hits": 5, "cache_misses": m + 1, "decode_misses": m, "decode_prefetched": 0,
             "decode_tokens": tokens, "slots": 2} for i, m in enumerate(misses)]}
        return compact_stats({"decode_steps": 1, "layers": [layer(0, 1, tokens, 2.0, 2.0)], "expert_cache": cache})

    merged = merge_server_stats([served([3, 5], 10), served([1, 1], 30)])
    assert merged["cache_misses_per_decode_token"] == pytest.approx((3 + 5 + 1 + 1) / 40)


def test_blocks_cover_the_items_and_arms_alternate():
    assert block_slices(10, 4) == [(0, 3), (3, 3), (6, 2), (8, 2)]
    assert block_slices(3, 8) == [(0, 1), (1, 1), (2, 1)]
    a, b = Arm("baseline"), Arm("lynx")
    steps = plan_blocks([a, b], [8, 32], 10, 2)
    assert [(s.concurrency, s.block, s.arm.policy) for s in steps] == [
        (8, 0, "baseline"), (8, 0, "lynx"), (8, 1, "lynx"), (8, 1, "baseline"),
        (32, 0, "baseline"), (32, 0, "lynx"), (32, 1, "lynx"), (32, 1, "baseline")]
