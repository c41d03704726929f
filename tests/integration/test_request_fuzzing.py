"""Fuzzed requests against a real `lynx-sglang serve`: a bad request gets an answer, never the server down.

Each example is a small batch of completion, chat or `/generate` requests sent at once, so valid and
invalid ones share the scheduler's batches. Every request must get a status below 500 (a streamed
one: an answer at all), and after every batch the server must still solve a known problem: an answer
from the scheduler says more than SGLang's /health, which also takes a second. A batch that takes the
server down fails the example, the server is started again, and hypothesis shrinks the batch to the
request that did it; each request found that way is kept below as a plain test that expects its 400.
"""

import json
import math
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_server import RunningServer, error_message, known_problem_answer, send

from lynx_sglang.embedded import EMBEDDED_MODEL_DIR

pytestmark = pytest.mark.slow

VOCAB_SIZE = json.loads((EMBEDDED_MODEL_DIR / "config.json").read_text())["vocab_size"]
KNOWN_ANSWER = "168"

# 100 batches of 2.7 requests on average per endpoint: over 800 requests per run, under a minute on a
# 2-core CPU. LYNX_TEST_THOROUGH=1 sends four times as many.
FUZZ_SETTINGS = settings(
    max_examples=400 if os.environ.get("LYNX_TEST_THOROUGH") == "1" else 100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)


