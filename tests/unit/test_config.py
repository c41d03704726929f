import pytest

from lynx_sglang.config import CONFIG_ENV, ConfigError, LynxConfig, split_lynx_flags


def test_non_lynx_flags_pass_through_in_order():
    ours, rest = split_lynx_flags(["--tp", "2", "--enable-foo", "--mem-fraction-static=0.5"])
    assert ours == {} and rest == ["--tp", "2", "--enable-foo", "--mem-fraction-static=0.5"]


def test_unknown_lynx_flag_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="unknown flag --lynx-bogus"):
        split_lynx_flags(["--lynx-bogus=1"])


def test_config_round_trips_through_the_environment():
    cfg = LynxConfig(runtime_dir="/x")
    assert LynxConfig.from_env({CONFIG_ENV: cfg.to_env()}) == cfg


@pytest.mark.parametrize("raw,message", [("{", "not valid JSON"), ('{"nope": 1}', "unknown field")])
def test_bad_config_env_is_a_specific_error(raw, message):
    with pytest.raises(ConfigError, match=message):
        LynxConfig.from_env({CONFIG_ENV: raw})
