"""Task files, scoring rules and arm specs of `lynx-sglang ab` / `sweep` (no server)."""

import json
from pathlib import Path

import pytest

from lynx_sglang.experiments.arms import Arm, ArmSpecError, arm_from_flags, expand_values, parse_arms
from lynx_sglang.experiments.cli_args import parse_levels
from lynx_sglang.experiments.tasks import (
    TaskError,
    builtin_items,
    exact_match,
    jsonl_items,
    last_number,
    load_items,
    make_scorer,
    number_match,
)


def write_lines(tmp_path, lines):
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_items_keep_order_task_and_number_answers(tmp_path):
    path = write_lines(tmp_path, ['{"prompt": "1+1=", "answer": "2", "task": "add"}', "",
                                  '{"prompt": "Q: 3*4?", "answer": 12}'])
    items = jsonl_items(path)
    assert [(i.prompt, i.answer, i.task) for i in items] == [("1+1=", "2", "add"), ("Q: 3*4?", "12", "all")]


@pytest.mark.parametrize("bad_line, reason", [
    ('{"prompt": "1+1=", "answer": "2"', "not valid JSON"),
    ('["1+1=", "2"]', "expected a JSON object"),
    ('{"prompt": "1+1="}', 'missing "answer"'),
    ('{"answer": "2"}', 'missing "prompt"'),
    ('{"prompt": "", "answer": "2"}', '"prompt" must be a non-empty string'),
    ('{"prompt": "x", "answer": null}', '"answer" must be a string or a number'),
    ('{"prompt": "x", "answer": true}', '"answer" must be a string or a number'),
    ('{"prompt": "x", "answer": "1", "task": 3}', '"task" must be a non-empty string'),
])
def test_a_malformed_line_is_reported_with_its_line_number(tmp_path, bad_line, reason):
    path = write_lines(tmp_path, ['{"prompt": "1+1=", "answer": "2"}', "", bad_line])
    with pytest.raises(TaskError) as error:
        jsonl_items(path)
    assert f"{path}:3:" in str(error.value) and reason in str(error.value)


def test_missing_and_empty_task_files_are_errors(tmp_path):
    with pytest.raises(TaskError, match="does not exist"):
        jsonl_items(tmp_path / "nope.jsonl")
    with pytest.raises(TaskError, match="no items"):
        jsonl_items(write_lines(tmp_path, ["", "  "]))


def test_builtin_items_are_distinct_heldout_problems_of_every_kind():
    items = builtin_items(40, seed=0)
    assert len({i.prompt for i in items}) == 40
    assert {i.task for i in items} == {"add", "sub", "mul", "rev"}
    assert all(exact_match(i.answer + "\n", i.answer) for i in items)
    assert load_items("arithmetic", 40, 0) == items  # same seed, same items


def test_load_items_takes_the_first_n_lines_of_a_file(tmp_path):
    path = write_lines(tmp_path, [json.dumps({"prompt": f"p{i}", "answer": str(i)}) for i in range(5)])
    assert [i.answer for i in load_items(str(path), 3, 0)] == ["0", "1", "2"]


def test_exact_match_uses_the_first_line_stripped():
    assert exact_match(" 168 \nmore", "168")
    assert not exact_match("1680", "168")
    assert not exact_match("", "168")


@pytest.mark.parametrize("text, number", [
    ("The answer is 42.", "42"), ("so 1,234 apples", "1234"), ("-7 then 3.50", "3.5"), ("x = -0", "0"),
    ("#### 72", "72"), ("2.0", "2"), ("no digits", None), ("007", "7"), ("is .5", "0.5"), ("-0.50", "-0.5"),
    ("-.0", "0"), ("0,001", "1"),
])
def test_last_number(text, number):
    assert last_number(text) == number


def test_number_scoring_compares_last_numbers():
    assert number_match("She has 3 apples, then 5 more: 8", "8")
    assert number_match("Total: $1,000.00", "1000")
    assert not number_match("8 apples, minus 1 is 7", "8")
    assert not number_match("I don't know", "8")


