"""Statistics of an experiment, all from scipy.stats: Wilson intervals for accuracy, McNemar's exact
test and Newcombe's score interval for the paired accuracy difference, bootstrap intervals for latency
quantiles and ratios. Every interval is 95 % and every bootstrap is seeded, so a report is
reproducible."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 4000


@dataclass(frozen=True)
class McNemar:
    only_a: int  # items arm A got right and arm B wrong
    only_b: int
    p_value: float


def accuracy_interval(correct: int, total: int) -> tuple[float, float]:
    """Wilson score interval of a proportion (sensible at 0 % and 100 %, unlike the normal one)."""
    if total == 0:
        return (float("nan"), float("nan"))
    interval = stats.binomtest(correct, total).proportion_ci(CONFIDENCE, method="wilson")
    return (float(interval.low), float(interval.high))


def mcnemar_exact(a_correct, b_correct) -> McNemar:
    """McNemar's exact test on paired outcomes: under 'no difference' each discordant pair is equally
    likely to favour either arm, so the count favouring B is Binomial(discordant, 1/2)."""
    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    if only_a + only_b == 0:
        return McNemar(0, 0, 1.0)
    return McNemar(only_a, only_b, float(stats.binomtest(only_b, only_a + only_b, 0.5).pvalue))


def paired_difference_interval(a_correct, b_correct) -> tuple[float, float]:
    """Interval of accuracy(B) - accuracy(A) on the same items: Newcombe's hybrid score interval for
    paired proportions (Newcombe 1998, method 10), built from the two Wilson intervals and the
    correlation of the paired outcomes. Unlike a bootstrap it stays honest with few discordant pairs."""
    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    n = a.size
    if n == 0:
        return (float("nan"), float("nan"))
    p_a, p_b = a.mean(), b.mean()
    low_a, high_a = accuracy_interval(int(a.sum()), n)
    low_b, high_b = accuracy_interval(int(b.sum()), n)
    phi = _phi(a, b)
    difference = p_b - p_a
    below = np.sqrt(max(0.0, (p_b - low_b) ** 2 - 2 * phi * (p_b - low_b) * (high_a - p_a) + (high_a - p_a) ** 2))
    above = np.sqrt(max(0.0, (high_b - p_b) ** 2 - 2 * phi * (high_b - p_b) * (p_a - low_a) + (p_a - low_a) ** 2))
    return (float(max(-1.0, difference - below)), float(min(1.0, difference + above)))


def _phi(a: np.ndarray, b: np.ndarray) -> float:
    """Newcombe's continuity-corrected correlation of the paired outcomes (0 when an outcome never
    varies): with D = both*neither - only_a*only_b, D - n/2 if D > n/2, 0 if 0 <= D <= n/2, else D."""
    both, only_a, only_b, neither = (int(np.sum(x)) for x in (a & b, a & ~b, ~a & b, ~a & ~b))
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    if margins == 0:
        return 0.0
    cross = both * neither - only_a * only_b
    corrected = cross - a.size / 2 if cross > a.size / 2 else 0.0 if cross >= 0 else cross
    return corrected / np.sqrt(float(margins))


def quantile_interval(values, q: float, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high) of the q-quantile (0..1) with a percentile bootstrap interval."""
    data = np.asarray([v for v in values if v is not None], float)
    if data.size == 0:
        return (float("nan"),) * 3
    estimate = float(np.quantile(data, q))
    if data.size < 2 or np.all(data == data[0]):
        return (estimate, estimate, estimate)
    low, high = _bootstrap((data,), lambda x, axis: np.quantile(x, q, axis=axis), resamples, seed, method="percentile")
    return (estimate, low, high)


