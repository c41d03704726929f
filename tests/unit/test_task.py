import random

import pytest

from lynx_sglang.embedded.task import (
    TASK_KINDS,
    heldout_problems,
    is_heldout,
    make_problem,
    normalise_completion,
    sample_problems,
    score,
    solve,
)


@pytest.mark.parametrize(
    "prompt,answer",
    [("123+45=", "168"), ("12-345=", "-333"), ("12*34=", "408"), ("r4821=", "1284"), ("r0090=", "0900"), ("0-0=", "0")],
)
def test_examples_from_the_task_definition(prompt, answer):
    assert solve(prompt) == answer


def test_generated_problems_respect_operand_ranges_and_are_correct():
    rng = random.Random(0)
    for kind in TASK_KINDS:
        for _ in range(500):
            p = make_problem(kind, rng)
            assert p.prompt.endswith("=") and p.answer == solve(p.prompt)
            body = p.prompt[:-1]
            if kind == "rev":
                assert 2 <= len(body) - 1 <= 6 and body[1:].isdigit()
            else:
                a, b = body.replace("+", " ").replace("-", " ").replace("*", " ").split()
                limit = 2 if kind == "mul" else 3
                assert len(a) <= limit and len(b) <= limit


def test_heldout_and_training_partitions_are_disjoint():
    held = {p.prompt for p in heldout_problems(2000)} | {p.prompt for p in heldout_problems(2000, distinct=True)}
    train = {p.prompt for p in sample_problems(20000, seed=3, heldout=False)}
    assert len({p.prompt for p in heldout_problems(2000, distinct=True)}) == 2000
    assert not held & train
    assert all(is_heldout(p) for p in held)


def test_heldout_set_is_balanced_and_reproducible():
    a, b = heldout_problems(2000), heldout_problems(2000)
    assert a == b
    counts = {k: sum(p.kind == k for p in a) for k in TASK_KINDS}
    assert set(counts.values()) == {500}


def test_score_counts_exact_matches_only():
    problems = [make_problem("add", random.Random(i)) for i in range(3)]
    completions = [problems[0].answer, problems[1].answer + "0", " " + problems[2].answer + "\nmore"]
    s = score(problems, completions)
    assert (s.correct, s.total) == (2, 3)
    assert normalise_completion(" 12\n34") == "12"
    with pytest.raises(ValueError, match="2 problems but 1 completions"):
        score(problems[:2], ["x"])
