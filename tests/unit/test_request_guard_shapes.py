"""Request shapes that reach SGLang's scheduler or request bookkeeping broken: empty prompts inside a
batch, rids of the wrong shape, ids `/detokenize` cannot decode. Each check is refused with a
ValueError (SGLang's path to a 400) that names the value and what is expected."""

import inspect
import pkgutil
from types import SimpleNamespace

import pytest

from lynx_sglang.server.request_guard import (
    DETOKENIZE_TARGET,
    FAN_OUT_TARGET,
    MAX_SEQUENCES_PER_REQUEST,
    VALIDATE_TARGET,
    check_batched_token_ids,
    check_normalised_rid,
    check_prompt_not_empty,
    check_rid_type,
    refuse_ids_outside_the_vocabulary_in_detokenize,
    refuse_malformed_generate_requests,
    register_hooks,
    reject_what_no_sequence_of_the_request_can_run,
    reject_what_the_scheduler_cannot_run,
    sequence_count,
)

VOCAB = 100
TOKENIZER_MANAGER = SimpleNamespace(model_config=SimpleNamespace(vocab_size=VOCAB))
RID_EXPECTED = "rid must be a string for a single prompt, or a list of strings with one per prompt for a batch"


def guarded(**fields):
    """A `/generate` request as it reaches `_init_req_state`: through the hooked normalisation."""
    from sglang.srt.managers.io_struct import GenerateReqInput

    request = GenerateReqInput(**fields)
    refuse_malformed_generate_requests(GenerateReqInput.normalize_batch_and_arguments, request)
    return request


def fan_out(**fields):
    """The hook before `_init_req_state`: the whole request, before any prompt is tokenized or sent."""
    reject_what_no_sequence_of_the_request_can_run(TOKENIZER_MANAGER, guarded(**fields))


# ---- empty prompts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "input_ids,index,count",
    [([[]], 0, 1), ([[1, 2], []], 1, 2), ([[], [1]], 0, 2), ([[5], [6], []], 2, 3)],
)
def test_an_empty_prompt_in_a_batch_is_refused_naming_it(input_ids, index, count):
    # Alone in a prefill batch it took the server down ("cannot reshape tensor of 0 elements"); next to
    # another prompt it was "served" with prompt_tokens 0 from that prompt's logits.
    message = f"prompt {index} \\(of {count}, counting from 0\\) is empty: every prompt needs at least one token id"
    with pytest.raises(ValueError, match=message):
        fan_out(input_ids=input_ids, sampling_params={"max_new_tokens": 2})


def test_an_empty_prompt_is_refused_with_parallel_sampling_too():
    with pytest.raises(ValueError, match=r"prompt 0 \(of 1, counting from 0\) is empty"):
        fan_out(input_ids=[[]], sampling_params={"max_new_tokens": 2, "n": 2})


def test_a_session_may_supply_an_empty_prompt_as_sglang_allows():
    fan_out(input_ids=[[]], session_params={"id": "s"})
    check_prompt_not_empty(SimpleNamespace(session_params={"id": "s"}), [])


@pytest.mark.parametrize("input_ids", [[[1, 2], [3]], [[VOCAB - 1]]])
def test_batches_of_non_empty_prompts_pass(input_ids):
    fan_out(input_ids=input_ids)


def test_a_prompt_that_tokenizes_to_nothing_is_refused():
    from sglang.srt.managers.io_struct import GenerateReqInput

    request = GenerateReqInput(text="", sampling_params={"max_new_tokens": 2})
    with pytest.raises(ValueError, match="the prompt is empty: it has no tokens"):
        reject_what_the_scheduler_cannot_run(TOKENIZER_MANAGER, request, [])
    reject_what_the_scheduler_cannot_run(TOKENIZER_MANAGER, request, [1])
    # input_embeds requests carry no ids at all
    reject_what_the_scheduler_cannot_run(TOKENIZER_MANAGER, GenerateReqInput(input_embeds=[[0.5]]), None)


# ---- which prompt of a batch holds a bad id -----------------------------------------------------


def test_an_id_outside_the_vocabulary_names_the_prompt_of_the_batch():
    with pytest.raises(ValueError) as refused:
        fan_out(input_ids=[[1, 2], [VOCAB]])
    assert str(refused.value) == (
        f"prompt 1 (of 2, counting from 0): token id {VOCAB} at position 0 is outside the model's "
        f"vocabulary; valid token ids are 0 to {VOCAB - 1}"
    )


def test_batched_ids_that_are_not_integers_name_the_prompt():
    with pytest.raises(ValueError, match=r"prompt 0 \(of 2, counting from 0\): token ids must be integers"):
        check_batched_token_ids([[1, "7"], [2]], VOCAB)


