"""The SGLang settings both entry points read: the same names from `serve`'s flags and the engine's keywords."""

from lynx_sglang.sglang_settings import FlagSettings, KeywordSettings, as_flags, defaults_not_given


def test_flags_are_read_under_every_spelling_and_the_last_one_wins():
    given = FlagSettings(["--tp", "2", "--load-format=dummy", "--enable-dp-attention", "--tensor-parallel-size=4"])
    assert given.value("tp_size") == "4" and given.value("load_format") == "dummy"
    assert given.enabled("enable_dp_attention") and given.given("tp_size")
    assert not given.given("ep_size") and given.value("ep_size") is None
    assert not FlagSettings(["--ep-sizes", "2"]).given("ep_size")  # another flag, not a spelling of it


def test_keywords_given_as_false_count_as_given_but_not_enabled():
    given = KeywordSettings({"tp_size": 2, "sleep_on_idle": False, "revision": None})
    assert given.value("tp_size") == "2" and given.given("sleep_on_idle") and not given.enabled("sleep_on_idle")
    assert given.value("revision") is None and not given.given("dtype")


def test_defaults_fill_only_what_was_not_given_and_render_as_flags():
    defaults = {"device": "cpu", "sleep_on_idle": True, "max_total_tokens": 4096}
    assert defaults_not_given(defaults, KeywordSettings({"sleep_on_idle": False})) == {
        "device": "cpu", "max_total_tokens": 4096}  # fmt: skip
    assert defaults_not_given(defaults, FlagSettings(["--max-total-tokens=2048"])) == {
        "device": "cpu", "sleep_on_idle": True}  # fmt: skip
    assert as_flags(defaults) == ["--device", "cpu", "--sleep-on-idle", "--max-total-tokens", "4096"]
