"""Registry, parameter validation and the lynx default table."""

from importlib.metadata import EntryPoint

import pytest
import torch

from lynx_sglang.policies import (
    BUILTIN_POLICIES,
    LYNX_FALLBACK,
    PolicyConfigError,
    available_policies,
    get_policy,
    lynx_defaults,
)
from lynx_sglang.policies import registry
from policies_testlib import make_logits, normal_routing

BUILTINS = ["anchor", "baseline", "budget", "coverage", "lynx", "lynx-v1", "oea", "random", "static-topk", "topn"]


def test_builtin_names():
    assert sorted(BUILTIN_POLICIES) == BUILTINS
    assert set(BUILTINS) <= set(available_policies())


def test_unknown_name_lists_available():
    with pytest.raises(PolicyConfigError, match=r"unknown policy 'foo'; available: anchor, baseline, budget, coverage"):
        get_policy("foo", num_experts=64, top_k=8)


def test_errors_are_value_errors():
    assert issubclass(PolicyConfigError, ValueError)


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("budget", {"num_experts_kept": 0},
         "policy 'budget': parameter 'num_experts_kept'=0 out of range (allowed: 8..64)"),
        ("budget", {"num_experts_kept": 65}, "'num_experts_kept'=65 out of range (allowed: 8..64)"),
        ("budget", {"fraction": 0.0}, "'fraction'=0.0 out of range (allowed: (0.0, 1.0])"),
        ("budget", {"fraction": 0.5, "num_experts_kept": 9}, "either 'num_experts_kept' or 'fraction'"),
        ("topn", {"num_experts_kept": 2.5}, "'num_experts_kept'=2.5 must be an integer (allowed: 8..64)"),
        ("random", {"seed": -1}, "'seed'=-1 out of range"),
        ("lynx", {"alpha": 0}, "'alpha'=0.0 out of range (allowed: (0.0, 100.0])"),
        ("lynx", {"alpha": "big"}, "'alpha'='big' must be a number"),
        ("lynx", {"beta": 0}, "'beta'=0 out of range (allowed: 1..8)"),
        ("lynx", {"beta": True}, "'beta'=True must be an integer"),
        ("lynx", {"model_name": 3}, "'model_name'=3 must be a string"),
        ("lynx-v1", {"threshold": 1.5}, "'threshold'=1.5 out of range (allowed: [0.0, 1.0])"),
        ("oea", {"k0": 9}, "'k0'=9 out of range (allowed: 1..8)"),
        ("static-topk", {"top_k_used": 8}, "'top_k_used'=8 out of range (allowed: 1..7)"),
        ("coverage", {"mass_fraction": float("nan")}, "'mass_fraction'=nan out of range"),
        ("coverage", {"max_dropped_mass": -0.1}, "'max_dropped_mass'=-0.1 out of range"),
        ("budget", {"layers": [1, -2]}, "parameter 'layers' holds -2"),
        ("budget", {"layers": 3}, "parameter 'layers'=3 must be None or a list"),
        ("budget", {"renormalize": "yes"}, "'renormalize'='yes' must be True or False"),
    ],
)
def test_bad_parameters_name_parameter_value_and_range(name, params, message):
    with pytest.raises(PolicyConfigError) as error:
        get_policy(name, num_experts=64, top_k=8, **params)
    assert message in str(error.value)


def test_unknown_parameter_lists_accepted_ones():
    with pytest.raises(PolicyConfigError, match=r"policy 'budget': unknown parameter 'budget'; accepted: "
                                                 r"layers, num_experts_kept, fraction"):
        get_policy("budget", num_experts=64, top_k=8, budget=3)
    with pytest.raises(PolicyConfigError, match=r"unknown parameter 'alpha'; accepted: layers$"):
        get_policy("baseline", num_experts=64, top_k=8, alpha=3)


def test_bad_shapes_of_model():
    with pytest.raises(PolicyConfigError, match=r"'top_k'=9 out of range \(allowed: 1..8\)"):
        get_policy("lynx", num_experts=8, top_k=9)
    with pytest.raises(PolicyConfigError, match="static-topk.*top_k >= 2"):
        get_policy("static-topk", num_experts=8, top_k=1)


def test_select_rejects_wrong_shapes():
    policy = get_policy("lynx", num_experts=8, top_k=2)
    logits = make_logits(3, 8, seed=0)
    ids, weights = normal_routing(logits, 2, True)
    with pytest.raises(ValueError, match=r"router_logits must be \[T, 8\]"):
        policy.select(logits[:, :4], ids, weights)
    with pytest.raises(ValueError, match=r"topk_ids and topk_weights must be \[3, 2\]"):
        policy.select(logits, ids[:, :1], weights)
    # float ids: the C++ and Triton paths read their bits as integers and gave another routing, silently
    for implementation in ("torch", "auto"):
        with pytest.raises(ValueError, match=r"topk_ids must be integer expert ids, got torch.float32"):
            policy.select(logits, ids.float(), weights, implementation=implementation)