# ---- rid ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [{"input_ids": [1, 2], "rid": ["a", "b"]}, {"text": "1+1=", "rid": ["a"]}, {"text": "1+1=", "rid": []}],
)
def test_a_list_of_rids_for_a_single_prompt_is_refused(fields):
    # SGLang keeps the list and fails keying its request state by it: "unhashable type: 'list'", a 500.
    with pytest.raises(ValueError, match=f"{RID_EXPECTED}; got a list of {len(fields['rid'])} for a single prompt"):
        fan_out(**fields)


@pytest.mark.parametrize("rid", [5, [["a"]], ["a", 1], {"a": 1}])
def test_a_rid_that_is_neither_a_string_nor_a_list_of_strings_is_refused(rid):
    # Over HTTP the request models refuse most of these; the offline engine takes anything.
    with pytest.raises(ValueError, match=RID_EXPECTED):
        check_rid_type(rid)
    with pytest.raises(ValueError, match=RID_EXPECTED):
        guarded(text=["1+1=", "2+2="], rid=rid)


def test_a_list_of_rids_not_one_per_prompt_is_refused_with_both_counts():
    with pytest.raises(ValueError, match=r"rid is a list of 1 string\(s\) for a batch of 2 prompts"):
        guarded(text=["1+1=", "2+2="], rid=["a"])


def test_duplicate_rids_in_a_batch_keep_sglangs_own_400():
    with pytest.raises(ValueError, match=r"Duplicate request IDs detected within the request: \['a'\]"):
        guarded(text=["1+1=", "2+2="], rid=["a", "a"])


@pytest.mark.parametrize(
    "fields",
    [
        {"text": "1+1=", "rid": "a"},
        {"text": ["1+1=", "2+2="], "rid": ["a", "b"]},
        {"text": ["1+1=", "2+2="], "rid": "a"},
        {"text": "1+1=", "rid": ["a"], "sampling_params": {"n": 2}},  # one prompt read as a batch of one
        {"input_ids": [[1], [2]], "rid": ["a", "b"], "sampling_params": {"n": 2}},
        {"text": "1+1="},
    ],
)
def test_rids_sglang_serves_pass(fields):
    fan_out(**fields)


def test_an_embedding_request_with_a_list_of_rids_for_one_prompt_is_refused():
    from sglang.srt.managers.io_struct import EmbeddingReqInput

    request = EmbeddingReqInput(input_ids=[5, 6], rid=["a", "b"])
    request.normalize_batch_and_arguments()
    with pytest.raises(ValueError, match=f"{RID_EXPECTED}; got a list of 2 for a single prompt"):
        check_normalised_rid(request)


def test_a_list_of_rids_does_not_hide_n_from_the_sequence_limit():
    # With one rid per prompt, counting rids counted 1 sequence where 5000 were to run.
    request = guarded(text=["1+1="], rid=["big"], sampling_params={"n": MAX_SEQUENCES_PER_REQUEST + 1})
    assert sequence_count(request) == MAX_SEQUENCES_PER_REQUEST + 1
    with pytest.raises(ValueError, match=f"asks for {MAX_SEQUENCES_PER_REQUEST + 1} sequences"):
        reject_what_no_sequence_of_the_request_can_run(TOKENIZER_MANAGER, request)


# ---- /detokenize --------------------------------------------------------------------------------


def detokenize(tokens):
    serving = SimpleNamespace(tokenizer_manager=TOKENIZER_MANAGER)
    refuse_ids_outside_the_vocabulary_in_detokenize(serving, None, SimpleNamespace(tokens=tokens), None)


@pytest.mark.parametrize(
    "tokens,message",
    [
        ([100000], "token id 100000 at position 0 is outside the model's vocabulary; valid token ids are 0 to 99"),
        ([5, -1], "token id -1 at position 1 is outside the model's vocabulary"),
        ([[5], [6, VOCAB]], r"token list 1 \(of 2, counting from 0\): token id 100 at position 1 is outside"),
    ],
)
def test_detokenize_refuses_ids_outside_the_vocabulary(tokens, message):
    with pytest.raises(ValueError, match=message):
        detokenize(tokens)


@pytest.mark.parametrize("tokens", [[], [0, VOCAB - 1], [[5], []], [[]]])
def test_detokenize_of_ids_inside_the_vocabulary_passes(tokens):
    detokenize(tokens)


def test_the_detokenize_hook_target_exists_with_the_arguments_the_hook_expects():
    method = pkgutil.resolve_name(DETOKENIZE_TARGET)
    assert list(inspect.signature(method).parameters)[:3] == ["self", "adapted_request", "request"]


