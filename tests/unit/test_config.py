import json

import pytest

from lynx_sglang.config import CONFIG_ENV, Budget, ConfigError, LynxConfig, build_config, parse_layers
from lynx_sglang.serve import LaunchError, lynx_settings, parse_serve_args


def test_non_lynx_flags_pass_through_in_order():
    namespace, rest = parse_serve_args(["--tp", "2", "--lynx-policy", "lynx", "--enable-foo",
                                        "--mem-fraction-static=0.5"])
    assert rest == ["--tp", "2", "--enable-foo", "--mem-fraction-static=0.5"]
    assert lynx_settings(namespace) == {"policy": "lynx"}


def test_unknown_lynx_flag_is_an_error_naming_it():
    with pytest.raises(LaunchError, match="unknown flag --lynx-bogus"):
        parse_serve_args(["--lynx-bogus=1"])


def test_lynx_flags_are_not_abbreviated():
    with pytest.raises(LaunchError, match="unknown flag --lynx-pol"):
        parse_serve_args(["--lynx-pol", "lynx"])


def test_config_round_trips_through_the_environment():
    cfg = LynxConfig(policy="lynx", params={"alpha": 1.0}, budget="fraction=0.5", layers=(1, 2), runtime_dir="/x")
    assert LynxConfig.from_env({CONFIG_ENV: cfg.to_env()}) == cfg


@pytest.mark.parametrize("raw,message", [("{", "not valid JSON"), ('{"nope": 1}', "unknown field")])
def test_bad_config_env_is_a_specific_error(raw, message):
    with pytest.raises(ConfigError, match=message):
        LynxConfig.from_env({CONFIG_ENV: raw})


@pytest.mark.parametrize("text,expected", [
    ("experts=4", Budget("experts", 4)), ("fraction=0.5", Budget("fraction", 0.5)),
    ("mass=0.9", Budget("mass", 0.9)), ("tpot_ms=25", Budget("tpot_ms", 25)), ("none", None), (None, None),
])  # fmt: skip
def test_budgets_parse(text, expected):
    assert Budget.parse(text) == expected


@pytest.mark.parametrize("text,message", [
    ("experts=0", "out of range"), ("experts=2.5", "out of range"), ("fraction=1.5", "out of range"),
    ("mass=0", "out of range"), ("tpot_ms=-3", "out of range"), ("speed=3", "not a budget"),
    ("experts=many", "not a number"), ("fraction=nan", "out of range"),
])  # fmt: skip
def test_bad_budgets_name_the_value(text, message):
    with pytest.raises(ConfigError, match=message) as error:
        Budget.parse(text)
    assert text.split("=")[0] in str(error.value)


def test_layer_lists():
    assert parse_layers("1-3,5") == (1, 2, 3, 5)
    assert parse_layers([4, 0]) == (0, 4)
    assert parse_layers("all") is None
    for bad in ("3-1", "a", "-1", "1,,2"):
        with pytest.raises(ConfigError):
            parse_layers(bad)


def test_precedence_flag_over_env_over_file(tmp_path):
    config_file = tmp_path / "lynx.yaml"
    config_file.write_text("policy: oea\nparams: {k0: 1}\nbudget: experts=6\nkernel: sglang\nlayers: 0-1\n")
    environ = {"LYNX_CONFIG": str(config_file), "LYNX_POLICY": "lynx", "LYNX_PARAMS": "alpha=2,beta=1",
               "LYNX_BUDGET": "fraction=0.5"}
    config = build_config({"budget": "experts=3", "params": ["alpha=0.5"]}, environ)
    assert config.policy == "lynx"  # env over file
    assert config.params == {"k0": 1, "alpha": 0.5, "beta": 1}  # merged key by key, flag wins
    assert config.budget == "experts=3"  # flag over env
    assert config.kernel == "sglang" and config.layers == (0, 1)  # only the file says so


def test_json_config_file_and_its_errors(tmp_path):
    good = tmp_path / "c.json"
    good.write_text(json.dumps({"policy": "topn", "prune_mixed": True, "stats": "off"}))
    config = build_config({"config_file": str(good)}, {})
    assert (config.policy, config.prune_mixed, config.stats) == ("topn", True, False)
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config({"config_file": str(bad)}, {})
    unknown = tmp_path / "u.json"
    unknown.write_text(json.dumps({"polcy": "lynx"}))
    with pytest.raises(ConfigError, match="unknown setting.*polcy"):
        build_config({"config_file": str(unknown)}, {})
    with pytest.raises(ConfigError, match="cannot read"):
        build_config({"config_file": str(tmp_path / "missing.yaml")}, {})


def test_bad_kernel_and_boolean_values():
    with pytest.raises(ConfigError, match="kernel"):
        build_config({"kernel": "cuda"}, {})
    with pytest.raises(ConfigError, match="prune_mixed"):
        build_config({}, {"LYNX_PRUNE_MIXED": "maybe"})


def test_public_view_hides_the_token():
    view = LynxConfig(admin_token="s3cret").public_view()
    assert "admin_token" not in view and "s3cret" not in json.dumps(view)


@pytest.mark.parametrize("raw", ["alpha=0.5,beta=2", "alpha=0.5 beta=2", '{"alpha": 0.5, "beta": 2}',
                                 ["alpha=0.5", "beta=2"], ["alpha=0.5,beta=2"]])
def test_params_in_every_spelling(raw):
    assert build_config({"params": raw}, {}).params == {"alpha": 0.5, "beta": 2}
    if isinstance(raw, str):
        assert build_config({}, {"LYNX_PARAMS": raw}).params == {"alpha": 0.5, "beta": 2}


def test_list_params_parse_as_json_in_flags_and_environment():
    expected = {"ratio": [0.2, 0.3], "fill_to_k": False}
    assert build_config({"params": ["ratio=[0.2,0.3]", "fill_to_k=false"]}, {}).params == expected
    assert build_config({}, {"LYNX_PARAMS": "ratio=[0.2,0.3],fill_to_k=false"}).params == expected
    with pytest.raises(ConfigError, match=r"^flag params: ratio: value '\[0.2' is not valid JSON"):
        build_config({"params": ["ratio=[0.2"]}, {})