def paired_ratio_of_medians(a_values, b_values, *, blocks=None, resamples: int = DEFAULT_RESAMPLES,
                            seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high) of median(B) / median(A) over items measured in both arms (pairs kept).

    blocks: each item's block. The arms ran a block's items side by side at one time, so a shared
    machine's load moves a whole block's ratio at once, and items are not independent: resampling
    them called identical arms significantly apart. With three blocks or more the interval is then
    Student's t over the blocks' own log ratios (few blocks: a bootstrap of so few under-covers)."""
    triples = [(a, b, block) for a, b, block in zip(a_values, b_values, blocks if blocks is not None else
                                                    [0] * len(a_values)) if a is not None and b is not None]
    if len(triples) < 2:
        return (float("nan"),) * 3
    a, b = (np.asarray(side, float) for side in list(zip(*triples))[:2])
    groups = [block for _, _, block in triples]
    estimate = float(np.median(b) / np.median(a))
    if all(block is not None for block in groups) and len(set(groups)) >= 3:
        return (estimate, *_between_blocks_interval(a, b, np.asarray(groups)))

    def ratio(x, y, axis):
        return np.median(y, axis=axis) / np.median(x, axis=axis)

    low, high = _bootstrap((a, b), ratio, resamples, seed, method="percentile", paired=True)
    return (estimate, low, high)


def _between_blocks_interval(a, b, groups) -> tuple[float, float]:
    """The t interval of the mean of each block's log(median(b) / median(a)), back on the ratio scale."""
    logs = np.array([np.log(np.median(b[groups == block]) / np.median(a[groups == block]))
                     for block in np.unique(groups)])  # fmt: skip
    half = stats.t.ppf(1 - (1 - CONFIDENCE) / 2, len(logs) - 1) * logs.std(ddof=1) / np.sqrt(len(logs))
    return (float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half)))


def paired_ratio_of_sums(a_numerators, a_denominators, b_numerators, b_denominators, *,
                         resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high) of (sum b_num / sum b_den) / (sum a_num / sum a_den), e.g. the throughput
    ratio from per-block tokens and seconds; blocks are resampled as pairs (B's block i ran beside
    A's block i). Fewer than three blocks give no interval."""
    arrays = [np.asarray(x, float) for x in (a_numerators, a_denominators, b_numerators, b_denominators)]

    def ratio(an, ad, bn, bd, axis=-1):
        return (np.sum(bn, axis=axis) / np.sum(bd, axis=axis)) / (np.sum(an, axis=axis) / np.sum(ad, axis=axis))

    if arrays[0].size == 0:
        return (float("nan"),) * 3
    estimate = float(ratio(*arrays))
    if arrays[0].size < 3:
        return (estimate, float("nan"), float("nan"))
    low, high = _bootstrap(tuple(arrays), ratio, resamples, seed, method="percentile", paired=True)
    return (estimate, low, high)


def _bootstrap(data: tuple, statistic, resamples: int, seed: int, *, method: str = "BCa", paired: bool = False) -> tuple[float, float]:
    with warnings.catch_warnings():
        # scipy warns when BCa meets nearly constant data; the percentile fallback below covers it.
        warnings.simplefilter("ignore")
        result = stats.bootstrap(data, statistic, n_resamples=resamples, confidence_level=CONFIDENCE,
                                 method=method, paired=paired, vectorized=True, batch=500,
                                 rng=np.random.default_rng(seed))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if method == "BCa" and not (np.isfinite(low) and np.isfinite(high)):
        return _bootstrap(data, statistic, resamples, seed, method="percentile", paired=paired)
    return (low, high)


def non_dominated(points: list[tuple[float, float]]) -> list[bool]:
    """For (cost, accuracy) points: True where no other point costs no more AND is no less accurate,
    with at least one of the two strictly better (the Pareto frontier; lower cost is better)."""
    flags = []
    for i, (cost, accuracy) in enumerate(points):
        dominated = any(
            c <= cost and a >= accuracy and (c < cost or a > accuracy)
            for j, (c, a) in enumerate(points) if j != i
        )
        flags.append(not dominated)
    return flags
