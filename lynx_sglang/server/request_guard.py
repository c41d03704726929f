"""Refuse, in the HTTP process, the requests that would take SGLang's scheduler down, and answer the
shapes SGLang's own code trips over with a 400 (docs/reliability.md).

SGLang hands client token ids to the model's embedding unchecked (one id out of range kills the
scheduler), leaves a few sampling and logprob values unbounded, and lets tens of thousands of
sequences in one request stall the scheduler past its watchdog. Every request, from every entry
point, passes through `TokenizerManager._init_req_state` once and `_validate_one_request` per prompt:
a ValueError raised there is SGLang's own path to a 400 that names the problem. Three more hooks turn
what SGLang reads unchecked (an empty `input_embeds`, a `sampling_params` list that is not one object
per prompt or any other per-prompt field of the wrong shape (request_shapes), a `rid` of the wrong
shape, a `logit_bias` beyond float32, a bad `stop_regex`, a body its OpenAI request models'
validators trip over) into that 400, where it was a 500 or, streamed, a 200 cut off before its first
event. `/detokenize` gets the same vocabulary check as the generation entry points.
"""

from __future__ import annotations

import operator
import re

from lynx_sglang.server.request_shapes import (
    check_embed_overrides,
    check_per_prompt_fields,
    has_a_first_vector,
    prompt_count,
    settle_per_prompt_fields,
)

VALIDATE_TARGET = "sglang.srt.managers.tokenizer_manager.TokenizerManager._validate_one_request"
FAN_OUT_TARGET = "sglang.srt.managers.tokenizer_manager.TokenizerManager._init_req_state"
NORMALIZE_TARGET = "sglang.srt.managers.io_struct.GenerateReqInput.normalize_batch_and_arguments"
SAMPLING_NORMALIZE_TARGET = "sglang.srt.sampling.sampling_params.SamplingParams.normalize"
# FastAPI's validation of a request body against an endpoint's model (fastapi is pinned).
BODY_VALIDATION_TARGET = "fastapi._compat.v2.ModelField.validate"
# `/detokenize` and `/v1/detokenize`: a ValueError raised here becomes the handler's 400.
DETOKENIZE_TARGET = (
    "sglang.srt.entrypoints.openai.serving_tokenize.OpenAIServingDetokenize._handle_non_streaming_request"
)

# What SGLang's normalisation code raises when it indexes into a request of the wrong shape.
SHAPE_ERRORS = (IndexError, KeyError, TypeError, AttributeError)

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


def prompt_label(index: int, prompts: int, what: str = "prompt") -> str:
    return f"{what} {index} (of {prompts}, counting from 0)"


def check_batched_token_ids(batch, vocab_size: int, allow_empty: bool = False, what: str = "prompt") -> None:
    """Each prompt of a batch of token-id prompts; the message names the prompt as well as the id.
    An empty prompt is refused: the scheduler cannot run a prefill of no tokens (alone in its batch
    it fails reshaping an empty tensor and takes the server down; next to other prompts it is
    "served" from another prompt's logits)."""
    for index, token_ids in enumerate(batch):
        if not allow_empty and isinstance(token_ids, (list, tuple)) and not token_ids:
            raise ValueError(
                f"{prompt_label(index, len(batch), what)} is empty: every prompt needs at least one token id"
            )
        problem = first_invalid_token_id(token_ids, vocab_size)
        if problem is not None:
            raise ValueError(f"{prompt_label(index, len(batch), what)}: {problem}")


def session_supplies_the_prompt(request) -> bool:
    """SGLang's own rule (`input_ids: []` is accepted only then): a session's history may be the
    whole prompt, and the scheduler refuses it if it is still empty after rebuilding it."""
    params = getattr(request, "session_params", None)
    return isinstance(params, dict) and bool(params.get("id"))


def check_prompt_not_empty(request, input_ids) -> None:
    """A prompt that tokenizes to nothing (`text: ""` with a tokenizer that adds no BOS) reaches the
    scheduler as an empty prefill, which takes the server down."""
    if input_ids is not None and len(input_ids) == 0 and not session_supplies_the_prompt(request):
        raise ValueError("the prompt is empty: it has no tokens (after tokenization); a prompt needs at least one")


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
    """Sequences the scheduler will run for a normalised request: prompts times `n` (a client's rid
    list has one id per prompt, not per sequence, so it cannot be counted instead)."""
    if getattr(request, "is_single", True):
        return 1
    n = getattr(request, "parallel_sample_num", 1)
    return request.batch_size * (n if isinstance(n, int) and not isinstance(n, bool) else 1)


