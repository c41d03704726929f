"""`lynx_sglang.engine.Engine(dp_size=2)`: the offline engine's control calls reach both data-parallel
replicas, as the HTTP routes do (test_data_parallel.py). One engine, in a child process."""

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
    out = tmp_path_factory.mktemp("engine-dp") / "seen.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SGLANG_CPU_OMP_THREADS_BIND": ""}  # the CPU defaults bind
    proc = subprocess.run([sys.executable, str(SESSION), str(out), "2"], capture_output=True, text=True, timeout=600,
                          env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(out.read_text())


def test_stats_hold_both_replicas_and_the_engine_solves_the_task(seen):
    assert (seen["policy"]["policy"], seen["policy"]["replicas"]) == ("lynx", 2)
    stats = seen["stats_lynx"]
    assert [r["replica"] for r in stats["replicas"]] == [0, 1]
    assert all(r["pruned_steps"] > 0 for r in stats["replicas"]), stats["replicas"]
    assert stats["pruned_steps"] == sum(r["pruned_steps"] for r in stats["replicas"])
    assert seen["accuracy_lynx"] >= 0.85, seen["accuracy_lynx"]


def test_a_switch_reaches_both_replicas_and_a_refused_one_neither(seen):
    assert "no-such-policy" in seen["refused"] and seen["after_refusal"]["policy"] == "lynx"
    assert (seen["switched"]["policy"], seen["switched"]["replicas_agree"]) == ("budget", True)
    stats = seen["stats_budget"]
    assert [r["distinct_experts_after"] <= 2 and r["decode_steps"] > 0 for r in stats["replicas"]] == [True, True]
    assert stats["steps_by_policy"] == {"budget": stats["decode_steps"]}
