import random

import pytest

from lynx_sglang.embedded.task import (
    DISTRIBUTIONS,
    TASK_KINDS,
    heldout_problems,
    is_heldout,
    make_problem,
    normalise_completion,
    sample_problems,
    score,
    solve,
    training_stream,
)

HELDOUT_PRODUCTS = sum(is_heldout(f"{a}*{b}=") for a in range(100) for b in range(100))


def operands(prompt: str) -> tuple[int, int]:
    a, b = prompt[:-1].replace("+", " ").replace("-", " ").replace("*", " ").split()
    return int(a), int(b)


@pytest.mark.parametrize(
    "prompt,answer",
    [("123+45=", "168"), ("12-345=", "-333"), ("12*34=", "408"), ("r4821=", "1284"), ("r0090=", "0900"), ("0-0=", "0")],
)
def test_examples_from_the_task_definition(prompt, answer):
    assert solve(prompt) == answer


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_generated_problems_respect_operand_ranges_and_are_correct(distribution):
    rng = random.Random(0)
    for kind in TASK_KINDS:
        for _ in range(500):
            p = make_problem(kind, rng, distribution)
            assert p.prompt.endswith("=") and p.answer == solve(p.prompt)
            body = p.prompt[:-1]
            if kind == "rev":
                assert 2 <= len(body) - 1 <= 6 and body[1:].isdigit()
            else:
                limit = 100 if kind == "mul" else 1000
                assert all(0 <= x < limit for x in operands(p.prompt))


@pytest.mark.parametrize(
    "kind,distribution,full_length_share",
    # Full-length operands: 1 in 3 (digits, 3-digit), 1 in 2 (digits, 2-digit), 9 in 10 (uniform).
    [("add", "digits", 1 / 3), ("mul", "digits", 1 / 2), ("add", "uniform", 0.9), ("mul", "uniform", 0.9)],
)
def test_distribution_sets_how_often_operands_are_full_length(kind, distribution, full_length_share):
    rng = random.Random(1)
    full = 3 if kind == "add" else 2
    drawn = [x for _ in range(4000) for x in operands(make_problem(kind, rng, distribution).prompt)]
    share = sum(len(str(x)) == full for x in drawn) / len(drawn)
    assert share == pytest.approx(full_length_share, abs=0.02)


def test_uniform_operands_cover_the_whole_range_evenly():
    rng = random.Random(2)
    drawn = [x for _ in range(20000) for x in operands(make_problem("mul", rng, "uniform").prompt)]
    deciles = [sum(x // 10 == d for x in drawn) / len(drawn) for d in range(10)]
    assert min(deciles) > 0.09 and max(deciles) < 0.11


def test_unknown_distribution_is_rejected():
    with pytest.raises(ValueError, match="unknown distribution 'normal'"):
        make_problem("add", random.Random(0), "normal")


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_heldout_and_training_partitions_are_disjoint(distribution):
    held = {p.prompt for p in heldout_problems(2000, distribution=distribution)}
    held |= {p.prompt for p in heldout_problems(2000, distinct=True, distribution=distribution)}
    train = {p.prompt for p in sample_problems(20000, seed=3, heldout=False, distribution=distribution)}
    stream = training_stream(seed=3, weights=[1, 1, 1, 1], uniform_share=0.5)
    train |= {next(stream).prompt for _ in range(20000)}
    assert not held & train
    assert all(is_heldout(p) for p in held)
    assert not any(is_heldout(p) for p in train)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_distinct_heldout_set_has_no_repeats_and_equal_shares(distribution):
    problems = heldout_problems(2000, distinct=True, distribution=distribution)
    assert len({p.prompt for p in problems}) == 2000
    assert {k: sum(p.kind == k for p in problems) for k in TASK_KINDS} == dict.fromkeys(TASK_KINDS, 500)


def test_repeats_are_common_without_distinct():
    # Why `lynx-sglang eval` scores distinct problems: digit-first draws repeat the easy products.
    problems = [p.prompt for p in heldout_problems(2000) if p.kind == "mul"]
    assert len(set(problems)) < 0.8 * len(problems)


def test_distributions_give_different_sets_and_each_is_reproducible():
    digits = heldout_problems(400, distinct=True, distribution="digits")
    uniform = heldout_problems(400, distinct=True, distribution="uniform")
    assert digits == heldout_problems(400, distinct=True, distribution="digits")
    assert uniform == heldout_problems(400, distinct=True, distribution="uniform")
    long_add = [sum(len(str(x)) == 3 for x in operands(p.prompt)) for p in uniform if p.kind == "add"]
    short_add = [sum(len(str(x)) == 3 for x in operands(p.prompt)) for p in digits if p.kind == "add"]
    assert sum(long_add) > 1.5 * sum(short_add)


def test_asking_for_more_distinct_problems_than_exist_fails_clearly():
    assert 550 < HELDOUT_PRODUCTS < 650  # 1 in 16 of the 10,000 products
    assert len(sample_problems(HELDOUT_PRODUCTS, seed=0, heldout=True, kinds=("mul",), distinct=True,
                               distribution="uniform")) == HELDOUT_PRODUCTS
    with pytest.raises(ValueError, match=f"found only {HELDOUT_PRODUCTS} of {HELDOUT_PRODUCTS + 1} distinct"):
        sample_problems(HELDOUT_PRODUCTS + 1, seed=0, heldout=True, kinds=("mul",), distinct=True,
                        distribution="uniform")


def test_training_stream_mixes_distributions_by_share():
    def full_length_share(uniform_share):
        stream = training_stream(seed=4, weights=[1, 0, 0, 0], uniform_share=uniform_share)
        drawn = [x for _ in range(4000) for x in operands(next(stream).prompt)]
        return sum(len(str(x)) == 3 for x in drawn) / len(drawn)

    assert full_length_share(0.0) == pytest.approx(1 / 3, abs=0.02)
    assert full_length_share(1.0) == pytest.approx(0.9, abs=0.02)
    assert full_length_share(0.5) == pytest.approx((1 / 3 + 0.9) / 2, abs=0.02)


def test_heldout_set_is_balanced_and_reproducible():
    a, b = heldout_problems(2000), heldout_problems(2000)
    assert a == b
    counts = {k: sum(p.kind == k for p in a) for k in TASK_KINDS}
    assert set(counts.values()) == {500}


def test_score_counts_exact_matches_only_and_reports_each_kind():
    problems = [make_problem(kind, random.Random(i)) for i, kind in enumerate(["add", "add", "mul", "rev"])]
    completions = [problems[0].answer, problems[1].answer + "0", " " + problems[2].answer + "\nmore", "x"]
    s = score(problems, completions)
    assert (s.correct, s.total) == (2, 4)
    assert s.by_kind == {"add": (1, 2), "mul": (1, 1), "rev": (0, 1)}
    assert (s.kind_accuracy("add"), s.kind_accuracy("mul"), s.kind_accuracy("sub")) == (0.5, 1.0, 0.0)
    assert s.table().splitlines() == [
        "kind  correct  total  accuracy",
        "add         1      2    50.00%",
        "mul         1      1   100.00%",
        "rev         0      1     0.00%",
        "all         2      4    50.00%",
    ]
    assert normalise_completion(" 12\n34") == "12"
    with pytest.raises(ValueError, match="2 problems but 1 completions"):
        score(problems[:2], ["x"])