def test_module_class_path():
    policy = get_policy("policies_testlib:FirstExpertsPolicy", num_experts=16, top_k=2, n=4)
    logits = make_logits(10, 16, seed=1)
    ids, weights = normal_routing(logits, 2, True)
    decision = policy.select(logits, ids, weights)
    assert decision.active_mask.tolist() == [True] * 4 + [False] * 12
    with pytest.raises(PolicyConfigError, match="unknown parameter 'm'; accepted: layers, n"):
        get_policy("policies_testlib:FirstExpertsPolicy", num_experts=16, top_k=2, m=4)
    with pytest.raises(PolicyConfigError, match="not a Policy subclass"):
        get_policy("policies_testlib:NotAPolicy", num_experts=16, top_k=2)
    with pytest.raises(PolicyConfigError, match="cannot import module 'no_such_module_xyz'"):
        get_policy("no_such_module_xyz:Thing", num_experts=16, top_k=2)
    with pytest.raises(PolicyConfigError, match="has no 'Missing'"):
        get_policy("policies_testlib:Missing", num_experts=16, top_k=2)
    # a module that exits as it is imported (a script parsing argv) took the scheduler down with it
    with pytest.raises(PolicyConfigError, match=r"importing module 'venv.__main__' failed: SystemExit: 2"):
        get_policy("venv.__main__:Thing", num_experts=16, top_k=2)


def test_entry_point_policies(monkeypatch):
    plugin = EntryPoint(name="first-experts", value="policies_testlib:FirstExpertsPolicy",
                        group="lynx_sglang.policies")

    def fake_entry_points(group):
        assert group == "lynx_sglang.policies"
        return [plugin]

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    assert "first-experts" in available_policies()
    policy = get_policy("first-experts", num_experts=16, top_k=2, n=3)
    assert policy.n == 3
    with pytest.raises(PolicyConfigError, match="available: anchor, baseline, .*first-experts"):
        get_policy("nope", num_experts=16, top_k=2)


@pytest.mark.parametrize(
    "num_experts, top_k, model_name, expected",
    [
        (8, 2, None, (0.7, 1)),
        (8, 2, "mistralai/Mixtral-8x22B-Instruct-v0.1", (1.0, 1)),
        (8, 2, "mistralai/Mixtral-8x7B-v0.1", (0.7, 1)),
        (64, 8, None, (3.0, 4)),
        (64, 8, "Qwen/Qwen2-57B-A14B-Instruct", (3.0, 4)),
        (128, 8, None, (3.0, 2)),
        (128, 8, "Qwen/Qwen3-30B-A3B", (3.0, 2)),
        (128, 8, "Qwen/Qwen3-235B-A22B-Thinking-2507", (1.0, 2)),
        (160, 6, None, (1.0, 2)),
        (64, 6, None, (1.0, 2)),
        (64, 6, "deepseek-ai/DeepSeek-V2-Lite", (1.0, 2)),
        (128, 4, None, (3.0, 2)),
        (128, 4, "openai/gpt-oss-120b", (3.0, 2)),
        (60, 4, None, LYNX_FALLBACK),
        (60, 4, "some/unknown-model", LYNX_FALLBACK),
        # a name on another shape is not that model: a 6-expert top-1 `tiny-mixtral`, a 16-expert Qwen3
        (6, 1, "tiny-mixtral", LYNX_FALLBACK),
        (16, 4, "qwen3-tiny", LYNX_FALLBACK),
        (8, 2, "qwen3-tiny", (0.7, 1)),
        (32, 4, "openai/gpt-oss-20b", (3.0, 2)),
    ],
)
def test_lynx_default_table(num_experts, top_k, model_name, expected):
    assert lynx_defaults(num_experts, top_k, model_name) == expected


def test_lynx_defaults_are_used_and_overridable():
    policy = get_policy("lynx", num_experts=128, top_k=8)
    assert (policy.alpha, policy.beta) == (3.0, 2)
    policy = get_policy("lynx", num_experts=128, top_k=8, model_name="Qwen3-235B-A22B-Thinking-2507")
    assert (policy.alpha, policy.beta) == (1.0, 2)
    policy = get_policy("lynx", num_experts=128, top_k=8, beta=3)
    assert (policy.alpha, policy.beta) == (3.0, 3)


@pytest.mark.parametrize("kind", ["sigmoid", "biased-sigmoid", "biased-grouped-sigmoid", "biased-sqrtsoftplus"])
def test_sigmoid_family_routers_get_their_own_lynx_default_whatever_the_name(kind):
    """The authors' settings were tuned on softmax logits; a per-expert-scored router's are flatter."""
    assert lynx_defaults(256, 8, "deepseek-ai/DeepSeek-V3", kind) == (2.0, 2)
    policy = get_policy("lynx", 16, 4, router_kind=kind)
    assert (policy.alpha, policy.beta) == (2.0, 2)
    assert get_policy("lynx", 16, 4, router_kind=kind, alpha=1.0).alpha == 1.0  # a user's value wins


@pytest.mark.parametrize("kind", [None, "softmax", "grouped-softmax"])
def test_softmax_routers_keep_the_authors_lynx_defaults(kind):
    assert lynx_defaults(160, 6, "deepseek-ai/DeepSeek-Coder-V2", kind) == (1.0, 2)
    assert lynx_defaults(128, 8, None, kind) == (3.0, 2)


@pytest.mark.parametrize("kind", ["relu", "biased", "grouped-biased-sigmoid-x", 3])
def test_an_unknown_router_kind_is_refused_by_name(kind):
    with pytest.raises(PolicyConfigError, match="parameter 'router_kind'"):
        get_policy("lynx", 16, 4, router_kind=kind)
