"""The embedded model's synthetic task: arithmetic and digit reversal with exact answers.

One problem per line; the model completes after `=` and stops at EOS:

    123+45=   -> 168      addition, operands up to 3 digits
    12-345=   -> -333     subtraction, operands up to 3 digits (answers may be negative)
    12*34=    -> 408      multiplication, operands up to 2 digits
    r4821=    -> 1284     reverse a string of 2-6 digits (leading zeros kept)

Problems are split into a training and a held-out partition by a hash of the prompt, so a held-out
problem can never be drawn for training, whatever the seed. The A/B harness reuses `heldout_problems`
and `score` so accuracy is always measured the same way.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal, Sequence

TaskKind = Literal["add", "sub", "mul", "rev"]
TASK_KINDS: tuple[TaskKind, ...] = ("add", "sub", "mul", "rev")

# One in HELDOUT_MODULUS prompts (by hash) is held out. Multiplication has only 10,000 distinct
# problems, so the held-out partition must stay small enough to leave most of them for training.
HELDOUT_MODULUS = 16


@dataclass(frozen=True)
class Problem:
    kind: TaskKind
    prompt: str  # ends with "="
    answer: str  # what the model must produce before EOS

    @property
    def text(self) -> str:
        return self.prompt + self.answer


def is_heldout(prompt: str) -> bool:
    digest = hashlib.blake2b(prompt.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % HELDOUT_MODULUS == 0


def _operand(rng: random.Random, max_digits: int) -> int:
    # Draw the digit count first so short operands are as common as long ones.
    digits = rng.randint(1, max_digits)
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def make_problem(kind: TaskKind, rng: random.Random) -> Problem:
    if kind == "add":
        a, b = _operand(rng, 3), _operand(rng, 3)
        return Problem(kind, f"{a}+{b}=", str(a + b))
    if kind == "sub":
        a, b = _operand(rng, 3), _operand(rng, 3)
        return Problem(kind, f"{a}-{b}=", str(a - b))
    if kind == "mul":
        a, b = _operand(rng, 2), _operand(rng, 2)
        return Problem(kind, f"{a}*{b}=", str(a * b))
    if kind == "rev":
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(2, 6)))
        return Problem(kind, f"r{digits}=", digits[::-1])
    raise ValueError(f"unknown task kind {kind!r}; expected one of {', '.join(TASK_KINDS)}")


def solve(prompt: str) -> str:
    """The exact answer for any well-formed prompt (used to check generators and user files)."""
    body = prompt.removesuffix("=")
    if body.startswith("r"):
        return body[1:][::-1]
    for op, fn in (("+", lambda a, b: a + b), ("*", lambda a, b: a * b)):
        if op in body:
            a, b = body.split(op)
            return str(fn(int(a), int(b)))
    # Subtraction last: "-" can only appear as the operator (operands are non-negative).
    a, b = body.split("-")
    return str(int(a) - int(b))


def sample_problems(
    count: int,
    *,
    seed: int,
    heldout: bool,
    kinds: Sequence[TaskKind] = TASK_KINDS,
    weights: Sequence[float] | None = None,
    distinct: bool = False,
) -> list[Problem]:
    """Draw `count` problems from the training (heldout=False) or held-out partition."""
    rng = random.Random(seed)
    problems: list[Problem] = []
    seen: set[str] = set()
    while len(problems) < count:
        kind = rng.choices(list(kinds), weights=weights)[0]
        p = make_problem(kind, rng)
        if is_heldout(p.prompt) != heldout:
            continue
        if distinct:
            if p.prompt in seen:
                continue
            seen.add(p.prompt)
        problems.append(p)
    return problems


def heldout_problems(count: int = 2000, *, seed: int = 1234, distinct: bool = False) -> list[Problem]:
    """A fixed evaluation set: equal shares of each task kind, drawn from the held-out partition.

    By default problems are drawn exactly as training problems are (the task's own distribution), so
    easy problems with one-digit operands can repeat. `distinct=True` draws without repeats instead,
    which for multiplication (only ~625 held-out problems) leans on the hard two-digit ones.
    """
    per_kind, extra = divmod(count, len(TASK_KINDS))
    out: list[Problem] = []
    for i, kind in enumerate(TASK_KINDS):
        n = per_kind + (1 if i < extra else 0)
        out.extend(sample_problems(n, seed=seed + i, heldout=True, kinds=(kind,), distinct=distinct))
    random.Random(seed).shuffle(out)
    return out


def training_stream(*, seed: int, weights: Sequence[float]) -> Iterator[Problem]:
    rng = random.Random(seed)
    while True:
        kind = rng.choices(list(TASK_KINDS), weights=weights)[0]
        p = make_problem(kind, rng)
        if not is_heldout(p.prompt):
            yield p


def normalise_completion(completion: str) -> str:
    """What counts as the model's answer: the text before the first newline, stripped."""
    return completion.split("\n", 1)[0].strip()


@dataclass(frozen=True)
class Score:
    correct: int
    total: int
    by_kind: dict[str, tuple[int, int]]

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def summary(self) -> str:
        parts = [f"{k} {c}/{n}" for k, (c, n) in sorted(self.by_kind.items())]
        return f"exact match {self.correct}/{self.total} = {self.accuracy:.4f} ({', '.join(parts)})"


def score(problems: Iterable[Problem], completions: Iterable[str]) -> Score:
    problems = list(problems)
    completions = list(completions)
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
    by_kind: dict[str, list[int]] = {}
    correct = 0
    for p, c in zip(problems, completions):
        ok = normalise_completion(c) == p.answer
        correct += ok
        tally = by_kind.setdefault(p.kind, [0, 0])
        tally[0] += ok
        tally[1] += 1
    return Score(correct, len(problems), {k: (v[0], v[1]) for k, v in by_kind.items()})