class FuzzTarget:
    """The server under test; started again when a batch took it down, so shrinking can go on."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.starts = 0
        self.server = None
        self.batches = 0
        self.statuses = Counter()  # of fuzzed requests, by answer
        self.answered_after_last_batch = False  # the server solved the known problem after the last batch
        self.ensure_running()
        self.started_at = time.monotonic()

    def ensure_running(self):
        if self.server is not None and self.answered_after_last_batch and self.server.process.poll() is None:
            return
        if self.server is not None and self.server.healthy(within=0):
            return
        if self.server is not None:
            # A crashed SGLang spends a minute on crash diagnostics before it exits: stop it now.
            self.server.stop()
        self.starts += 1
        self.server = RunningServer([], self.log_dir / f"server-{self.starts}.log")
        self.server.wait_healthy()

    @property
    def url(self):
        return self.server.url

    def stop(self):
        self.server.stop()

    def summary(self):
        statuses = ", ".join(f"{status}: {count}" for status, count in sorted(self.statuses.items(), key=str))
        return (
            f"request fuzzing: {sum(self.statuses.values())} requests in {self.batches} batches "
            f"({statuses}), {time.monotonic() - self.started_at:.0f} s after the first start, "
            f"{self.starts} server start(s)"
        )


@pytest.fixture(scope="module")
def target(tmp_path_factory, pytestconfig):
    fuzz_target = FuzzTarget(tmp_path_factory.mktemp("fuzz"))
    try:
        yield fuzz_target
    finally:
        fuzz_target.stop()
        capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
        reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
        if capture is not None and reporter is not None and fuzz_target.batches:
            with capture.global_and_fixture_disabled():
                reporter.write_line("\n" + fuzz_target.summary())


# ---- values -------------------------------------------------------------------------------------

EXTREME_INTS = [-(2**63), -(2**31), -1, 0, 1, 2, 63, 64, VOCAB_SIZE - 1, VOCAB_SIZE, VOCAB_SIZE + 1,
                4096, 2**31, 2**63, 10**30]  # fmt: skip
EXTREME_FLOATS = [-1e308, -1.0, -0.0, 0.0, 1e-300, 0.5, 1.0, 2.0, 2.0000001, 1e308, math.inf, -math.inf, math.nan]

extreme_ints = st.sampled_from(EXTREME_INTS)
extreme_floats = st.sampled_from(EXTREME_FLOATS)
odd_scalars = st.one_of(st.none(), st.booleans(), extreme_ints, extreme_floats, st.text(max_size=12))
odd_values = st.recursive(
    odd_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)

token_ids = st.lists(
    st.one_of(st.integers(0, VOCAB_SIZE - 1), st.sampled_from([-1, VOCAB_SIZE, 99999999, 2**31, -(2**63)])),
    min_size=1,
    max_size=24,
)
texts = st.one_of(
    st.sampled_from(["123+45=", "12-345=", "12*34=", "r4821=", "1" * 5000]),
    st.text(max_size=40),  # any unicode, empty included
)
prompts = st.one_of(
    texts,
    token_ids,
    st.lists(texts, min_size=1, max_size=4),
    st.lists(token_ids, min_size=1, max_size=4),
    st.sampled_from([[], [[]], [""], [7] * 5000, [[5, 6], []]]),
)
stops = st.one_of(st.text(max_size=4), st.lists(st.text(max_size=4), max_size=3))
# Request ids: right and wrong shapes for single prompts and batches (they may collide: a 400 too).
rids = st.one_of(st.text(max_size=8), st.lists(st.text(max_size=4), max_size=3))


def ints(low, high):
    return st.one_of(st.integers(low, high), extreme_ints)


def floats(low, high):
    return st.one_of(st.floats(low, high), extreme_floats)


# Sampling fields shared by both OpenAI endpoints; max_tokens stays small so valid requests are quick.
OPENAI_SAMPLING = {
    "max_tokens": ints(1, 8),
    "temperature": floats(0, 2),
    "top_p": floats(0, 1),
    "top_k": ints(-1, 2 * VOCAB_SIZE),
    "min_p": floats(0, 1),
    "n": st.sampled_from([1, 1, 2, 3, 0, -1, 4097, 100_000]),
    "stop": stops,
    "stop_token_ids": token_ids,
    "seed": extreme_ints,
    "min_tokens": ints(0, 8),
    "presence_penalty": floats(-2, 2),
    "frequency_penalty": floats(-2, 2),
    "repetition_penalty": floats(0, 2),
    "logit_bias": st.dictionaries(st.integers(-2, VOCAB_SIZE + 2).map(str), floats(-100, 100), max_size=3),
    "ignore_eos": st.booleans(),
    "skip_special_tokens": st.booleans(),
    "stream": st.booleans(),
    "regex": st.sampled_from(["[0-9]+", "(", ".*", ""]),
    "json_schema": st.sampled_from(['{"type": "integer"}', "{not json", "{}"]),
    "ebnf": st.sampled_from(["root ::= [0-9]+", "root ::= "]),
}
COMPLETION_FIELDS = {
    **OPENAI_SAMPLING,
    "logprobs": ints(0, 5),
    "echo": st.booleans(),
    "suffix": texts,
    "best_of": ints(1, 2),
    "rid": rids,
}
CHAT_FIELDS = {
    **OPENAI_SAMPLING,
    "logprobs": st.booleans(),
    "top_logprobs": ints(0, 5),
    "max_completion_tokens": ints(1, 8),
    "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}, {"type": "nonsense"}]),
}
GENERATE_SAMPLING = {
    "max_new_tokens": ints(0, 8),
    "min_new_tokens": ints(0, 8),
    "temperature": floats(0, 2),
    "top_p": floats(0, 1),
    "top_k": ints(-1, 2 * VOCAB_SIZE),
    "min_p": floats(0, 1),
    "n": st.sampled_from([1, 1, 2, 0, -1, 4097, 100_000]),
    "beam_width": ints(1, 3),
    "stop": stops,
    "stop_token_ids": token_ids,
    "ignore_eos": st.booleans(),
    "presence_penalty": floats(-2, 2),
    "frequency_penalty": floats(-2, 2),
    "repetition_penalty": floats(0, 2),
    "regex": st.sampled_from(["[0-9]+", "(", ""]),
    "json_schema": st.sampled_from(['{"type": "integer"}', "{not json"]),
    "sampling_seed": extreme_ints,
    "stream_interval": ints(1, 4),
    "no_stop_trim": st.booleans(),
    "skip_special_tokens": st.booleans(),
    "custom_params": odd_values,
}
GENERATE_FIELDS = {
    "return_logprob": st.booleans(),
    "logprob_start_len": ints(-1, 8),
    "top_logprobs_num": ints(0, 5),
    "token_ids_logprob": token_ids,
    "stream": st.booleans(),
    "return_text_in_logprobs": st.booleans(),
    "return_hidden_states": st.booleans(),
    "priority": extreme_ints,
    "lora_path": st.sampled_from([None, "adapter"]),
    "input_embeds": st.sampled_from([[[0.5] * 4], [], [[math.nan]]]),
    "rid": rids,
}


# ---- requests -----------------------------------------------------------------------------------


@st.composite
def some_of(draw, fields):
    names = draw(st.lists(st.sampled_from(sorted(fields)), unique=True, max_size=5))
    return {name: draw(fields[name]) for name in names}


@st.composite
def mutated(draw, requests):
    """A request with a few fields replaced by odd values of any type, or removed."""
    request = dict(draw(requests))
    for name in draw(st.lists(st.sampled_from(sorted(request) + ["unknown_field"]), min_size=1, max_size=3)):
        if draw(st.integers(0, 4)) == 0:
            request.pop(name, None)
        else:
            request[name] = draw(odd_values)
    return request


def completion_requests():
    base = st.fixed_dictionaries({"model": st.just("default"), "prompt": prompts, "max_tokens": st.integers(1, 8)})
    valid = st.builds(lambda b, extra: {**b, **extra}, base, some_of(COMPLETION_FIELDS))
    return st.one_of(valid, mutated(valid)).map(lambda body: ("/v1/completions", body))


messages = st.lists(
    st.one_of(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]), "content": texts}),
        st.fixed_dictionaries({"role": st.just("user"), "content": st.lists(
            st.fixed_dictionaries({"type": st.just("text"), "text": texts}), max_size=2)}),  # fmt: skip
    ),
    min_size=1,
    max_size=3,
)


def chat_requests():
    base = st.fixed_dictionaries({"model": st.just("default"), "messages": messages, "max_tokens": st.integers(1, 8)})
    valid = st.builds(lambda b, extra: {**b, **extra}, base, some_of(CHAT_FIELDS))
    return st.one_of(valid, mutated(valid)).map(lambda body: ("/v1/chat/completions", body))


def generate_requests():
    source = st.one_of(
        st.fixed_dictionaries({"text": st.one_of(texts, st.lists(texts, min_size=1, max_size=3))}),
        st.fixed_dictionaries({"input_ids": st.one_of(
            token_ids, st.lists(token_ids, min_size=1, max_size=3), st.sampled_from([[[]], [[5], []]]))}),
    )  # fmt: skip
    sampling = st.one_of(some_of(GENERATE_SAMPLING), mutated(some_of(GENERATE_SAMPLING)))
    valid = st.builds(
        lambda src, params, extra: {**src, "sampling_params": {"max_new_tokens": 8, **params}, **extra},
        source, sampling, some_of(GENERATE_FIELDS),
    )  # fmt: skip
    return st.one_of(valid, mutated(valid)).map(lambda body: ("/generate", body))


raw_bodies = st.tuples(
    st.sampled_from(["/v1/completions", "/v1/chat/completions", "/generate"]),
    st.one_of(
        st.sampled_from([b"", b"{", b"[]", b"null", b"123", b'"x"', b'{"prompt": }', b"\xff\xfe"]),
        odd_values.map(lambda value: json.dumps(value).encode()),
    ),
)


def batches(requests):
    return st.lists(st.one_of(requests, raw_bodies), min_size=1, max_size=6)


# ---- checks -------------------------------------------------------------------------------------




def check_server_survives(target, batch):
    target.ensure_running()
    target.answered_after_last_batch = False
    with ThreadPoolExecutor(max_workers=len(batch)) as pool:
        replies = list(pool.map(lambda request: send(target.url, *request), batch))
    target.batches += 1
    target.statuses.update(status for status, _ in replies)
    for (path, body), (status, reply) in zip(batch, replies):
        # 2xx or 4xx: the client is told what was wrong; a 5xx or no answer is a server fault.
        assert status is not None, f"{path} {body!r:.2000} got no answer: {reply}"
        assert status < 500, f"{path} {body!r:.2000} -> {status} {reply!r:.2000}"
    assert known_problem_answer(target.url) == KNOWN_ANSWER, f"wrong answer after {batch!r:.4000}"
    target.answered_after_last_batch = True


# Requests that took the whole server down before the request guard, as found and shrunk, with
# what the 400 now says.
CRASHED_THE_SCHEDULER = [
    ("/v1/completions", {"model": "default", "prompt": [99999999], "max_tokens": 4},
     f"token id 99999999 at position 0 is outside the model's vocabulary; valid token ids are 0 to {VOCAB_SIZE - 1}"),
    ("/v1/completions", {"model": "default", "prompt": [[5, 6], [99999999]], "max_tokens": 1},
     "prompt 1 (of 2, counting from 0): token id 99999999 at position 0 is outside the model's vocabulary"),
    ("/generate", {"input_ids": [-1], "sampling_params": {"max_new_tokens": 8}},
     "token id -1 at position 0 is outside the model's vocabulary"),
    ("/v1/completions", {"model": "default", "prompt": "1+1=", "max_tokens": 1, "logprobs": VOCAB_SIZE + 1},
     f"top_logprobs_num (logprobs / top_logprobs) {VOCAB_SIZE + 1} is out of range"),
    ("/v1/chat/completions", {"model": "default", "messages": [{"role": "user", "content": "1+1="}], "max_tokens": 1,
                              "logprobs": True, "top_logprobs": 10**6},
     f"the model's vocabulary has {VOCAB_SIZE} tokens, so it must be 0 to {VOCAB_SIZE}"),
    ("/generate", {"text": "1+1=", "sampling_params": {"max_new_tokens": 1}, "return_logprob": True,
                   "logprob_start_len": -2},
     "logprob_start_len -2 is out of range; it must be -1"),
    ("/generate", {"text": "1+1=", "sampling_params": {"max_new_tokens": 2, "min_new_tokens": 1,
                                                       "stop_token_ids": [1000]}},
     "stop_token_ids: token id 1000 at position 0 is outside the model's vocabulary"),
    ("/v1/completions",
     {"model": "default", "prompt": "1+1=", "max_tokens": 2, "min_tokens": 1, "stop_token_ids": [-1]},
     "stop_token_ids: token id -1 at position 0 is outside the model's vocabulary"),
    ("/generate", {"text": "1+1=", "sampling_params": {"max_new_tokens": 1, "top_k": 2**31}},
     "top_k 2147483648 is out of range; it must be -1 (all tokens) or 1 to 2147483647"),
    ("/generate", {"text": "1+1=", "sampling_params": {"max_new_tokens": 1, "n": 100_000}},
     "this request asks for 100000 sequences (prompts x n); at most 4096"),
    # An empty prompt inside a batch: alone in a prefill batch, "cannot reshape tensor of 0 elements"
    # in the scheduler; next to another prompt, "served" from that prompt's logits.
    ("/generate", {"input_ids": [[]], "sampling_params": {"max_new_tokens": 2}},
     "prompt 0 (of 1, counting from 0) is empty: every prompt needs at least one token id"),
    ("/generate", {"input_ids": [[]], "sampling_params": {"max_new_tokens": 2}, "stream": True},
     "prompt 0 (of 1, counting from 0) is empty"),
    ("/generate", {"input_ids": [[1, 2], []], "sampling_params": {"max_new_tokens": 2}},
     "prompt 1 (of 2, counting from 0) is empty"),
    ("/generate", {"input_ids": [[], [1]], "sampling_params": {"max_new_tokens": 2, "n": 2}},
     "prompt 0 (of 2, counting from 0) is empty"),
    ("/v1/completions", {"model": "default", "prompt": [[1, 2], []], "max_tokens": 2},
     "prompt 1 (of 2, counting from 0) is empty"),
    ("/v1/completions", {"model": "default", "prompt": [[], [1, 2]], "max_tokens": 2, "stream": True},
     "prompt 0 (of 2, counting from 0) is empty"),
    # A list of rids with one per prompt let n past the sequence limit (5000 sequences were served).
    ("/generate", {"text": ["1+1="], "rid": ["big"], "sampling_params": {"max_new_tokens": 1, "n": 5000}},
     "this request asks for 5000 sequences (prompts x n); at most 4096"),
]  # fmt: skip

RID_SINGLE = (
    "rid must be a string for a single prompt, or a list of strings with one per prompt for a batch; "
    "got a list of"
)

# Requests the fuzzing or an audit found answered with a 500 (the server stayed up) or an unclear 400, or, streamed, with a 200
# whose stream was cut off before its first event; now a 400 (streamed: a 200 whose one event is
# the 400 error).
ANSWERED_WITH_A_500 = [
    ("/generate", {"text": ["123+45="], "sampling_params": {"max_new_tokens": 8, "n": 0}},
     "this request asks for no sequences (n = 0); n must be at least 1"),
    ("/v1/completions", {"model": "default", "prompt": "123+45=", "max_tokens": 2, "n": 0},
     "this request asks for no sequences (n = 0); n must be at least 1"),
    ("/generate", {"input_embeds": []}, "input_embeds must be a non-empty list of embedding vectors"),
    ("/generate", {"text": "r4821=", "sampling_params": [], "stream": True},
     "sampling_params is a list of 0 objects for 1 prompt(s)"),
    ("/generate", {"text": ["1+1=", "2+2="], "sampling_params": [{"max_new_tokens": 2}]},
     "sampling_params is a list of 1 objects for 2 prompt(s)"),
    ("/generate", {"text": "1+1=", "sampling_params": {"max_new_tokens": 2, "stop_regex": "(("}, "stream": True},
     "stop_regex '((' is not a valid regular expression"),
    ("/v1/chat/completions", {"model": "default", "messages": [{"role": "user", "content": "123+45="}],
                              "max_tokens": 1, "response_format": -(2**63)},
     "malformed request: a field has the wrong type"),
    ("/v1/chat/completions", [], "malformed request: a field has the wrong type"),
    # A rid list for a single prompt: "unhashable type: 'list'" (/generate streamed: cut off before any event).
    ("/v1/completions", {"model": "default", "prompt": [1, 2], "max_tokens": 2, "rid": ["a", "b"]}, RID_SINGLE),
    ("/v1/completions", {"model": "default", "prompt": [1, 2], "max_tokens": 2, "rid": ["a", "b"], "stream": True},
     RID_SINGLE),
    ("/generate", {"input_ids": [1, 2], "rid": ["a", "b"], "sampling_params": {"max_new_tokens": 2}}, RID_SINGLE),
    ("/generate", {"text": "1+1=", "rid": ["a", "b"], "stream": True, "sampling_params": {"max_new_tokens": 2}},
     RID_SINGLE),
    ("/v1/chat/completions", {"model": "default", "messages": [{"role": "user", "content": "1+1="}],
                              "max_tokens": 1, "rid": ["a"]}, RID_SINGLE),
    ("/generate", {"text": ["1+1=", "2+2="], "rid": ["a"], "sampling_params": {"max_new_tokens": 2}},
     "rid is a list of 1 string(s) for a batch of 2 prompts"),
    # Ids outside the vocabulary decoded to "" with a 200 (a negative one: a 500).
    ("/v1/detokenize", {"model": "default", "tokens": [100000]},
     f"token id 100000 at position 0 is outside the model's vocabulary; valid token ids are 0 to {VOCAB_SIZE - 1}"),
    ("/detokenize", {"model": "default", "tokens": [-1]}, "token id -1 at position 0 is outside the model's vocabulary"),
    ("/detokenize", {"model": "default", "tokens": [[5], [6, VOCAB_SIZE]]},
     f"token list 1 (of 2, counting from 0): token id {VOCAB_SIZE} at position 1 is outside"),
]  # fmt: skip



@pytest.mark.parametrize("path,body,message", CRASHED_THE_SCHEDULER + ANSWERED_WITH_A_500)
def test_a_request_found_by_fuzzing_gets_a_400_naming_the_value(target, path, body, message):
    target.ensure_running()
    status, reply = send(target.url, path, body)
    # A streamed /generate error is the first event of a 200 stream; /v1/* answer a 400 before streaming.
    streamed = isinstance(body, dict) and body.get("stream") and path == "/generate"
    assert status == (200 if streamed else 400), (status, reply)
    assert message in error_message(reply)
    target.answered_after_last_batch = False
    assert known_problem_answer(target.url) == KNOWN_ANSWER
    target.answered_after_last_batch = True


@FUZZ_SETTINGS
@given(batch=batches(completion_requests()))
def test_fuzzed_completion_requests_never_take_the_server_down(target, batch):
    check_server_survives(target, batch)


@FUZZ_SETTINGS
@given(batch=batches(chat_requests()))
def test_fuzzed_chat_requests_never_take_the_server_down(target, batch):
    check_server_survives(target, batch)


@FUZZ_SETTINGS
@given(batch=batches(generate_requests()))
def test_fuzzed_generate_requests_never_take_the_server_down(target, batch):
    check_server_survives(target, batch)