def check_sequence_count(request) -> None:
    sequences = sequence_count(request)
    n = getattr(request, "parallel_sample_num", None)
    # A list of prompts with n below 1 expands to nothing, which SGLang answers with a 500; one prompt
    # runs once, then the OpenAI endpoints fail grouping its n = 0 choices ("range() arg 3 must not be zero").
    if sequences < 1 or (isinstance(n, int) and not isinstance(n, bool) and n < 1):
        raise ValueError(f"this request asks for no sequences (n = {n!r}); n must be at least 1")
    if sequences > MAX_SEQUENCES_PER_REQUEST:
        raise ValueError(
            f"this request asks for {sequences} sequences (prompts x n); at most "
            f"{MAX_SEQUENCES_PER_REQUEST} are accepted in one request: send it as several requests"
        )


def reject_what_the_scheduler_cannot_run(tokenizer_manager, request, input_ids, *args, **kwargs):
    vocab_size = tokenizer_manager.model_config.vocab_size
    check_prompt_not_empty(request, input_ids)
    token_ids = ids_bound_for_the_model(request, input_ids)
    if token_ids is not None:
        check_token_ids(token_ids, vocab_size)
    check_logprob_params(request, vocab_size)
    check_sampling_params(getattr(request, "sampling_params", None), vocab_size)


def check_client_batch(request, vocab_size: int) -> None:
    """The client's token-id prompts of a batch, all before the first is tokenized or sent (the
    per-prompt check sees one prompt and cannot say which of the batch it is)."""
    batch = getattr(request, "input_ids", None)
    if getattr(request, "is_single", True) or not isinstance(batch, list):
        return
    # `n` > 1 repeats the list of prompts: the first batch_size entries are the client's.
    prompts = getattr(request, "batch_size", len(batch))
    check_batched_token_ids(batch[:prompts], vocab_size, allow_empty=session_supplies_the_prompt(request))


def reject_what_no_sequence_of_the_request_can_run(tokenizer_manager, request, *args, **kwargs):
    """Before `_init_req_state`, which keys a state per rid (an unhashable rid is a 500 there)."""
    check_normalised_rid(request)
    check_sequence_count(request)
    check_embed_overrides(request)
    check_client_batch(request, tokenizer_manager.model_config.vocab_size)


def check_input_embeds(request) -> None:
    if request.text is not None or request.input_ids is not None or request.input_embeds is None:
        return  # SGLang ignores input_embeds next to text or input_ids
    embeds = request.input_embeds
    if not has_a_first_vector(embeds):
        raise ValueError(
            "input_embeds must be a non-empty list of embedding vectors (a list of floats per "
            f"token), or a list of such lists for a batch; got {embeds!r:.80}"
        )


RID_EXPECTED = "a string for a single prompt, or a list of strings with one per prompt for a batch"


def check_rid_type(rid) -> None:
    """Before normalisation, which puts the rids in a set (a list inside the list is a TypeError)."""
    if rid is None or isinstance(rid, str):
        return
    if not isinstance(rid, list) or not all(isinstance(one, str) for one in rid):
        raise ValueError(f"rid must be {RID_EXPECTED}; got {rid!r:.80}")


def check_rid_count(rid, prompts: int | None) -> None:
    """A list of rids for a batch: one per prompt (SGLang's own message gives neither count)."""
    if isinstance(rid, list) and prompts is not None and len(rid) != prompts:
        raise ValueError(
            f"rid is a list of {len(rid)} string(s) for a batch of {prompts} prompts; it must be {RID_EXPECTED} "
            "(a single string is expanded to one per prompt)"
        )


def check_normalised_rid(request) -> None:
    """After normalisation, for every request type: SGLang keeps a list given for a single prompt,
    then fails keying its request state by it ("unhashable type: 'list'": a 500, or streamed, a
    stream cut off before its first event). With `n` > 1 one prompt is a batch of one: SGLang
    accepts a one-string list there and expands it."""
    rid = getattr(request, "rid", None)
    if getattr(request, "is_single", True):
        if not isinstance(rid, str):
            what = f"a list of {len(rid)}" if isinstance(rid, list) else repr(rid)[:80]
            raise ValueError(f"rid must be {RID_EXPECTED}; got {what} for a single prompt")
    elif not isinstance(rid, list) or not all(isinstance(one, str) for one in rid):
        raise ValueError(f"rid must be {RID_EXPECTED}; got {rid!r:.80}")


def refuse_malformed_generate_requests(normalize, request, *args, **kwargs):
    """Around `GenerateReqInput.normalize_batch_and_arguments`: the shapes it cannot handle get a
    400 that says what is wrong, and any it still trips over a 400 rather than a 500."""
    check_input_embeds(request)
    check_per_prompt_fields(request, prompt_count(request))
    check_rid_type(request.rid)
    check_rid_count(request.rid, prompt_count(request))
    try:
        result = normalize(request, *args, **kwargs)
    except SHAPE_ERRORS as exc:
        raise ValueError(f"malformed request: SGLang could not read it ({type(exc).__name__}: {exc})") from exc
    settle_per_prompt_fields(request)
    return result


