import json

import pytest

from lynx_sglang.config import CONFIG_ENV, ConfigError, LynxConfig, build_config, parse_layers
from lynx_sglang.launch_checks import LaunchError
from lynx_sglang.serve import FLAG_NAMES, lynx_settings, parse_serve_args
from lynx_sglang.setting_values import Budget


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
    ("experts=0", "out of range"), ("experts=2.5", "whole number"), ("fraction=1.5", "out of range"),
    ("mass=0", "out of range"), ("tpot_ms=-3", "out of range"), ("speed=3", "not a budget"),
    ("experts=many", "not a number"), ("fraction=nan", "out of range"),
])  # fmt: skip
def test_bad_budgets_name_the_value(text, message):
    with pytest.raises(ConfigError, match=message) as error:
        Budget.parse(text)
    assert text.split("=")[0] in str(error.value)


@pytest.mark.parametrize("text,message", [
    # The value as given, never rounded into range; before a model is known, no expert count.
    ("experts=2.5", "budget: experts=2.5: experts must be a whole number of experts (an integer >= 1)"),
    ("experts=0", "budget: experts=0 out of range: experts must be an integer >= 1"),
    ("experts=-1", "budget: experts=-1 out of range: experts must be an integer >= 1"),
    ("experts=inf", "budget: experts=inf out of range: experts must be finite"),
    ("experts=nan", "budget: experts=nan out of range: experts must be finite"),
    ("tpot_ms=700000", "budget: tpot_ms=700000 out of range: a latency budget must be more than 0 and at most 600000 ms"),
    ("tpot_ms=0", "budget: tpot_ms=0 out of range: a latency budget must be more than 0 and at most 600000 ms"),
    ("mass=2", "budget: mass=2 out of range: mass must be in (0, 1]"),
])  # fmt: skip
def test_budget_errors_say_exactly_what_is_wrong(text, message):
    with pytest.raises(ConfigError) as error:
        Budget.parse(text)
    assert str(error.value) == message


def test_the_model_bounds_experts_with_its_own_count():
    assert Budget.parse("tpot_ms=600000") == Budget("tpot_ms", 600_000)
    assert str(Budget.parse("experts=4.0")) == "experts=4"
    Budget.parse("experts=64").check_range("budget", 64)
    for bad in ("experts=65", "experts=0"):
        with pytest.raises(ConfigError) as error:
            Budget("experts", float(bad.split("=")[1])).check_range("budget", 64)
        assert str(error.value) == f"budget: {bad} out of range: experts must be an integer in 1..64"
    with pytest.raises(ConfigError, match=r"^budget: experts=2.5: experts must be a whole number"):
        Budget("experts", 2.5).check_range("budget", 64)


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


@pytest.mark.parametrize("argv, flag", [(["--lynx-expert-cache", ""], "--lynx-expert-cache"),
                                        (["--lynx-budget= "], "--lynx-budget"),
                                        (["--lynx-param", "alpha=1", "--lynx-param", ""], "--lynx-param"),
                                        (["--lynx-config", ""], "--lynx-config")])
def test_an_empty_flag_value_is_refused_while_an_empty_variable_is_unset(argv, flag):
    """`--lynx-expert-cache $SLOTS` with SLOTS unset served with every expert resident, and said nothing."""
    namespace, _ = parse_serve_args(argv)
    with pytest.raises(ConfigError, match=f"^{flag}: empty value; leave it out for the default$"):
        build_config(lynx_settings(namespace), {}, flag_names=FLAG_NAMES)
    assert build_config({}, {"LYNX_EXPERT_CACHE": "", "LYNX_BUDGET": ""}) == LynxConfig()


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


@pytest.mark.parametrize("text, message", [
    ('{"policy": "lynx", "policy": "oea"}', r"config file .*twice.json: 'policy' is given twice"),
    ('{"policy": "lynx", "params": {"alpha": 1, "alpha": 2}}', r"'alpha' is given twice"),
    ('{"policy": "lynx", "params": {"alpha": Infinity}}', r"Infinity is not a JSON number"),
])  # fmt: skip
def test_a_json_config_file_with_a_key_twice_or_a_non_number_is_refused(tmp_path, text, message):
    # json.loads keeps the last of two keys silently (the YAML loader refuses them) and takes NaN.
    path = tmp_path / "twice.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        build_config({"config_file": str(path)}, {})


def test_bad_kernel_and_boolean_values():
    with pytest.raises(ConfigError, match="kernel"):
        build_config({"kernel": "cuda"}, {})
    with pytest.raises(ConfigError, match="LYNX_PRUNE_MIXED"):
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


def test_a_schedule_gives_each_band_its_params_over_the_base():
    config = LynxConfig(policy="anchor", params={"fill_to_k": False}, budget="experts=6",
                        schedule=[{"from_rows": 1, "params": {"ratio": 0.5}},
                                  {"from_rows": 12, "params": {"ratio": 0.3}, "budget": "none"}])
    (first, small), (start, large) = config.bands()
    assert (first, start) == (1, 12)
    assert small.params == {"fill_to_k": False, "ratio": 0.5} and small.budget == "experts=6"
    assert large.params == {"fill_to_k": False, "ratio": 0.3} and large.budget is None
    assert small.schedule is None and large.policy == "anchor"
    assert LynxConfig.from_env({CONFIG_ENV: config.to_env()}) == config
    assert config.public_view()["schedule"][1] == {"from_rows": 12, "params": {"fill_to_k": False, "ratio": 0.3},
                                                   "budget": None}
    assert LynxConfig(policy="anchor").bands() == [(1, LynxConfig(policy="anchor"))]


