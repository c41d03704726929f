"""The per-prompt fields of a `/generate` request: one value for all prompts, or a list of one value
per prompt (docs/reliability.md).

SGLang checks the length of a few of these lists and reads the rest unchecked. For a batch,
`GenerateReqInput.__getitem__` indexes every per-prompt list by sequence: a list shorter than the
batch is an IndexError there (a 500, or streamed, a 200 cut off before its first event). For a
single prompt, its normalisation leaves a list where the scheduler expects a scalar: `[5]` as
`top_logprobs_num` or `[0]` as `logprob_start_len` kill the scheduler, and `[false]` as
`return_logprob` counts as true. Which fields are per prompt, and of what type, is read from
`GenerateReqInput` itself (the fields `__getitem__` indexes and their annotations), so a field SGLang
adds is checked without a change here.
"""

from __future__ import annotations

import ast
import functools
import inspect
import logging
import operator
import textwrap
import typing
from collections.abc import Mapping

logger = logging.getLogger(__name__)

# The prompt itself decides how many prompts there are, and `rid` has its own checks (request_guard).
NOT_CHECKED_HERE = frozenset({"text", "input_ids", "input_embeds", "rid"})
# SGLang's annotation of positional_embed_overrides is Any (PositionalEmbeds holds tensors, which
# pydantic cannot describe): its runtime type is checked by hand.
EMBED_OVERRIDES = "positional_embed_overrides"


@functools.lru_cache(maxsize=None)
def indexed_per_sequence(cls) -> frozenset[str]:
    """The fields `cls.__getitem__` reads as `self.FIELD[i]`, directly or through a helper it calls
    with `i`: each of them must hold one entry per sequence of a batch."""
    fields: set[str] = set()
    pending, seen = ["__getitem__"], set()
    while pending:
        method = pending.pop()
        seen.add(method)
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(getattr(cls, method))))
        except (OSError, TypeError, SyntaxError):  # no source to read (a bytecode-only install): the
            logger.warning("lynx-sglang: cannot read %s.%s; per-prompt fields are not checked", cls.__name__, method)
            return frozenset()  # request goes to SGLang as it would without this check
        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript) and is_self_attribute(node.value) and isinstance(node.slice, ast.Name):
                fields.add(node.value.attr)
            elif isinstance(node, ast.Call) and is_self_attribute(node.func) and node.func.attr not in seen:
                if any(isinstance(arg, ast.Name) for arg in node.args) and hasattr(cls, node.func.attr):
                    pending.append(node.func.attr)
    return frozenset(fields)


def is_self_attribute(node) -> bool:
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"


def union_members(annotation) -> list:
    if typing.get_origin(annotation) is typing.Union:
        return [member for member in typing.get_args(annotation) if member is not type(None)]
    return [annotation]


def is_list(annotation) -> bool:
    return typing.get_origin(annotation) is list


@functools.lru_cache(maxsize=None)
def per_prompt_fields(cls) -> dict[str, tuple[str, object]]:
    """field -> (shape, type of one prompt's value). "scalar": `Union[List[T], T]`, one T per prompt
    (return_logprob, top_logprobs_num, lora_path, sampling_params, ...); "list": `Union[List[List[E]],
    List[E]]`, a list per prompt (token_ids_logprob, ...); "other": anything else (media, Any)."""
    hints = typing.get_type_hints(cls)
    fields = {}
    for name in sorted(indexed_per_sequence(cls) - NOT_CHECKED_HERE):
        members = union_members(hints.get(name, typing.Any))
        lists = [member for member in members if is_list(member)]
        scalars = [member for member in members if not is_list(member)]
        element = None
        if len(lists) == 1 and typing.get_args(lists[0]):
            element = typing.Union[tuple(typing.get_args(lists[0]))]
        if scalars and element is not None and set(union_members(element)) == set(scalars):
            fields[name] = ("scalar", element)
        elif not scalars and len(lists) == 2 and any(is_list(typing.get_args(member)[0]) for member in lists):
            fields[name] = ("list", next(member for member in lists if not is_list(typing.get_args(member)[0])))
        else:
            fields[name] = ("other", None)
    return fields


def fits(value, annotation) -> bool:
    """Whether `value` is of the type SGLang declares (leniently: any integer for an int, any mapping
    for a dict; a class this does not know passes)."""
    if annotation is typing.Any or value is None:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        return any(fits(value, member) for member in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin is list:
        (element,) = typing.get_args(annotation) or (typing.Any,)
        return isinstance(value, list) and all(fits(entry, element) for entry in value)
    if origin is dict or annotation is dict:
        return isinstance(value, Mapping)
    if annotation in (int, bool):
        try:
            operator.index(value)
        except TypeError:
            return False
        return True
    return not isinstance(annotation, type) or isinstance(value, annotation)


def describe(annotation) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(repr(value) for value in typing.get_args(annotation))
    if typing.get_origin(annotation) is typing.Union:
        return " or ".join(describe(member) for member in union_members(annotation))
    if is_list(annotation):
        return f"a list of {describe(typing.get_args(annotation)[0])} values"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "an object"}
    return names.get(typing.get_origin(annotation) or annotation, getattr(annotation, "__name__", str(annotation)))