def check_stop_regex(stop_regex) -> None:
    patterns = [stop_regex] if isinstance(stop_regex, str) else stop_regex
    if not isinstance(patterns, list) or not all(isinstance(pattern, str) for pattern in patterns):
        raise ValueError(f"stop_regex must be a regular expression or a list of them; got {stop_regex!r:.80}")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"stop_regex {pattern!r:.80} is not a valid regular expression: {exc}") from exc


# The largest finite float32. The scheduler adds logit_bias to float32 logits: a larger bias becomes
# inf, the sampler's probabilities NaN, and every step samples token 0 (a 200 with wrong output).
FLOAT32_MAX = 3.4028234663852886e38


def check_logit_bias(logit_bias) -> None:
    if not isinstance(logit_bias, dict):
        return  # SGLang reads or refuses it itself
    for token_id, bias in logit_bias.items():
        if isinstance(bias, (int, float)) and not isinstance(bias, bool) and not abs(bias) <= FLOAT32_MAX:
            raise ValueError(
                f"logit_bias {bias!r:.40} for token {token_id} is out of range; a bias must be a finite number "
                f"from -{FLOAT32_MAX:.6g} to {FLOAT32_MAX:.6g} (it is added to float32 logits)"
            )


def refuse_malformed_sampling_params(normalize, sampling_params, *args, **kwargs):
    """Around `SamplingParams.normalize`: it compiles `stop_regex` unchecked. Every entry point's
    sampling parameters pass through here, `logit_bias` of the OpenAI endpoints included."""
    if sampling_params.stop_regex_strs is not None:
        check_stop_regex(sampling_params.stop_regex_strs)
    check_logit_bias(getattr(sampling_params, "logit_bias", None))
    try:
        return normalize(sampling_params, *args, **kwargs)
    except SHAPE_ERRORS + (re.error,) as exc:
        raise ValueError(f"malformed sampling_params: SGLang could not read them ({type(exc).__name__}: {exc})") from exc


def refuse_bodies_the_request_model_trips_over(validate, field, value, *args, loc=(), **kwargs):
    """Around FastAPI's body validation: pydantic turns only ValueErrors of a validator into a
    validation error, and SGLang's request models run validators that call `.get` on whatever the
    client sent; what they raise becomes the same 400 as any other invalid field."""
    try:
        return validate(field, value, *args, loc=loc, **kwargs)
    except SHAPE_ERRORS as exc:
        message = (
            f"malformed request: a field has the wrong type, such as a number, string or list where "
            f"an object is expected ({type(exc).__name__}: {exc})"
        )
        return None, [{"type": "value_error", "loc": tuple(loc), "msg": message, "input": value}]


def refuse_ids_outside_the_vocabulary_in_detokenize(serving, adapted_request, request, *args, **kwargs):
    """Before `/detokenize` decodes: the tokenizer answers an id it does not know with "" (or fails
    on a negative one), which hides a client's tokenizer mix-up; the generation entry points refuse
    such ids, and so does this one."""
    tokens = getattr(request, "tokens", None)
    if not isinstance(tokens, list) or not tokens:
        return  # SGLang answers these itself
    vocab_size = serving.tokenizer_manager.model_config.vocab_size
    if isinstance(tokens[0], list):
        # Decoding an empty list is "" and harmless here: no scheduler is involved.
        check_batched_token_ids(tokens, vocab_size, allow_empty=True, what="token list")
    else:
        check_token_ids(tokens, vocab_size)


def register_hooks(register_hook, http: bool = True) -> None:
    """http=False in an offline engine's process: the checks of SGLang's own request path only, not
    the one on FastAPI's body validation, which would reach a caller's own FastAPI app there."""
    register_hook(VALIDATE_TARGET, reject_what_the_scheduler_cannot_run, "BEFORE")
    register_hook(FAN_OUT_TARGET, reject_what_no_sequence_of_the_request_can_run, "BEFORE")
    register_hook(NORMALIZE_TARGET, refuse_malformed_generate_requests, "AROUND")
    register_hook(SAMPLING_NORMALIZE_TARGET, refuse_malformed_sampling_params, "AROUND")
    if http:
        register_hook(BODY_VALIDATION_TARGET, refuse_bodies_the_request_model_trips_over, "AROUND")
        register_hook(DETOKENIZE_TARGET, refuse_ids_outside_the_vocabulary_in_detokenize, "BEFORE")
