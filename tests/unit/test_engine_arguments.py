"""`lynx_sglang.engine.Engine`'s keywords, checked before any process starts (no engine runs here;
tests/integration/test_engine.py runs one)."""

import json

import pytest

from lynx_sglang.config import CONFIG_ENV, ConfigError
from lynx_sglang.engine import engine_arguments


def test_lynx_keywords_reach_the_scheduler_and_a_cpu_gets_serves_defaults():
    kwargs, environment, config = engine_arguments(
        {"lynx_policy": "lynx", "lynx_params": {"alpha": 1.5}, "lynx_budget": "fraction=0.5", "dtype": "float32",
         "mem_fraction_static": 0.5}, environ={}, on_cpu=True)  # fmt: skip
    assert not any(key.startswith("lynx_") for key in kwargs)
    handed_down = json.loads(environment[CONFIG_ENV])
    assert handed_down["policy"] == "lynx" and handed_down["params"] == {"alpha": 1.5}
    assert handed_down["budget"] == "fraction=0.5"
    assert config.policy == "lynx"
    # serve's CPU defaults, typed as ServerArgs holds them; the caller's own keywords untouched
    assert kwargs["device"] == "cpu" and kwargs["cuda_graph_backend_decode"] == "disabled"
    assert kwargs["max_total_tokens"] == 4096 and kwargs["sleep_on_idle"] is True
    assert kwargs["mem_fraction_static"] == 0.5 and kwargs["model_path"].endswith("checkpoint")
    assert environment["OMP_NUM_THREADS"] == "1"


def test_a_caller_setting_wins_over_a_default():
    kwargs, _, _ = engine_arguments({"max_total_tokens": 2048, "attention_backend": "triton"}, environ={}, on_cpu=True)
    assert kwargs["max_total_tokens"] == 2048 and kwargs["attention_backend"] == "triton"


def test_a_keyword_given_as_false_or_one_is_taken_as_given():
    kwargs, _, _ = engine_arguments({"lynx_policy": "lynx", "sleep_on_idle": False, "enable_dp_attention": False,
                                     "attn_dp_size": 1, "tp_size": 1}, environ={}, on_cpu=True)  # fmt: skip
    assert kwargs["sleep_on_idle"] is False and kwargs["device"] == "cpu"


def test_a_gpu_with_sglangs_kernels_gets_no_defaults():
    kwargs, environment, _ = engine_arguments({"lynx_policy": "lynx"}, environ={}, on_cpu=False, sgl_kernel_ok=True)
    assert set(kwargs) == {"model_path"} and set(environment) == {CONFIG_ENV}


@pytest.mark.parametrize("kwargs,needle", [
    ({"lynx_polcy": "lynx"}, "unknown keyword lynx_polcy"),
    ({"lynx_admin_token": "x"}, "unknown keyword lynx_admin_token"),
    ({"lynx_policy": "no-such-policy"}, "no-such-policy"),
    ({"lynx_policy": "lynx", "lynx_budget": "fraction=2"}, "lynx_budget: fraction=2 out of range"),
    ({"lynx_policy": "lynx", "lynx_budget": "tpot_ms=30", "tp_size": 2}, "tensor parallelism"),
    ({"lynx_policy": "lynx", "ep_size": 2}, "expert parallelism"),
    ({"lynx_policy": "lynx", "attn_dp_size": 2}, "--attn-dp-size 2"),
    ({"lynx_policy": "lynx", "enable_dp_attention": True}, "--enable-dp-attention"),
    ({"lynx_policy": "lynx", "tp_size": 2, "moe_dp_size": 2}, "--moe-dp-size 2"),
    ({"model_path": "/nonexistent/model"}, "/nonexistent/model"),
    ({"server_args": object()}, "not server_args="),
])  # fmt: skip
def test_bad_keywords_name_the_problem_before_anything_starts(kwargs, needle):
    with pytest.raises(ConfigError, match=None) as error:
        engine_arguments(kwargs, environ={}, on_cpu=True)
    assert needle in str(error.value), str(error.value)


def test_without_sglangs_kernels_on_a_gpu_the_engine_says_to_serve_instead():
    with pytest.raises(ConfigError, match="sgl_kernel"):
        engine_arguments({}, environ={}, on_cpu=False, sgl_kernel_ok=False)