def test_regex_scoring_uses_group_one_or_the_whole_match():
    assert make_scorer(r"regex:answer: (\w+)")("the answer: yes!", "yes")
    assert not make_scorer(r"regex:answer: (\w+)")("the answer: no", "yes")
    assert make_scorer(r"regex:\d+")("abc 17 def", "17")
    assert not make_scorer(r"regex:\d+")("abc", "17")


def test_bad_scoring_rules_are_errors():
    with pytest.raises(TaskError, match="unknown --score"):
        make_scorer("fuzzy")
    with pytest.raises(TaskError, match="invalid regular expression"):
        make_scorer("regex:(unclosed")


# ---- arms ----------------------------------------------------------------------------------------

def test_value_lists_ranges_and_types():
    assert expand_values("0.5,1,2") == [0.5, 1, 2]
    assert expand_values("3..6") == [3, 4, 5, 6]
    assert expand_values("true") == [True] and expand_values("none") == [None]
    assert expand_values("mass") == ["mass"]
    assert expand_values("[0,1]") == [[0, 1]]
    assert expand_values("[0,1],[2],{\"a\":[1,2]}") == [[0, 1], [2], {"a": [1, 2]}]
    with pytest.raises(ArmSpecError, match="empty"):
        expand_values("5..3")
    with pytest.raises(ArmSpecError, match="empty value"):
        expand_values("1,")
    with pytest.raises(ArmSpecError, match=r"value '\[0,1' is not valid JSON"):
        expand_values("[0,1")


def test_a_spec_expands_to_every_combination_without_duplicates():
    arms = parse_arms("lynx:alpha=0.5,1:beta=1,2; oea:k0=1 ;topn:num_experts_kept=3..4;oea:k0=1;baseline")
    assert [a.label for a in arms] == [
        "lynx:alpha=0.5:beta=1", "lynx:alpha=0.5:beta=2", "lynx:alpha=1:beta=1", "lynx:alpha=1:beta=2",
        "oea:k0=1", "topn:num_experts_kept=3", "topn:num_experts_kept=4", "baseline"]


def test_budgets_are_swept_after_a_plus():
    arms = parse_arms("lynx+experts=3..4:alpha=1;budget+mass=0.9")
    assert [(a.policy, a.params, a.budget) for a in arms] == [
        ("lynx", {"alpha": 1}, "experts=3"), ("lynx", {"alpha": 1}, "experts=4"), ("budget", {}, "mass=0.9")]
    with pytest.raises(ArmSpecError, match="unknown budget"):
        parse_arms("lynx+tokens=3")


def test_labels_parse_back_to_the_same_arm():
    for arm in parse_arms("lynx+fraction=0.5:alpha=2:tie_break=index;coverage:max_dropped_mass=none;oea:layers=[0,1]"):
        assert parse_arms(arm.label) == [arm]


@pytest.mark.parametrize("spec, message", [
    ("", "no arms"), (":alpha=1", "missing policy"), ("lynx:alpha", "NAME=VALUES"), ("lynx:alpha=1:alpha=2", "twice"),
    ("lynx:alpha=1,", "empty value in 'alpha=1,'"),
])
def test_bad_specs_are_errors(spec, message):
    with pytest.raises(ArmSpecError, match=message):
        parse_arms(spec)


def test_ab_flags_make_one_arm():
    arm = arm_from_flags("lynx", ["alpha=1", "tie_break=index"], "experts=4")
    assert arm == Arm("lynx", {"alpha": 1, "tie_break": "index"}, "experts=4")
    assert arm.request_body() == {"policy": "lynx", "params": {"alpha": 1, "tie_break": "index"}, "budget": "experts=4"}
    with pytest.raises(ArmSpecError, match="NAME=VALUE"):
        arm_from_flags("lynx", ["alpha"], None)
    with pytest.raises(ArmSpecError, match="empty value in --a-param/--b-param 'alpha='"):
        arm_from_flags("lynx", ["alpha="], None)


