"""Requests that would crash the scheduler are refused in the HTTP process, before the scheduler sees them."""

import inspect
import math
import pkgutil

import numpy as np
import pytest

from lynx_sglang.server.request_guard import (
    BODY_VALIDATION_TARGET,
    DETOKENIZE_TARGET,
    FAN_OUT_TARGET,
    MAX_SEQUENCES_PER_REQUEST,
    NORMALIZE_TARGET,
    SAMPLING_NORMALIZE_TARGET,
    VALIDATE_TARGET,
    check_logprob_params,
    check_sampling_params,
    check_sequence_count,
    check_token_ids,
    first_invalid_token_id,
    ids_bound_for_the_model,
    refuse_bodies_the_request_model_trips_over,
    refuse_malformed_generate_requests,
    refuse_malformed_sampling_params,
    register_hooks,
)

VOCAB = 100


@pytest.mark.parametrize("ids", [[], [0], [VOCAB - 1], list(range(VOCAB)), (5, 6), [np.int64(7)], [True]])
def test_ids_inside_the_vocabulary_pass(ids):
    assert first_invalid_token_id(ids, VOCAB) is None
    check_token_ids(ids, VOCAB)


@pytest.mark.parametrize(
    "ids,position,bad",
    [([VOCAB], 0, VOCAB), ([-1], 0, -1), ([1, 2, 99999999], 2, 99999999), ([3, 2**70, -5], 1, 2**70)],
)
def test_first_id_outside_the_vocabulary_is_named_with_the_range(ids, position, bad):
    message = first_invalid_token_id(ids, VOCAB)
    assert message == (
        f"token id {bad} at position {position} is outside the model's vocabulary; valid token ids are 0 to 99"
    )
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        check_token_ids(ids, VOCAB)


@pytest.mark.parametrize("ids,got", [([1, 1.5], "1.5"), ([None], "None"), ([[1, 2]], "[1, 2]"), (["7"], "'7'")])
def test_non_integer_ids_are_refused(ids, got):
    assert first_invalid_token_id(ids, VOCAB).startswith(f"token ids must be integers; got {got} at position")


@pytest.mark.parametrize("ids", ["123", 5, b"\x01"])
def test_ids_that_are_not_a_list_are_refused(ids):
    assert first_invalid_token_id(ids, VOCAB).startswith("token ids must be a list of integers")


def test_text_and_token_id_requests_check_every_id_bound_for_the_model():
    from sglang.srt.managers.io_struct import GenerateReqInput

    text = GenerateReqInput(text="1+1=")
    assert ids_bound_for_the_model(text, [1, 20, 30]) == [1, 20, 30]
    given = GenerateReqInput(input_ids=[1, 2])
    assert ids_bound_for_the_model(given, [1, 2]) == [1, 2]


def test_multimodal_requests_check_only_the_clients_ids():
    from sglang.srt.managers.io_struct import GenerateReqInput

    # A processor may expand image placeholders into ids the vocabulary does not hold.
    request = GenerateReqInput(input_ids=[1, 2], image_data="http://example.invalid/cat.png")
    assert ids_bound_for_the_model(request, [1, 2, -1, -1]) == [1, 2]


def normalised(**fields):
    from sglang.srt.managers.io_struct import GenerateReqInput

    request = GenerateReqInput(**fields)
    request.normalize_batch_and_arguments()
    return request


@pytest.mark.parametrize("count", [0, 1, 5, VOCAB])
def test_top_logprobs_up_to_the_vocabulary_pass(count):
    check_logprob_params(normalised(text="1+1=", return_logprob=True, top_logprobs_num=count), VOCAB)


@pytest.mark.parametrize("count", [VOCAB + 1, 10**6, -1])
def test_top_logprobs_beyond_the_vocabulary_are_refused(count):
    request = normalised(text="1+1=", return_logprob=True, top_logprobs_num=count)
    with pytest.raises(ValueError, match=f"top_logprobs_num .* {count} is out of range.* 0 to {VOCAB}"):
        check_logprob_params(request, VOCAB)


