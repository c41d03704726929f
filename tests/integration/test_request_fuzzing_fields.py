"""Per-prompt fields and sampling values that an audit found getting past the request guard, sent to a
real `lynx-sglang serve` (docs/reliability.md). Each request once killed the scheduler, got a 500 (or,
streamed, a 200 cut off before its first event), or a 200 with wrong output; now it gets a 400
naming the field, and the server still solves a known problem afterwards."""

import pytest
from live_server import RunningServer, error_message, known_problem_answer, send

pytestmark = pytest.mark.slow

KNOWN_ANSWER = "168"
LOGPROBS = {"text": "1+1=", "sampling_params": {"max_new_tokens": 3}, "return_logprob": True}
BATCH = {"text": ["a", "b"], "sampling_params": {"max_new_tokens": 2}}
PER_PROMPT = "values for 2 prompt(s); give one value per prompt, or a single value for all of them"
BIAS = "for token 30 is out of range; a bias must be a finite number"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = RunningServer([], tmp_path_factory.mktemp("fields") / "server.log")
    running.wait_healthy()
    try:
        yield running
    finally:
        running.stop()




# Killed the scheduler: a single prompt's list reached it where it reads a scalar (TypeError in the
# logits processor, in _handle_generate_request), or a dict where it calls .reconstruct().
KILLED_THE_SERVER = [
    ("/generate", {**LOGPROBS, "top_logprobs_num": [5, 5]}, "top_logprobs_num is a list of 2 values for 1 prompt(s)"),
    ("/generate", {**LOGPROBS, "logprob_start_len": [0, 0]}, "logprob_start_len is a list of 2 values for 1 prompt(s)"),
    ("/generate", {"text": "1+1=", "positional_embed_overrides": {"x": 1}},
     "positional_embed_overrides must be a PositionalEmbeds object"),
    ("/generate", {"text": "1+1=", "positional_embed_overrides": [1], "stream": True},
     "positional_embed_overrides must be a PositionalEmbeds object"),
]  # fmt: skip

# An IndexError in GenerateReqInput.__getitem__: a 500, or streamed, a 200 cut off before any event.
SHORTER_THAN_THE_BATCH = [
    ("/generate", {**BATCH, field: value}, f"{field} is a list of 1 {PER_PROMPT}")
    for field, value in [("return_logprob", [True]), ("top_logprobs_num", [1]), ("logprob_start_len", [0]),
                         ("token_ids_logprob", [[1]]), ("sampling_logprobs_mode", ["selected"]),
                         ("return_sampling_mask", [True]), ("lora_path", [None]), ("bootstrap_host", ["h"]),
                         ("bootstrap_room", [1])]
] + [("/generate", {**BATCH, "return_logprob": [True], "stream": True}, f"return_logprob is a list of 1 {PER_PROMPT}")]  # fmt: skip

# A 200 whose every token was token 0: the float32 bias was inf, the probabilities NaN.
BIAS_BEYOND_FLOAT32 = [
    ("/v1/completions", {"model": "default", "prompt": "1+1=", "max_tokens": 3, "temperature": 1,
                         "logit_bias": {"30": bias}}, BIAS)
    for bias in (1e39, -1e39, 1e308)
] + [
    ("/generate", {"text": "1+1=", "sampling_params": {"max_new_tokens": 3, "logit_bias": {"30": 1e39}}}, BIAS),
    ("/v1/chat/completions", {"model": "default", "messages": [{"role": "user", "content": "1+1="}],
                              "max_tokens": 3, "logit_bias": {"30": -1e39}}, BIAS),
]  # fmt: skip


@pytest.mark.parametrize("path,body,message", KILLED_THE_SERVER + SHORTER_THAN_THE_BATCH + BIAS_BEYOND_FLOAT32)
def test_a_malformed_per_prompt_field_gets_a_400_naming_it(server, path, body, message):
    status, reply = send(server.url, path, body)
    # A streamed /generate error is the first event of a 200 stream; /v1/* answer a 400 before streaming.
    assert status == (200 if body.get("stream") and path == "/generate" else 400), (status, reply)
    assert message in error_message(reply), reply
    assert known_problem_answer(server.url) == KNOWN_ANSWER



def test_a_one_value_list_for_a_single_prompt_is_read_as_that_value(server):
    # `[5]` and `[0]` killed the scheduler; `return_logprob: [false]` returned logprobs (a list is true).
    status, reply = send(server.url, "/generate", {**LOGPROBS, "top_logprobs_num": [5], "logprob_start_len": [0]})
    assert status == 200, reply
    assert all(len(top) == 5 for top in reply["meta_info"]["output_top_logprobs"])
    status, reply = send(server.url, "/generate", {**LOGPROBS, "return_logprob": [False]})
    assert status == 200 and "output_token_logprobs" not in reply["meta_info"], reply
    assert known_problem_answer(server.url) == KNOWN_ANSWER


def test_values_within_range_are_served_as_before(server):
    body = {"model": "default", "prompt": "1+1=", "max_tokens": 3, "temperature": 0, "logit_bias": {"30": 1e38}}
    status, reply = send(server.url, "/v1/completions", body)
    assert status == 200, reply
    status, reply = send(server.url, "/generate", {**BATCH, "return_logprob": [True, False]})
    assert status == 200 and len(reply) == 2, reply