@pytest.mark.parametrize("flags", [["--port", "31399"], ["--model-path", "some/checkpoint"]])
def test_server_flags_are_refused_with_a_url(flags, capsys):
    from lynx_sglang.experiments.ab import parse_args

    with pytest.raises(SystemExit) as stopped:
        parse_args(["--url", "http://127.0.0.1:30000", "--admin-token", "t", *flags])
    assert stopped.value.code == 2 and "with --url the running server is used" in capsys.readouterr().err



@pytest.mark.parametrize("argv, shown", [
    (["--url", "http://h:1", "--admin-token", "s3cret"], ["--url", "http://h:1", "--admin-token", "***"]),
    (["--admin-token=s3cret"], ["--admin-token=***"]),
    (["--serve-arg=--lynx-admin-token=s3cret", "--n", "5"], ["--serve-arg=--lynx-admin-token=***", "--n", "5"]),
    (["--serve-arg=--lynx-admin-token", "--serve-arg=s3cret"], ["--serve-arg=--lynx-admin-token", "--serve-arg=***"]),
    (["--serve-arg", "--lynx-admin-token", "--serve-arg", "s3cret"],
     ["--serve-arg", "--lynx-admin-token", "--serve-arg", "***"]),
    (["--serve-arg=--tp=2", "--b", "lynx"], ["--serve-arg=--tp=2", "--b", "lynx"]),
])  # fmt: skip
def test_reports_show_the_command_without_admin_tokens(argv, shown):
    from lynx_sglang.experiments.cli_args import without_secrets

    assert without_secrets(argv) == shown


def test_the_recorded_command_is_the_parsed_flags_not_the_process_arguments(monkeypatch):
    """calibrate runs sweep and ab in its own process: their reports must name their own flags."""
    from lynx_sglang.experiments import ab, sweep

    monkeypatch.setattr("sys.argv", ["lynx-sglang", "calibrate", "--candidates", "lynx:alpha=1"])
    args = sweep.parse_args(["--url", "http://127.0.0.1:30000", "--admin-token", "tok", "--policies", "lynx:alpha=1"])
    assert args.command == "lynx-sglang sweep --url http://127.0.0.1:30000 --admin-token '***' --policies lynx:alpha=1"
    monkeypatch.setattr("sys.argv", ["lynx-sglang-ab", "--b", "lynx", "--n", "7"])
    assert ab.parse_args(None).command == "lynx-sglang ab --b lynx --n 7"  # argv=None reads the process's flags


def test_experiment_flags_cannot_be_abbreviated(capsys):
    from lynx_sglang.experiments.ab import parse_args

    with pytest.raises(SystemExit) as stopped:
        parse_args(["--url", "http://127.0.0.1:30000", "--admin-tok", "t"])
    assert stopped.value.code == 2 and "unrecognized arguments: --admin-tok" in capsys.readouterr().err


def test_a_config_file_is_one_arm_applied_whole(tmp_path):
    from lynx_sglang.experiments.arms import arm_from_config_file

    path = tmp_path / "calibrated.yaml"
    path.write_text("policy: anchor\nparams: {fill_to_k: false}\n"
                    "schedule:\n  - {from_rows: 1, params: {ratio: 0.5}}\n  - {from_rows: 12, params: {ratio: 0.3}}\n")
    arm = arm_from_config_file(str(path))
    assert arm.label == "config:calibrated" and arm.policy == "anchor" and arm.params == {"fill_to_k": False}
    assert arm.request_body() == {"config": {"policy": "anchor", "params": {"fill_to_k": False},
                                             "schedule": [{"from_rows": 1, "params": {"ratio": 0.5}},
                                                          {"from_rows": 12, "params": {"ratio": 0.3}}]}}