def test_top_logprobs_are_not_checked_when_no_logprobs_are_asked_for():
    check_logprob_params(normalised(text="1+1=", return_logprob=False, top_logprobs_num=10**6), VOCAB)


@pytest.mark.parametrize("start", [-1, 0, 3])
def test_prompt_logprobs_from_the_end_or_a_position_pass(start):
    check_logprob_params(normalised(text="1+1=", return_logprob=True, logprob_start_len=start), VOCAB)


def test_prompt_logprobs_starting_below_minus_one_are_refused():
    request = normalised(text="1+1=", return_logprob=True, logprob_start_len=-5)
    with pytest.raises(ValueError, match="logprob_start_len -5 is out of range; it must be -1"):
        check_logprob_params(request, VOCAB)
    check_logprob_params(normalised(text="1+1=", logprob_start_len=-5), VOCAB)


def test_logprob_values_are_checked_for_every_prompt_of_a_batch():
    request = normalised(text=["1+1=", "2+2="], return_logprob=[False, True], top_logprobs_num=[0, VOCAB + 1])
    with pytest.raises(ValueError, match=f"{VOCAB + 1} is out of range"):
        check_logprob_params(request, VOCAB)


@pytest.mark.parametrize(
    "params",
    [{}, {"stop_token_ids": [0, VOCAB - 1]}, {"stop_token_ids": []}, {"stop_token_ids": [None, "5"]},
     {"top_k": -1}, {"top_k": 1}, {"top_k": 10 * VOCAB}, {"top_k": 2**31 - 1}, {"top_k": "many"}],
)  # fmt: skip
def test_sampling_params_the_scheduler_can_run_pass(params):
    check_sampling_params(params, VOCAB)


@pytest.mark.parametrize("stop", [[VOCAB], [1, -1], [2**70]])
def test_stop_token_ids_outside_the_vocabulary_are_refused(stop):
    with pytest.raises(ValueError, match="stop_token_ids: token id .* valid token ids are 0 to 99"):
        check_sampling_params({"stop_token_ids": stop}, VOCAB)


@pytest.mark.parametrize("top_k", [2**31, 1e12, float("inf"), float("nan")])
def test_top_k_beyond_int32_is_refused(top_k):
    with pytest.raises(ValueError, match=r"top_k .* is out of range; it must be -1 \(all tokens\) or 1 to 2147483647"):
        check_sampling_params({"top_k": top_k}, VOCAB)


