"""Token ids outside the vocabulary are refused in the HTTP process, before the scheduler sees them."""

import inspect
import pkgutil

import numpy as np
import pytest

from lynx_sglang.server.request_guard import (
    VALIDATE_TARGET,
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


def test_the_hook_target_exists_with_the_arguments_the_hook_expects():
    # Guards an SGLang upgrade: a renamed or reordered method would silently leave the server unguarded.
    target = pkgutil.resolve_name(VALIDATE_TARGET)
    assert list(inspect.signature(target).parameters)[:3] == ["self", "obj", "input_ids"]
    registered = []
    register_hooks(lambda *args: registered.append(args))
    assert [(name, kind) for name, _, kind in registered] == [(VALIDATE_TARGET, "BEFORE")]
