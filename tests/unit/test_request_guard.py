"""Requests that would crash the scheduler are refused in the HTTP process, before the scheduler sees them."""

import inspect
import pkgutil

import numpy as np
import pytest

from lynx_sglang.server.request_guard import (
    FAN_OUT_TARGET,
    MAX_SEQUENCES_PER_REQUEST,
    VALIDATE_TARGET,
    check_logprob_params,
    check_sampling_params,
    check_sequence_count,
    check_token_ids,
    first_invalid_token_id,
    ids_bound_for_the_model,
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


@pytest.mark.parametrize("target,arguments", [(VALIDATE_TARGET, ["self", "obj", "input_ids"]),
                                              (FAN_OUT_TARGET, ["self", "obj"])])  # fmt: skip
def test_the_hook_targets_exist_with_the_arguments_the_hooks_expect(target, arguments):
    # Guards an SGLang upgrade: a renamed or reordered method would silently leave the server unguarded.
    method = pkgutil.resolve_name(target)
    assert list(inspect.signature(method).parameters)[: len(arguments)] == arguments


def test_both_hooks_run_before_sglangs_own_method():
    registered = []
    register_hooks(lambda *args: registered.append(args))
    assert [(name, kind) for name, _, kind in registered] == [(VALIDATE_TARGET, "BEFORE"), (FAN_OUT_TARGET, "BEFORE")]