@pytest.mark.parametrize(
    "fields",
    [
        {"text": "1+1="},
        {"text": ["1+1="] * MAX_SEQUENCES_PER_REQUEST},
        {"text": "1+1=", "sampling_params": {"n": MAX_SEQUENCES_PER_REQUEST}},
        {"input_ids": [[5, 6]] * 64, "sampling_params": {"n": MAX_SEQUENCES_PER_REQUEST // 64}},
    ],
)
def test_requests_up_to_the_sequence_limit_pass(fields):
    check_sequence_count(normalised(**fields))


@pytest.mark.parametrize(
    "fields,sequences",
    [
        ({"text": ["1+1="] * (MAX_SEQUENCES_PER_REQUEST + 1)}, MAX_SEQUENCES_PER_REQUEST + 1),
        ({"text": "1+1=", "sampling_params": {"n": 100_000}}, 100_000),
        ({"input_ids": [[5, 6]] * 65, "sampling_params": {"n": 64}}, 65 * 64),
    ],
)
def test_requests_beyond_the_sequence_limit_are_refused(fields, sequences):
    with pytest.raises(ValueError, match=f"asks for {sequences} sequences .* at most {MAX_SEQUENCES_PER_REQUEST}"):
        check_sequence_count(normalised(**fields))


@pytest.mark.parametrize("n", [0, -1])
def test_a_list_of_prompts_with_n_below_one_is_refused(n):
    with pytest.raises(ValueError, match=f"asks for no sequences \\(n = {n}\\); n must be at least 1"):
        check_sequence_count(normalised(text=["1+1="], sampling_params={"n": n}))


def guarded_normalise(**fields):
    """What the hooked `normalize_batch_and_arguments` does to a `/generate` request."""
    from sglang.srt.managers.io_struct import GenerateReqInput

    request = GenerateReqInput(**fields)
    refuse_malformed_generate_requests(GenerateReqInput.normalize_batch_and_arguments, request)
    return request


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"input_embeds": []}, "input_embeds must be a non-empty list of embedding vectors"),
        ({"input_embeds": [[]]}, "input_embeds must be a non-empty list of embedding vectors"),
        ({"input_embeds": "x"}, "input_embeds must be a non-empty list of embedding vectors"),
        ({"text": "1+1=", "sampling_params": []}, r"sampling_params is a list of 0 objects for 1 prompt\(s\)"),
        ({"text": ["1+1=", "2+2="], "sampling_params": [{}]}, "a list of 1 objects for 2 prompt"),
        ({"input_ids": [[5], [6]], "sampling_params": [{}, {}, {}]}, "a list of 3 objects for 2 prompt"),
        ({"text": "1+1=", "sampling_params": [{}, 3]}, "sampling_params must be an object, or a list of objects"),
        ({"text": "1+1=", "sampling_params": "greedy"}, "sampling_params must be an object, or a list of objects"),
    ],
)
def test_request_shapes_sglang_indexes_into_unchecked_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        guarded_normalise(**fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"text": "1+1=", "sampling_params": {"max_new_tokens": 2}},
        {"text": ["1+1=", "2+2="], "sampling_params": [{"max_new_tokens": 2}, {"max_new_tokens": 3}]},
        {"input_ids": [[5], [6]], "sampling_params": [{"n": 2}, {"n": 2}]},
        {"text": "1+1=", "sampling_params": [{"n": 2}]},
        {"input_embeds": [[0.5, 0.5]]},
        {"input_embeds": [[[0.5, 0.5]], [[0.1, 0.2]]], "sampling_params": [{}, {}]},
    ],
)
def test_well_formed_requests_normalise_as_sglang_alone_does(fields):
    expected = normalised(**fields)
    guarded = guarded_normalise(**fields)
    assert (guarded.is_single, guarded.batch_size, guarded.sampling_params) == (
        expected.is_single, expected.batch_size, expected.sampling_params)  # fmt: skip


def test_a_one_object_list_for_a_single_prompt_is_read_as_that_object():
    # SGLang alone serves it only with n > 1; with n = 1 it would fail building SamplingParams.
    assert guarded_normalise(text="1+1=", sampling_params=[{"max_new_tokens": 2}]).sampling_params == {"max_new_tokens": 2}


def test_what_normalisation_still_trips_over_is_a_value_error_naming_it():
    from sglang.srt.managers.io_struct import GenerateReqInput

    def trips(request):
        raise IndexError("list index out of range")

    with pytest.raises(ValueError, match=r"malformed request: SGLang could not read it \(IndexError"):
        refuse_malformed_generate_requests(trips, GenerateReqInput(text="1+1="))


def sampling_params_normalised(**fields):
    from sglang.srt.sampling.sampling_params import SamplingParams
    from transformers import AutoTokenizer

    from lynx_sglang.embedded import EMBEDDED_MODEL_DIR

    params = SamplingParams(**fields)
    refuse_malformed_sampling_params(SamplingParams.normalize, params, AutoTokenizer.from_pretrained(EMBEDDED_MODEL_DIR))
    return params


@pytest.mark.parametrize(
    "stop_regex,message",
    [("((", r"stop_regex '\(\(' is not a valid regular expression"), (["[0-9]+", "a{"], None), (7, "stop_regex must be"),
     ([["x"]], "stop_regex must be a regular expression or a list of them")],
)  # fmt: skip
def test_stop_regex_that_is_not_a_regular_expression_is_refused(stop_regex, message):
    if message is None:
        sampling_params_normalised(stop_regex=stop_regex)  # "a{" is a literal in Python's re
        return
    with pytest.raises(ValueError, match=message):
        sampling_params_normalised(stop_regex=stop_regex)


def test_valid_stop_regex_normalises_as_sglang_alone_does():
    assert sampling_params_normalised(stop_regex="[0-9]+").stop_regex_strs == ["[0-9]+"]