@pytest.mark.parametrize("text, message", [
    ("policy: anchor\nschedule: [{from_rows: 3}]\n", "config file"),
    ("policy: anchor\nsurprise: 1\n", "unknown setting(s) surprise"),
    ("policy: [anchor\n", "not valid YAML"),
])
def test_a_bad_config_file_is_refused_before_any_server_starts(tmp_path, text, message):
    from lynx_sglang.experiments.arms import arm_from_config_file

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ArmSpecError, match="config file") as caught:
        arm_from_config_file(str(path))
    assert message in str(caught.value)


def test_ab_config_flags_replace_the_policy_flags(tmp_path):
    from lynx_sglang.experiments.ab import build_arms, parse_args

    path = tmp_path / "mine.yaml"
    path.write_text("policy: topn\nparams: {num_experts_kept: 3}\n")
    a, b = build_arms(parse_args(["--b-config", str(path)]))
    assert a.label == "baseline" and b.label == "config:mine" and b.params == {"num_experts_kept": 3}
    with pytest.raises(ArmSpecError, match="--b-config is the whole arm"):
        build_arms(parse_args(["--b-config", str(path), "--b-param", "alpha=1"]))
    a, b = build_arms(parse_args(["--a-config", str(path), "--b-config", str(path)]))
    assert (a.label, b.label) == ("config:mine (A)", "config:mine (B)")


def test_ab_defaults_to_the_embedded_models_calibrated_config():
    from lynx_sglang.experiments.ab import build_arms, parse_args

    a, b = build_arms(parse_args([]))
    assert a.label == "baseline" and b.label == "config:calibrated"
    assert (b.policy, b.params) == ("lynx", {"alpha": 0.5}) and b.request_body()["config"]["policy"] == "lynx"
    _, b = build_arms(parse_args(["--b-param", "alpha=1"]))  # a parameter alone keeps the calibrated policy
    assert (b.policy, b.params) == ("lynx", {"alpha": 1})
    # a budget alone is added to the calibrated setting: its parameters stay (they were dropped, under a
    # label that did not say so)
    _, b = build_arms(parse_args(["--b-budget", "experts=3"]))
    assert (b.policy, b.params, b.budget) == ("lynx", {"alpha": 0.5}, "experts=3")
    _, b = build_arms(parse_args(["--b", "lynx", "--b-budget", "experts=3"]))  # a policy named starts afresh
    assert (b.policy, b.params) == ("lynx", {})


@pytest.mark.parametrize("tool, argv", [("ab", ["--b", "nope"]), ("sweep", ["--policies", "lynx;nope:x=1"]),
                                        ("calibrate", ["--candidates", "nope"])])
