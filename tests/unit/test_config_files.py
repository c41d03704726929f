"""Config files and the sources' precedence, where a user's file goes wrong: values of the wrong shape,
YAML mistakes (with their place in the file), keys given twice, and a file's schedule under a flag."""

import pytest

from lynx_sglang.config import ConfigError, LynxConfig, build_config
from lynx_sglang.scheduler.control import applied_config


def from_file(tmp_path, text: str, name: str = "lynx.yaml", flags=None, environ=None) -> LynxConfig:
    path = tmp_path / name
    path.write_text(text)
    return build_config({"config_file": str(path), **(flags or {})}, environ or {})


@pytest.mark.parametrize("text, message", [
    ("policy: lynx\nparams: 5\n", "params: 5 must be a mapping of parameters such as {alpha: 1.0}"),
    ("policy: anchor\nschedule: [{from_rows: 1, params: 7}]\n",
     "schedule[0].params: 7 must be a mapping of parameters"),
    ("policy: lynx\n1: a\nfoo: b\n", "unknown setting(s) 1, foo; known: policy, params"),
    ("policy: lynx\nparams: {alpha: 1\n", "not valid YAML (expected ',' or '}', but got '<stream end>', line 3, column 1)"),
    ("policy: lynx\nparams:\n  alpha: 1\n   beta: 2\n", "not valid YAML (mapping values are not allowed here, line 4, column 8)"),
    ("policy: lynx\nbudget: experts=2\npolicy: budget\n", "not valid YAML ('policy' is given twice, line 3, column 1)"),
    ("policy: lynx\nparams: {alpha: 1, alpha: 2}\n", "'alpha' is given twice"),
])  # fmt: skip
def test_a_file_that_goes_wrong_says_where_and_what(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        from_file(tmp_path, text)
    assert message in str(error.value), str(error.value)


def test_a_whole_config_posted_with_params_of_the_wrong_shape_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"params: 5 must be a mapping of parameters"):
        applied_config(LynxConfig(policy="lynx"), {"policy": "lynx", "params": 5})


def test_one_layer_as_a_number_is_a_layer_list(tmp_path):
    assert from_file(tmp_path, "policy: lynx\nlayers: 2\n").layers == (2,)
    assert from_file(tmp_path, '{"policy": "lynx", "layers": 3}', "lynx.json").layers == (3,)


SCHEDULE = """policy: anchor
params: {fill_to_k: false}
schedule:
  - {from_rows: 1, params: {ratio: 0.5}}
  - {from_rows: 3, params: {ratio: 0.3}, budget: experts=4}
"""


def test_a_flag_or_variable_outranks_the_bands_of_a_files_schedule(tmp_path):
    # flag > variable > file holds in every band: a --lynx-param was shown as running, but the bands kept theirs
    flagged = from_file(tmp_path, SCHEDULE, flags={"params": "ratio=0.9"})
    assert [band["params"] for band in flagged.schedule] == [{"fill_to_k": False, "ratio": 0.9}] * 2
    assert [band["budget"] for band in flagged.schedule] == [None, "experts=4"]
    varied = from_file(tmp_path, SCHEDULE, environ={"LYNX_BUDGET": "experts=6", "LYNX_PARAMS": "ratio=0.8"})
    assert [(band["params"]["ratio"], band["budget"]) for band in varied.schedule] == [(0.8, "experts=6")] * 2
    alone = from_file(tmp_path, SCHEDULE)
    assert [(band["params"]["ratio"], band["budget"]) for band in alone.schedule] == [(0.5, None), (0.3, "experts=4")]


def test_an_error_in_a_band_names_the_band_and_a_variable_names_itself():
    from lynx_sglang.policy_setup import validate_for_experts

    config = LynxConfig(policy="anchor", schedule=[{"from_rows": 1}, {"from_rows": 4, "budget": "experts=100"}])
    with pytest.raises(ConfigError) as error:
        validate_for_experts(config, 64, 8, True, "tiny")
    assert str(error.value) == ("schedule[1] (from 4 rows up): budget: experts=100 out of range: experts must be "
                                "an integer in 1..64")
    with pytest.raises(ConfigError, match=r"^LYNX_KERNEL: 'cuda' is not one of auto, sglang, lynx, triton$"):
        build_config({}, {"LYNX_KERNEL": "cuda"})


@pytest.mark.parametrize("top_level, message", [
    ({"policy": "lynx", "params": {"beta": 9}}, "policy 'lynx': parameter 'beta'=9 out of range (allowed: 1..8)"),
    ({"policy": "budget", "budget": "experts=17"}, "budget: experts=17 out of range: experts must be an integer in 1..16"),
])
def test_the_top_level_beside_a_schedule_is_checked_against_the_model_too(top_level, message):
    """Every band overrode it, so no band's check saw it: the scheduler built it at start and died
    (exit 247), and a switch that ended the schedule brought the out-of-range budget back."""
    from lynx_sglang.policy_setup import validate_for_experts

    params = {"beta": 2} if top_level["policy"] == "lynx" else {}
    bands = [{"from_rows": 1, "params": params, "budget": "experts=6"},
             {"from_rows": 4, "params": params, "budget": "experts=10"}]
    config = LynxConfig(**top_level, schedule=bands)
    with pytest.raises(ConfigError) as error:
        validate_for_experts(config, 16, 4, True, "trained-16x4")
    assert str(error.value) == f"the top-level setting beside the schedule: {message}"
