"""What an experiment asks the server: items (prompt, answer, task) and how a completion is scored.

Items come from the embedded model's held-out arithmetic set or from a JSONL file of
{"prompt": ..., "answer": ..., "task"?: ...} objects. Every line of a file is checked before any
request is sent, so a malformed line is reported with its line number, not after minutes of work.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lynx_sglang.embedded.task import heldout_problems, normalise_completion

BUILTIN_TASK = "arithmetic"
DEFAULT_TASK_LABEL = "all"


class TaskError(ValueError):
    """A task file or scoring rule the harness cannot use (the message says where and why)."""


@dataclass(frozen=True)
class Item:
    prompt: str
    answer: str
    task: str


def load_items(task: str, count: int, seed: int) -> list[Item]:
    """`count` items of the built-in task, or the first `count` lines of a JSONL file."""
    if task == BUILTIN_TASK:
        return builtin_items(count, seed)
    return jsonl_items(Path(task))[:count]


def builtin_items(count: int, seed: int) -> list[Item]:
    try:
        problems = heldout_problems(count, seed=seed, distinct=True)
    except ValueError as error:  # more distinct problems than the held-out partition has
        raise TaskError(str(error)) from None
    return [Item(p.prompt, p.answer, p.kind) for p in problems]


def builtin_items_excluding(count: int, seed: int, exclude: set[str]) -> list[Item]:
    """Up to `count` distinct held-out problems of the built-in task, equal shares per kind, none of
    them in `exclude`; a kind whose partition runs out gives what is left of it (multiplication has
    about 590 distinct held-out problems)."""
    problems = heldout_problems(count, seed=seed, distinct=True, exclude=frozenset(exclude), up_to=True)
    return [Item(p.prompt, p.answer, p.kind) for p in problems]


def jsonl_items(path: Path) -> list[Item]:
    if not path.is_file():
        raise TaskError(f"task file {path} does not exist (use --task {BUILTIN_TASK} for the built-in task)")
    items = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            items.append(parse_jsonl_line(line, line_number, path))
    if not items:
        raise TaskError(f"{path}: no items (every line is empty)")
    return items


def parse_jsonl_line(line: str, line_number: int, path: Path | str = "<input>") -> Item:
    where = f"{path}:{line_number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise TaskError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict):
        raise TaskError(f"{where}: expected a JSON object with \"prompt\" and \"answer\", got {type(record).__name__}")
    for key in ("prompt", "answer"):
        if key not in record:
            raise TaskError(f"{where}: missing \"{key}\"")
    prompt, answer, task = record["prompt"], record["answer"], record.get("task", DEFAULT_TASK_LABEL)
    if not isinstance(prompt, str) or not prompt:
        raise TaskError(f"{where}: \"prompt\" must be a non-empty string")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise TaskError(f"{where}: \"answer\" must be a string or a number")
    if isinstance(answer, float) and not math.isfinite(answer):  # json reads NaN, Infinity and 1e400
        raise TaskError(f"{where}: \"answer\" must be a finite number")
    if not isinstance(task, str) or not task:
        raise TaskError(f"{where}: \"task\" must be a non-empty string")
    return Item(prompt, str(answer), task)


# ---- scoring -------------------------------------------------------------------------------------

Scorer = Callable[[str, str], bool]  # (completion, answer) -> correct

_NUMBER = re.compile(r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")


def exact_match(completion: str, answer: str) -> bool:
    return normalise_completion(completion) == answer.strip()


def last_number(text: str) -> str | None:
    """The last number in the text, without thousands separators or trailing zeros ("1,234.50" -> "1234.5")."""
    found = _NUMBER.findall(text)
    return canonical_number(found[-1]) if found else None


def canonical_number(text: str) -> str:
    """One spelling per value: no separators, no leading zeros (".5" and "0.5", "007" and "7" match)."""
    sign = "-" if text.startswith("-") else ""
    whole, _, fraction = text.replace(",", "").lstrip("-").partition(".")
    number = (whole.lstrip("0") or "0") + ("." + fraction.rstrip("0") if fraction.rstrip("0") else "")
    return number if number == "0" else sign + number


def number_match(completion: str, answer: str) -> bool:
    """GSM8K-style: the completion's last number equals the answer's last number."""
    got = last_number(completion)
    return got is not None and got == last_number(answer)


def regex_scorer(pattern: str) -> Scorer:
    """Group 1 of the first match (the whole match without a group) must equal the answer."""
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise TaskError(f"--score regex:{pattern}: invalid regular expression ({error})") from None

    def matches(completion: str, answer: str) -> bool:
        found = compiled.search(completion)
        if found is None:
            return False
        return (found.group(1) if compiled.groups else found.group(0)).strip() == answer.strip()

    return matches


def make_scorer(spec: str) -> Scorer:
    """`exact` (default), `number`, or `regex:PATTERN`."""
    if spec == "exact":
        return exact_match
    if spec == "number":
        return number_match
    if spec.startswith("regex:"):
        return regex_scorer(spec.removeprefix("regex:"))
    raise TaskError(f"unknown --score {spec!r}; expected exact, number or regex:PATTERN")
