"""`lynx_sglang.engine.Engine`: SGLang's offline engine (no HTTP server) on the embedded model with
`lynx_policy="lynx"`, then a live switch through `engine.lynx`. One engine, in a child process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SESSION = Path(__file__).parents[1] / "support" / "engine_session.py"


@pytest.fixture(scope="module")
def seen(tmp_path_factory):
    out = tmp_path_factory.mktemp("engine") / "seen.json"
    proc = subprocess.run([sys.executable, str(SESSION), str(out)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(out.read_text())


def test_the_engine_prunes_with_the_policy_it_was_given_and_solves_the_task(seen):
    assert seen["policy"]["policy"] == "lynx"
    stats = seen["stats_lynx"]
    assert stats["pruned_steps"] > 0 and stats["fallback_steps"] == 0
    assert stats["distinct_experts_after"] < stats["distinct_experts_before"]
    assert seen["accuracy_lynx"] >= 0.85, seen["accuracy_lynx"]  # the served model's floor on these kinds


def test_a_refused_switch_names_the_problem_and_keeps_the_policy(seen):
    assert "no-such-policy" in seen["refused"] and seen["after_refusal"]["policy"] == "lynx"


def test_a_live_switch_reaches_the_next_steps(seen):
    assert seen["switched"]["policy"] == "budget"
    stats = seen["stats_budget"]
    assert stats["steps_by_policy"].keys() == {"budget"} and stats["pruned_steps"] > 0
    assert stats["distinct_experts_after"] <= 2 < stats["distinct_experts_before"]


def test_after_shutdown_a_control_call_fails_at_once_saying_so(seen):
    after = seen["after_shutdown"]
    assert after["error"] == "the engine is shut down; engine.lynx answers only while it runs"
    assert after["seconds"] < 5  # not the scheduler's 60 s answer timeout


def test_a_bad_request_is_refused_naming_the_problem_and_the_engine_serves_on(seen):
    """The server's request checks hold in the offline engine too: an id outside the vocabulary
    stopped its scheduler (IndexError in the embedding) before they did."""
    refused = seen["bad_requests"]
    assert refused["outside_vocabulary"] == (
        "token id 100000 at position 1 is outside the model's vocabulary; valid token ids are 0 to 99"
    )
    assert refused["not_integers"] == "token ids must be integers; got '7' at position 1"
    assert seen["answer_after_bad_requests"].strip() == "46"