def test_detokenize_is_guarded_in_the_http_server_only():
    # The offline engine has no /detokenize; its generate goes through the same tokenizer manager hooks.
    offline, http = [], []
    register_hooks(lambda target, hook, kind: offline.append(target), http=False)
    register_hooks(lambda target, hook, kind: http.append((target, kind)))
    assert DETOKENIZE_TARGET not in offline and {VALIDATE_TARGET, FAN_OUT_TARGET} <= set(offline)
    assert (DETOKENIZE_TARGET, "BEFORE") in http


# ---- per-prompt fields: a list for a single prompt, a list shorter than the batch ---------------


def test_the_per_prompt_fields_are_read_from_sglangs_request_type():
    from sglang.srt.managers.io_struct import GenerateReqInput

    from lynx_sglang.server.request_shapes import per_prompt_fields

    fields = per_prompt_fields(GenerateReqInput)
    scalar = {name for name, (shape, _) in fields.items() if shape == "scalar"}
    assert {"return_logprob", "top_logprobs_num", "logprob_start_len", "lora_path", "sampling_logprobs_mode",
            "return_sampling_mask", "bootstrap_host", "bootstrap_room", "sampling_params"} <= scalar  # fmt: skip
    assert fields["token_ids_logprob"][0] == "list" and "positional_embed_overrides" in fields


@pytest.mark.parametrize(
    "field,value,expected",
    [("top_logprobs_num", [5], 5), ("logprob_start_len", [0], 0), ("return_logprob", [False], False),
     ("return_sampling_mask", [True], True), ("lora_path", [None], None), ("token_ids_logprob", [[1, 2]], [1, 2])],
)  # fmt: skip
def test_a_one_value_list_for_a_single_prompt_is_read_as_that_value(field, value, expected):
    # [5] or [0] reached the scheduler as a list and killed it; [false] counted as true.
    request = guarded(text="1+1=", **{"return_logprob": True, field: value})
    assert getattr(request, field) == expected


@pytest.mark.parametrize("field,value", [("top_logprobs_num", [5, 5]), ("logprob_start_len", []), ("bootstrap_room", [1, 2])])
def test_a_longer_list_for_a_single_prompt_is_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"{field} is a list of {len(value)} values for 1 prompt\(s\)"):
        guarded(text="1+1=", **{"return_logprob": True, field: value})


@pytest.mark.parametrize(
    "field,value",
    [("return_logprob", [True]), ("top_logprobs_num", [1]), ("logprob_start_len", [0]), ("token_ids_logprob", [[1]]),
     ("sampling_logprobs_mode", ["selected"]), ("return_sampling_mask", [True]), ("lora_path", [None]),
     ("bootstrap_host", ["h"]), ("bootstrap_room", [1]), ("video_data", [])],
)  # fmt: skip
def test_a_per_prompt_list_shorter_than_the_batch_is_refused_with_the_counts(field, value):
    # An IndexError in GenerateReqInput.__getitem__: a 500, or streamed, a 200 cut off before its first event.
    with pytest.raises(ValueError, match=rf"{field} is a list of {len(value)} values for 2 prompt\(s\)"):
        guarded(text=["a", "b"], **{field: value})


def test_per_prompt_lists_of_the_batch_size_and_single_values_pass():
    request = guarded(text=["a", "b"], return_logprob=[True, False], top_logprobs_num=2, token_ids_logprob=[1],
                      lora_path=[None, None], bootstrap_room=7)  # fmt: skip
    assert request.return_logprob == [True, False] and request.top_logprobs_num == [2, 2]
    assert request.bootstrap_room == [7, 8]
    guarded(text="a", sampling_params={"n": 2}, lora_path=["x"])  # a batch of one, as SGLang reads it


def test_a_per_prompt_value_of_the_wrong_type_is_refused():
    with pytest.raises(ValueError, match="sampling_logprobs_mode must be one of 'selected', 'support'"):
        guarded(text="a", sampling_logprobs_mode=["bad"])


@pytest.mark.parametrize("value", [{"x": 1}, [1], "x", 5])
def test_positional_embed_overrides_other_than_positional_embeds_are_refused(value):
    # The scheduler calls .reconstruct() on it: AttributeError, and the server died.
    with pytest.raises(ValueError, match="positional_embed_overrides must be a PositionalEmbeds object"):
        fan_out(text="1+1=", positional_embed_overrides=value)


def test_positional_embeds_pass():
    import torch
    from sglang.srt.managers.embed_types import PositionalEmbeds

    fan_out(text="1+1=", positional_embed_overrides=PositionalEmbeds(embeds=torch.zeros(1, 4), positions=[0]))