@pytest.mark.parametrize("schedule, message", [
    ([], "must be a list of bands"),
    ("ratio=0.3", "must be a list of bands"),
    ([{"from_rows": 2, "params": {}}], "the first band must start at 1"),
    ([{"from_rows": 1}, {"from_rows": 1}], "must be above the previous band's 1"),
    ([{"from_rows": 1}, {"from_rows": 8}, {"from_rows": 4}], "schedule[2].from_rows: 4 must be above"),
    ([{"from_rows": 1.5}], "must be a row count"),
    ([{"from_rows": True}], "must be a row count"),
    ([{"from_rows": 1, "ratio": 0.3}], "unknown field(s) ratio"),
    ([{"from_rows": 1, "budget": "experts=0"}], "schedule[0].budget"),
    ([{"from_rows": 1, "budget": "tpot_ms=20"}], "tpot_ms cannot vary by band"),
    ([{"from_rows": 1, "params": "ratio"}], "schedule[0].params"),
    (["band"], "must be a mapping"),
])
def test_a_bad_schedule_is_named(schedule, message):
    with pytest.raises(ConfigError) as caught:
        LynxConfig(policy="anchor", schedule=schedule)
    assert message in str(caught.value)


@pytest.mark.parametrize("raw,expected", [
    ("2", "2"), (2, "2"), ("25%", "25%"), (" 12.5 % ", "12.5%"), ("100%", "100%"), ("off", None), (None, None),
])  # fmt: skip
def test_expert_cache_sizes_parse(raw, expected):
    assert build_config({"expert_cache": raw}, {}).expert_cache == expected


@pytest.mark.parametrize("raw,message", [
    ("0", "'0' out of range: at least 1 resident expert"), ("-2", "out of range"),
    ("0%", "out of range: a share must be in \\(0, 100\\]%"), ("101%", "out of range"), ("nan%", "out of range"),
    ("two", "'two' is not a slot count such as 2 nor a share such as 25%"), ("2.5", "is not a slot count"),
    ("%", "is not a slot count"), (True, "must be a slot count"),
])  # fmt: skip
def test_bad_expert_cache_sizes_are_named(raw, message):
    with pytest.raises(ConfigError, match=f"expert_cache: .*{message}"):
        build_config({"expert_cache": raw}, {})


def test_expert_cache_slots_per_layer_round_shares_up():
    from lynx_sglang.setting_values import expert_cache_slots

    assert [expert_cache_slots("25%", e) for e in (8, 64, 6, 1)] == [2, 16, 2, 1]
    assert expert_cache_slots("1%", 8) == 1 and expert_cache_slots("100%", 8) == 8
    assert expert_cache_slots("3", 8) == 3
    with pytest.raises(ConfigError, match="expert_cache: 9 slots out of range: this model has 8 experts"):
        expert_cache_slots("9", 8)


def test_cache_settings_from_every_source(tmp_path):
    config_file = tmp_path / "lynx.yaml"
    config_file.write_text("expert_cache: 50%\ncache_policy: activation\n")
    config = build_config({"config_file": str(config_file)}, {})
    assert (config.expert_cache, config.cache_policy) == ("50%", "activation")
    config = build_config({"config_file": str(config_file)}, {"LYNX_EXPERT_CACHE": "3", "LYNX_CACHE_POLICY": "lru"})
    assert (config.expert_cache, config.cache_policy) == ("3", "lru")
    assert build_config({}, {}).expert_cache is None and build_config({}, {}).cache_policy == "lru"
    with pytest.raises(ConfigError, match="^LYNX_CACHE_POLICY: 'fifo' is not one of lru, activation"):
        build_config({}, {"LYNX_CACHE_POLICY": "fifo"})
    with pytest.raises(ConfigError, match="kernel 'sglang' cannot read experts through it"):
        build_config({"expert_cache": "2", "kernel": "sglang"}, {})
    assert build_config({"expert_cache": "2"}, {"LYNX_CACHE_PREFETCH": "1"}).cache_prefetch is True
    with pytest.raises(ConfigError, match="cache_prefetch: prefetches into the expert cache; set expert_cache too"):
        build_config({"cache_prefetch": True}, {})
    with pytest.raises(ConfigError, match="cache_policy: 'activation' chooses what the expert cache keeps; set "
                                          "expert_cache too"):  # as prefetch is: a setting that would do nothing
        build_config({}, {"LYNX_CACHE_POLICY": "activation"})
    with pytest.raises(ConfigError, match="LYNX_CACHE_PREFETCH: 'maybe' must be true or false"):
        build_config({"expert_cache": "2"}, {"LYNX_CACHE_PREFETCH": "maybe"})
    cached = LynxConfig(expert_cache="25%", cache_policy="activation", cache_prefetch=True)
    assert LynxConfig.from_env({CONFIG_ENV: cached.to_env()}) == cached


def test_prefer_resident_needs_the_expert_cache():
    from lynx_sglang.policy_setup import validate_settings

    with pytest.raises(ConfigError, match="prefer_resident.*--lynx-expert-cache"):
        validate_settings(LynxConfig(policy="lynx", params={"prefer_resident": True}))
    validate_settings(LynxConfig(policy="lynx", params={"prefer_resident": True}, expert_cache="2"))
    validate_settings(LynxConfig(policy="lynx", params={"prefer_resident": False}))


def test_a_setting_nested_too_deeply_is_a_value_error_not_a_recursion_error():
    """POST /lynx/policy with a body nested 100,000 deep answered a 500 (RecursionError)."""
    from lynx_sglang.setting_values import strict_json

    with pytest.raises(ValueError, match="nested too deeply to be a setting"):
        strict_json('{"params": ' + "[" * 100_000 + "]" * 100_000 + "}")