def chat_body_field():
    from fastapi._compat.v2 import ModelField
    from fastapi.params import Body
    from sglang.srt.entrypoints.openai.protocol import ChatCompletionRequest

    return ModelField(field_info=Body(annotation=ChatCompletionRequest), name="request", mode="validation")


CHAT = {"model": "default", "messages": [{"role": "user", "content": "1+1="}], "max_tokens": 1}


@pytest.mark.parametrize("body", [[], None, "x", 5, {**CHAT, "response_format": 5}, {**CHAT, "response_format": "json"}])
def test_chat_bodies_the_request_model_trips_over_are_validation_errors(body):
    from fastapi._compat.v2 import ModelField

    value, errors = refuse_bodies_the_request_model_trips_over(ModelField.validate, chat_body_field(), body, {}, loc=("body",))
    assert value is None
    assert [(error["loc"], error["type"]) for error in errors] == [(("body",), "value_error")]
    assert errors[0]["msg"].startswith("malformed request: a field has the wrong type")


def test_valid_and_ordinarily_invalid_chat_bodies_validate_as_without_the_guard():
    from fastapi._compat.v2 import ModelField

    field = chat_body_field()
    for body in [CHAT, {**CHAT, "response_format": {"type": "nonsense"}}, {**CHAT, "max_tokens": "many"}]:
        guarded = refuse_bodies_the_request_model_trips_over(ModelField.validate, field, body, {}, loc=("body",))
        plain = field.validate(body, {}, loc=("body",))
        assert (guarded[0], [e["type"] for e in guarded[1]]) == (plain[0], [e["type"] for e in plain[1]])


@pytest.mark.parametrize("target,arguments", [(VALIDATE_TARGET, ["self", "obj", "input_ids"]),
                                              (FAN_OUT_TARGET, ["self", "obj"]),
                                              (NORMALIZE_TARGET, ["self"]),
                                              (SAMPLING_NORMALIZE_TARGET, ["self", "tokenizer"]),
                                              (BODY_VALIDATION_TARGET, ["self", "value", "values", "loc"])])  # fmt: skip
def test_the_hook_targets_exist_with_the_arguments_the_hooks_expect(target, arguments):
    # Guards an SGLang upgrade: a renamed or reordered method would silently leave the server unguarded.
    method = pkgutil.resolve_name(target)
    assert list(inspect.signature(method).parameters)[: len(arguments)] == arguments


def test_the_checks_run_before_and_the_shape_guards_around_sglangs_own_methods():
    registered = []
    register_hooks(lambda *args: registered.append(args))
    assert [(name, kind) for name, _, kind in registered] == [
        (VALIDATE_TARGET, "BEFORE"), (FAN_OUT_TARGET, "BEFORE"),
        (NORMALIZE_TARGET, "AROUND"), (SAMPLING_NORMALIZE_TARGET, "AROUND"), (BODY_VALIDATION_TARGET, "AROUND"),
        (DETOKENIZE_TARGET, "BEFORE")]  # fmt: skip


@pytest.mark.parametrize("bias", [1e39, -1e39, 1e308, math.inf, math.nan, 10**400])
def test_a_logit_bias_beyond_float32_is_refused(bias):
    # Added to float32 logits it became inf, the probabilities NaN: token 0 at every step, a 200.
    from lynx_sglang.server.request_guard import check_logit_bias

    with pytest.raises(ValueError, match="logit_bias .* for token 30 is out of range; a bias must be a finite number"):
        check_logit_bias({"30": bias})


def test_a_logit_bias_within_float32_passes_and_the_sampling_hook_checks_it():
    from sglang.srt.sampling.sampling_params import SamplingParams

    from lynx_sglang.server.request_guard import check_logit_bias

    check_logit_bias({"30": 1e38, "31": -100.0, "32": 0})
    with pytest.raises(ValueError, match="logit_bias 1e\\+39 for token 30"):
        refuse_malformed_sampling_params(lambda params, *a: None, SamplingParams(logit_bias={"30": 1e39}))
