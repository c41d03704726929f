"""The default `SGLANG_CPU_OMP_THREADS_BIND` of `lynx-sglang serve`: one core set per tensor-parallel
rank, split from the cores this process may use."""

import pytest

from lynx_sglang.cpu_runtime.threads import (
    BIND_ENV,
    default_bind_env,
    format_cpu_list,
    parse_cpu_list,
    shared_cores_note,
    threads_bind,
    usable_cores,
)


@pytest.mark.parametrize("tp,cores,expected", [
    (2, [0, 1], "0|1"),
    (1, [0, 1], "0-1"),
    (2, list(range(8)), "0-3|4-7"),
    (4, list(range(64)), "0-15|16-31|32-47|48-63"),
    (3, list(range(8)), "0-2|3-5|6-7"),  # sizes differ by at most one, larger groups first
    (2, list(range(5)), "0-2|3-4"),
    (2, [0, 2, 4, 6], "0,2|4,6"),  # an affinity mask with holes keeps its order
    (2, [4, 5, 6, 7, 12, 13], "4-6|7,12-13"),
    (4, [0, 1], "0|1|0|1"),  # fewer cores than ranks: ranks share cores
    (3, [5], "5|5|5"),
])  # fmt: skip
def test_cores_split_into_one_contiguous_set_per_rank(tp, cores, expected):
    bind = threads_bind(tp, cores)
    assert bind == expected
    groups = bind.split("|")
    assert len(groups) == tp
    if tp <= len(cores):  # every core is used exactly once, in order
        assert [c for g in groups for c in parse_cpu_list(g)] == cores


@pytest.mark.parametrize("tp,cores", [(0, [0, 1]), (2, [])])
def test_no_ranks_or_no_cores_is_an_error(tp, cores):
    with pytest.raises(ValueError):
        threads_bind(tp, cores)


def test_cpu_lists_round_trip():
    for cpus in ([0], [0, 1, 2, 5], [3, 7, 8, 9, 11]):
        assert parse_cpu_list(format_cpu_list(cpus)) == cpus
    assert format_cpu_list([0, 1, 2, 5]) == "0-2,5" and parse_cpu_list("0-2,5\n") == [0, 1, 2, 5]


def test_smt_siblings_count_once(tmp_path):
    # cpus 0-3 are two cores with two threads each (0,2 and 1,3), as Linux numbers them
    for cpu, siblings in {0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3"}.items():
        topology = tmp_path / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "thread_siblings_list").write_text(siblings + "\n")
    assert usable_cores({0, 1, 2, 3}, sysfs=tmp_path) == [0, 1]
    assert usable_cores({2, 3}, sysfs=tmp_path) == [2, 3]
    assert usable_cores({5, 6}, sysfs=tmp_path) == [5, 6]  # no topology: every cpu is a core


def test_this_process_has_usable_cores():
    cores = usable_cores()
    assert cores and set(cores) <= set(__import__("os").sched_getaffinity(0))


@pytest.mark.parametrize("sizes,given,expected", [
    ({}, None, {}),  # no parallel flag: SGLang's own default (one rank)
    ({"tp_size": "1"}, None, {}),
    ({"tp_size": "2"}, None, {BIND_ENV: "0|1"}),
    ({"tp_size": "4"}, None, {BIND_ENV: "0|1|0|1"}),
    ({"dp_size": "2"}, None, {BIND_ENV: "0|1"}),  # a data-parallel replica is a rank too
    ({"dp_size": "2", "tp_size": "2", "pp_size": "1"}, None, {BIND_ENV: "0|1|0|1"}),
    ({"tp_size": "2"}, "1|0", {}),  # the user's value wins
    ({"tp_size": "2"}, "0-1|0-1|0-1", {}),
])  # fmt: skip
def test_default_only_where_the_user_set_none(sizes, given, expected):
    assert default_bind_env(sizes, given, cores=[0, 1]) == expected


@pytest.mark.parametrize("sizes,given,needles", [
    ({"tp_size": "two"}, None, ["--tp 'two'", "positive integer"]),
    ({"tp_size": "0"}, None, ["--tp '0'", "positive integer"]),
    ({"dp_size": "-1"}, None, ["--dp-size '-1'", "data-parallel replicas"]),
    ({"tp_size": "2"}, "0", [f"{BIND_ENV}='0'", "1 core set", "--tp 2 needs one per rank (2)"]),
    ({"tp_size": "2", "dp_size": "2"}, "0|1", ["--tp 2 --dp-size 2 needs one per rank (4)"]),
])  # fmt: skip
def test_bad_values_name_the_field_and_what_is_allowed(sizes, given, needles):
    with pytest.raises(ValueError) as error:
        default_bind_env(sizes, given, cores=[0, 1])
    message = str(error.value)
    assert "\n" not in message and all(n in message for n in needles), message


def test_shared_cores_are_noted():
    assert shared_cores_note("0|1") is None and shared_cores_note("0-3|4-7") is None
    note = shared_cores_note("0|1|0|1")
    assert "4 ranks on 2 core(s)" in note and "0|1|0|1" in note