def test_an_unknown_policy_is_refused_before_a_server_starts(tool, argv, tmp_path, capsys):
    from lynx_sglang import cli

    assert cli.main([tool, *argv, "--out", str(tmp_path / "out")]) == 2
    assert "unknown policy 'nope'; available: anchor, baseline" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("tool, argv, message", [
    ("sweep", ["--policies", "baseline"], "nothing to compare with the reference baseline"),
    ("sweep", ["--reference", "lynx:alpha=1", "--policies", "lynx:alpha=1"], "nothing to compare with the reference"),
    ("calibrate", ["--candidates", "baseline"], "--candidates holds only baseline"),
])
def test_a_run_with_nothing_to_compare_is_refused_before_a_server_starts(tool, argv, message, tmp_path, capsys):
    from lynx_sglang import cli

    assert cli.main([tool, *argv, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


TRAINED_16X4 = str(Path(__file__).resolve().parents[1] / "data" / "trained-16x4")


@pytest.mark.parametrize("tool, argv, message", [
    ("ab", ["--b", "budget", "--b-budget", "experts=17"],
     "arm budget+experts=17: budget: experts=17 out of range: experts must be an integer in 1..16"),
    ("ab", ["--b", "oea", "--b-param", "k0=5"], "arm oea:k0=5: policy 'oea'"),
    ("sweep", ["--policies", "topn:num_experts_kept=3;lynx:alpha=0"],
     "the model refuses every arm to compare with baseline (topn:num_experts_kept=3: policy 'topn'"),
    ("sweep", ["--reference", "budget:num_experts_kept=17", "--policies", "lynx"],
     "the reference arm budget:num_experts_kept=17: policy 'budget': parameter 'num_experts_kept'=17 out of range "
     "(allowed: 4..16)"),
    ("calibrate", ["--candidates", "static-topk:top_k_used=4"], "the model refuses every candidate (static-topk"),
])
def test_a_setting_the_model_refuses_ends_the_run_before_its_server_starts(tool, argv, message, tmp_path, capsys):
    """Read off the model's config.json (16 experts, top-4): the server was started to refuse them (25 s
    on a 2-core CPU, minutes for a large model), its log and a measurements file left behind."""
    from lynx_sglang import cli

    assert cli.main([tool, "--model-path", TRAINED_16X4, "--n", "8", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"lynx-sglang {tool}: error: {message}" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_a_running_server_decides_on_policy_names_it_may_have_installed():
    from lynx_sglang.experiments.arms import check_policy_names

    arms = parse_arms("lynx;my_plugin_policy")
    check_policy_names(arms, running_server=True)
    with pytest.raises(ArmSpecError, match="arm my_plugin_policy: unknown policy"):
        check_policy_names(arms, running_server=False)
    check_policy_names([Arm("mypackage.rules:MyPolicy", {}, None)], running_server=False)  # imported by the server


@pytest.mark.parametrize("url", ["notaurl", "127.0.0.1:30000", "ftp://127.0.0.1", "http://"])
def test_a_url_that_names_no_http_server_is_one_line(url, capsys):
    from lynx_sglang.evaluate import main as eval_main
    from lynx_sglang.experiments.sweep import parse_args

    for parse in (lambda: parse_args(["--url", url, "--admin-token", "t"]), lambda: eval_main(["--url", url])):
        with pytest.raises(SystemExit) as stopped:
            parse()
        assert stopped.value.code == 2 and "is not a server URL like http://127.0.0.1:30000" in capsys.readouterr().err
    assert parse_args(["--url", "https://lynx.example:8443/", "--admin-token", "t"]).url == "https://lynx.example:8443"


def test_an_empty_arm_list_is_an_error_not_the_default_arms(tmp_path, capsys):
    from lynx_sglang import cli

    assert cli.main(["sweep", "--policies", "", "--out", str(tmp_path / "out")]) == 2
    assert "no arms in ''" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert cli.main(["calibrate", "--candidates", " ", "--out", str(tmp_path / "out")]) == 2
    assert "no arms in ' '" in capsys.readouterr().err


@pytest.mark.parametrize("text, levels_or_error", [
    ("8,32", [8, 32]),
    (" 32 , 1,", [32, 1]),
    ("", "lists no level"),
    ("8,x", "'x' is not a positive integer"),
    ("0,8", "'0' is not a positive integer"),
    ("-4", "'-4' is not a positive integer"),
    ("8,8", "lists a level twice"),
])  # fmt: skip
def test_concurrency_levels_are_positive_and_distinct(text, levels_or_error):
    if isinstance(levels_or_error, list):
        assert parse_levels(text) == levels_or_error
        return
    with pytest.raises(ValueError, match="--concurrency: ") as error:
        parse_levels(text)
    assert levels_or_error in str(error.value)


@pytest.mark.parametrize("spec, message", [
    ("lynx+experts=abc", "'abc' is not a number"), ("lynx+experts=0", "experts=0 out of range"),
    ("lynx+fraction=1.5", "fraction=1.5 out of range"),
])
def test_a_budget_value_no_model_takes_is_refused_while_parsing(spec, message):
    with pytest.raises(ArmSpecError, match=message):
        parse_arms(spec)
