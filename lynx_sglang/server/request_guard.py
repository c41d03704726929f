"""Refuse, in the HTTP process, the single requests that would take SGLang's scheduler down.

SGLang hands client-given token ids to the model's embedding unchecked: one id out of range raises
in the scheduler (a device-side assert on a GPU) and the whole server exits. So do a few sampling
and logprob values SGLang does not bound (`check_sampling_params`, `check_logprob_params`), and
tens of thousands of sequences in one request stall the scheduler past its watchdog when the client
gives up. Every request, from every entry point (`/generate`, `/v1/completions`, chat, score,
batches), passes through `TokenizerManager._init_req_state` once and `_validate_one_request` per
prompt in the HTTP process; a ValueError raised there is SGLang's own path to a 400 that names the
problem.
"""

from __future__ import annotations

import operator

VALIDATE_TARGET = "sglang.srt.managers.tokenizer_manager.TokenizerManager._validate_one_request"
FAN_OUT_TARGET = "sglang.srt.managers.tokenizer_manager.TokenizerManager._init_req_state"

# Each sequence of a request the client abandons is aborted on its own, and each abort scans the
# scheduler's waiting queue: the stall grows with the square of the count.
MAX_SEQUENCES_PER_REQUEST = 4096
INT32_MAX = 2**31 - 1


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


def per_prompt(*values):
    """Rows of per-prompt values; a single value stands for every prompt."""
    size = max((len(value) for value in values if isinstance(value, list)), default=1)
    return zip(*(value if isinstance(value, list) else [value] * size for value in values))


def check_sampling_params(sampling_params, vocab_size: int) -> None:
    """Values SGLang's own checks let through and the scheduler dies on."""
    if not isinstance(sampling_params, dict):
        return  # SGLang refuses it itself
    stop_token_ids = stop_token_ids_as_sglang_reads_them(sampling_params.get("stop_token_ids"))
    if stop_token_ids:
        # The min-tokens penalty scatters into the vocabulary at these ids.
        problem = first_invalid_token_id(stop_token_ids, vocab_size)
        if problem is not None:
            raise ValueError(f"stop_token_ids: {problem}")
    top_k = sampling_params.get("top_k")
    if isinstance(top_k, (int, float)) and not isinstance(top_k, bool) and not top_k <= INT32_MAX:
        # Batched as int32: anything larger overflows in the scheduler.
        raise ValueError(f"top_k {top_k!r} is out of range; it must be -1 (all tokens) or 1 to {INT32_MAX}")


def stop_token_ids_as_sglang_reads_them(stop_token_ids) -> list | None:
    if not isinstance(stop_token_ids, (list, tuple)):
        return None
    try:
        return [int(token_id) for token_id in stop_token_ids if token_id is not None]
    except (TypeError, ValueError, OverflowError):
        return None  # SGLang refuses these itself


def check_logprob_params(request, vocab_size: int) -> None:
    """The sampler takes the top k of the vocabulary, so k must be 0 to vocab_size; a prompt
    logprob start below -1 breaks the scheduler's bookkeeping of prompt logprobs."""
    rows = per_prompt(
        getattr(request, "return_logprob", False),
        getattr(request, "top_logprobs_num", 0),
        getattr(request, "logprob_start_len", -1),
    )
    for return_logprob, count, start in rows:
        if not return_logprob:
            continue
        if count is not None and not (isinstance(count, int) and 0 <= count <= vocab_size):
            raise ValueError(
                f"top_logprobs_num (logprobs / top_logprobs) {count!r} is out of range; the model's "
                f"vocabulary has {vocab_size} tokens, so it must be 0 to {vocab_size}"
            )
        if isinstance(start, int) and start < -1:
            raise ValueError(
                f"logprob_start_len {start} is out of range; it must be -1 (logprobs of the output "
                "only) or a position in the prompt, 0 or more"
            )


def sequence_count(request) -> int:
    """Sequences the scheduler will run for a normalised request: prompts times `n`."""
    if getattr(request, "is_single", True):
        return 1
    rids = request.rid
    return len(rids) if isinstance(rids, list) else request.batch_size


def check_sequence_count(request) -> None:
    sequences = sequence_count(request)
    if sequences < 1:
        # A list of prompts with n below 1 expands to nothing, which SGLang answers with a 500.
        n = getattr(request, "parallel_sample_num", None)
        raise ValueError(f"this request asks for no sequences (n = {n!r}); n must be at least 1")
    if sequences > MAX_SEQUENCES_PER_REQUEST:
        raise ValueError(
            f"this request asks for {sequences} sequences (prompts x n); at most "
            f"{MAX_SEQUENCES_PER_REQUEST} are accepted in one request: send it as several requests"
        )


def reject_what_the_scheduler_cannot_run(tokenizer_manager, request, input_ids, *args, **kwargs):
    vocab_size = tokenizer_manager.model_config.vocab_size
    token_ids = ids_bound_for_the_model(request, input_ids)
    if token_ids is not None:
        check_token_ids(token_ids, vocab_size)
    check_logprob_params(request, vocab_size)
    check_sampling_params(getattr(request, "sampling_params", None), vocab_size)


def reject_too_many_sequences(tokenizer_manager, request, *args, **kwargs):
    check_sequence_count(request)


def register_hooks(register_hook) -> None:
    register_hook(VALIDATE_TARGET, reject_what_the_scheduler_cannot_run, "BEFORE")
    register_hook(FAN_OUT_TARGET, reject_too_many_sequences, "BEFORE")
