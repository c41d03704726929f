"""Refuse token ids outside the model's vocabulary before they reach the scheduler.

SGLang hands client-given token ids to the model's embedding unchecked: one id out of range raises
in the scheduler (a device-side assert on a GPU) and takes the whole server down. Every request,
from every entry point (`/generate`, `/v1/completions`, chat, score, batches), passes through
`TokenizerManager._validate_one_request` in the HTTP process; a ValueError raised there is SGLang's
own path to a 400 that names the problem.
"""

from __future__ import annotations

import operator

VALIDATE_TARGET = "sglang.srt.managers.tokenizer_manager.TokenizerManager._validate_one_request"


def first_invalid_token_id(token_ids, vocab_size: int) -> str | None:
    """What is wrong with the first bad id, or None when every id is an integer in [0, vocab_size)."""
    if isinstance(token_ids, (str, bytes)) or not hasattr(token_ids, "__iter__"):
        return f"token ids must be a list of integers; got {type(token_ids).__name__}"
    for position, token_id in enumerate(token_ids):
        try:
            value = operator.index(token_id)
        except TypeError:
            return f"token ids must be integers; got {token_id!r} at position {position}"
        if not 0 <= value < vocab_size:
            return (
                f"token id {value} at position {position} is outside the model's vocabulary; "
                f"valid token ids are 0 to {vocab_size - 1}"
            )
    return None


def check_token_ids(token_ids, vocab_size: int) -> None:
    problem = first_invalid_token_id(token_ids, vocab_size)
    if problem is not None:
        raise ValueError(problem)


def ids_bound_for_the_model(request, input_ids):
    """The ids to check: all of them for a text or token-id request (a tokenizer larger than the
    model's embedding is caught too); for a multimodal one only the client's own, because a
    processor may legitimately put placeholder ids outside the vocabulary."""
    if request.contains_mm_input():
        return request.input_ids
    return input_ids


def reject_out_of_vocabulary_ids(tokenizer_manager, request, input_ids, *args, **kwargs):
    token_ids = ids_bound_for_the_model(request, input_ids)
    if token_ids is not None:
        check_token_ids(token_ids, tokenizer_manager.model_config.vocab_size)


def register_hooks(register_hook) -> None:
    register_hook(VALIDATE_TARGET, reject_out_of_vocabulary_ids, "BEFORE")