def noun(name: str) -> tuple[str, str]:
    return ("object", "objects") if name == "sampling_params" else ("value", "values")


def wrong_type(name: str, element, value) -> str:
    return f"{name} must be {describe(element)}, or a list of {noun(name)[1]} with one per prompt; got {value!r:.80}"


def batched_form(shape: str, value) -> bool:
    """A list of one value per prompt, as opposed to one value for every prompt."""
    if shape == "scalar":
        return isinstance(value, list)
    return shape == "list" and isinstance(value, list) and bool(value) and isinstance(value[0], list)


def check_per_prompt_fields(request, prompts: int | None) -> None:
    """Before normalisation: each per-prompt field is one value of its type, or a list of one per
    prompt (`prompts` None: a single prompt, whose list may hold one value). A single prompt's
    one-value `sampling_params` list is read as that object now: normalisation reads `n` from it."""
    for name, (shape, element) in per_prompt_fields(type(request)).items():
        value = getattr(request, name, None)
        if not batched_form(shape, value):
            if shape != "other" and not fits(value, element):
                raise ValueError(wrong_type(name, element, value))
            continue
        if not all(fits(entry, element) for entry in value):
            raise ValueError(wrong_type(name, element, value))
        if len(value) != (prompts or 1):
            one, many = noun(name)
            raise ValueError(
                f"{name} is a list of {len(value)} {many} for {prompts or 1} prompt(s); give one {one} per "
                f"prompt, or a single {one} for all of them"
            )
        if prompts is None and name == "sampling_params":
            request.sampling_params = value[0]


def settle_per_prompt_fields(request) -> None:
    """After normalisation. A single prompt: a one-value list becomes its value, which is what SGLang
    reads when `n` > 1 makes the prompt a batch of one. A batch: every field `__getitem__` indexes
    holds one entry per sequence (media, watermark, lora_id and the rest included)."""
    if getattr(request, "is_single", True):
        for name, (shape, _) in per_prompt_fields(type(request)).items():
            value = getattr(request, name, None)
            if batched_form(shape, value) and len(value) == 1:
                setattr(request, name, value[0])
        return
    prompts = next(value for value in (request.text, request.input_ids, request.input_embeds) if value is not None)
    sequences = len(prompts)  # after normalisation: one entry per sequence, n included
    n = getattr(request, "parallel_sample_num", 1)
    for name in sorted(indexed_per_sequence(type(request)) - NOT_CHECKED_HERE):
        value = getattr(request, name, None)
        if isinstance(value, list) and len(value) != sequences:
            given = len(value) // n if n > 1 and len(value) % n == 0 else len(value)
            one, many = noun(name)
            raise ValueError(
                f"{name} is a list of {given} {many} for {request.batch_size} prompt(s); give one {one} per "
                f"prompt, or a single {one} for all of them"
            )


def check_embed_overrides(request) -> None:
    """SGLang's scheduler calls `.reconstruct()` on what it gets here: only a `PositionalEmbeds`
    (tensors and positions), or for a batch a list of them (or None) with one per sequence, can be
    served. JSON cannot carry one, so over HTTP anything but null is refused."""
    value = getattr(request, EMBED_OVERRIDES, None)
    if value is None:
        return
    from sglang.srt.managers.embed_types import PositionalEmbeds

    if isinstance(value, PositionalEmbeds):
        return
    single = getattr(request, "is_single", True)
    entries = value if isinstance(value, list) and not single else None
    if entries is not None and all(entry is None or isinstance(entry, PositionalEmbeds) for entry in entries):
        sequences = getattr(request, "batch_size", 1) * max(1, getattr(request, "parallel_sample_num", 1) or 1)
        if len(entries) == sequences:
            return
    raise ValueError(
        "positional_embed_overrides must be a PositionalEmbeds object (embedding tensors and their positions; "
        "only the offline engine can pass one), or for a batch a list of them with one per sequence; "
        f"got {value!r:.80}"
    )


def prompt_count(request) -> int | None:
    """Prompts in a `/generate` request as SGLang's normalisation counts them (None: a single one)."""
    if request.text is not None:
        return None if isinstance(request.text, str) else len(request.text)
    if request.input_ids is not None:
        ids = request.input_ids
        if not isinstance(ids, list) or not ids or isinstance(ids[0], int):
            return None
        return len(ids)
    embeds = request.input_embeds
    if has_a_first_vector(embeds):
        return None if not isinstance(embeds[0][0], list) else len(embeds)
    return None


def has_a_first_vector(embeds) -> bool:
    """`embeds[0][0]` exists: what SGLang reads first to tell a single prompt from a batch."""
    return isinstance(embeds, list) and bool(embeds) and isinstance(embeds[0], list) and bool(embeds[0])
