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

# How operands are drawn. "digits": digit count first, so 7 and 700 are drawn about as often as any
# one-digit and any three-digit number together. "uniform": each value in range equally likely, as a
# user typing random problems would (mostly full-length operands).
Distribution = Literal["digits", "uniform"]
DISTRIBUTIONS: tuple[Distribution, ...] = ("digits", "uniform")

# A distinct draw gives up after this many draws in a row that found nothing new (the partition of a
# kind is exhausted, e.g. more than ~625 distinct held-out products asked for).
MAX_FRUITLESS_DRAWS = 200_000

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


def _operand(rng: random.Random, max_digits: int, distribution: Distribution) -> int:
    if distribution == "uniform":
        return rng.randint(0, 10**max_digits - 1)
    if distribution != "digits":
        raise ValueError(f"unknown distribution {distribution!r}; expected one of {', '.join(DISTRIBUTIONS)}")
    digits = rng.randint(1, max_digits)
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def make_problem(kind: TaskKind, rng: random.Random, distribution: Distribution = "digits") -> Problem:
    """One problem; `distribution` applies to arithmetic operands (reversal strings are the same in both)."""
    if kind == "add":
        a, b = _operand(rng, 3, distribution), _operand(rng, 3, distribution)
        return Problem(kind, f"{a}+{b}=", str(a + b))
    if kind == "sub":
        a, b = _operand(rng, 3, distribution), _operand(rng, 3, distribution)
        return Problem(kind, f"{a}-{b}=", str(a - b))
    if kind == "mul":
        a, b = _operand(rng, 2, distribution), _operand(rng, 2, distribution)
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
    distribution: Distribution = "digits",
    exclude: frozenset[str] = frozenset(),
    up_to: bool = False,
) -> list[Problem]:
    """Draw `count` problems from the training (heldout=False) or held-out partition, none of whose
    prompts is in `exclude`. A distinct draw that exhausts the partition raises, or with `up_to`
    returns the problems it found."""
    rng = random.Random(seed)
    problems: list[Problem] = []
    seen: set[str] = set()
    fruitless = 0
    while len(problems) < count:
        kind = rng.choices(list(kinds), weights=weights)[0]
        p = make_problem(kind, rng, distribution)
        if is_heldout(p.prompt) != heldout or (distinct and p.prompt in seen) or p.prompt in exclude:
            fruitless += 1
            if fruitless > MAX_FRUITLESS_DRAWS:
                if up_to:
                    return problems
                raise ValueError(
                    f"found only {len(problems)} of {count} distinct problems ({', '.join(kinds)}) in the "
                    f"{'held-out' if heldout else 'training'} partition"
                )
            continue
        fruitless = 0
        seen.add(p.prompt)
        problems.append(p)
    return problems


def heldout_problems(
    count: int = 2000, *, seed: int = 1234, distinct: bool = False, distribution: Distribution = "digits",
    exclude: frozenset[str] = frozenset(), up_to: bool = False,
) -> list[Problem]:
    """A fixed evaluation set: equal shares of each task kind, drawn from the held-out partition.

    Without `distinct`, easy problems repeat (under "digits", `3*7=` is drawn about once in 324
    multiplications), which flatters the model; `lynx-sglang eval` therefore scores distinct problems.
    Multiplication has only ~625 held-out problems, so at most that many distinct ones exist.
    `exclude` and `up_to` are sample_problems' (a kind that runs out then gives what it has).
    """
    per_kind, extra = divmod(count, len(TASK_KINDS))
    out: list[Problem] = []
    for i, kind in enumerate(TASK_KINDS):
        n = per_kind + (1 if i < extra else 0)
        out.extend(
            sample_problems(
                n, seed=seed + i, heldout=True, kinds=(kind,), distinct=distinct, distribution=distribution,
                exclude=exclude, up_to=up_to,
            )
        )
    random.Random(seed).shuffle(out)
    return out


def training_stream(*, seed: int, weights: Sequence[float], uniform_share: float = 0.0) -> Iterator[Problem]:
    """Endless training problems; `uniform_share` of them have value-uniform operands, the rest digits-first."""
    rng = random.Random(seed)
    while True:
        kind = rng.choices(list(TASK_KINDS), weights=weights)[0]
        distribution: Distribution = "uniform" if rng.random() < uniform_share else "digits"
        p = make_problem(kind, rng, distribution)
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

    def kind_accuracy(self, kind: str) -> float:
        correct, total = self.by_kind.get(kind, (0, 0))
        return correct / total if total else 0.0

    def summary(self) -> str:
        parts = [f"{k} {c}/{n}" for k, (c, n) in sorted(self.by_kind.items(), key=_task_order)]
        return f"exact match {self.correct}/{self.total} = {self.accuracy:.4f} ({', '.join(parts)})"

    def table(self) -> str:
        """One line per task kind, then the total: kind, correct, total, accuracy."""
        rows = [(k, c, n) for k, (c, n) in sorted(self.by_kind.items(), key=_task_order)]
        rows.append(("all", self.correct, self.total))
        lines = [f"{'kind':<5} {'correct':>7} {'total':>6} {'accuracy':>9}"]
        lines += [f"{k:<5} {c:>7} {n:>6} {100 * c / n if n else 0:>8.2f}%" for k, c, n in rows]
        return "\n".join(lines)


def _task_order(item: tuple[str, object]) -> tuple[int, str]:
    kind = item[0]
    return (TASK_KINDS.index(kind) if kind in TASK_KINDS else len(TASK_KINDS), kind)


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
