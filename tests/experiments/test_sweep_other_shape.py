"""`lynx-sglang sweep` without --policies on a trained model of another shape than the embedded one
(tests/data/trained-16x4: 16 experts, top-4) and a JSONL task of its own: the arms follow the model and
the default sweep runs to the end."""

import json
import os
import subprocess
import sys

from pathlib import Path

import pytest
from live_server import RunningServer

from lynx_sglang.embedded.task import heldout_problems

pytestmark = pytest.mark.slow

TOKEN = "other-shape-token"
MODEL = Path(__file__).resolve().parents[1] / "data" / "trained-16x4"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = RunningServer(["--model-path", str(MODEL), "--lynx-policy", "baseline", "--lynx-admin-token", TOKEN],
                        tmp_path_factory.mktemp("server") / "server.log")
    try:
        srv.wait_healthy()
        yield srv
    finally:
        srv.stop()


def test_default_sweep_fits_a_16_expert_top_4_model(server, tmp_path):
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"prompt": p.prompt, "answer": p.answer}) + "\n"
                            for p in heldout_problems(16, seed=5, distinct=True)))
    out = tmp_path / "sweep"
    done = subprocess.run(
        [sys.executable, "-m", "lynx_sglang.cli", "sweep", "--url", server.url, "--admin-token", TOKEN,
         "--task", str(task), "--n", "8", "--concurrency", "4", "--blocks", "1", "--max-tokens", "4",
         "--bootstrap", "100", "--out", str(out)],
        capture_output=True, text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "default arms for 16 experts, top-4" in done.stderr
    results = json.loads((out / "results.json").read_text())
    labels = [arm["label"] for arm in results["config"]["arms"]]
    for expected in ("topn:num_experts_kept=4", "topn:num_experts_kept=8", "budget:num_experts_kept=6",
                     "static-topk:top_k_used=2", "oea:k0=2", "lynx+experts=6"):
        assert expected in labels
    assert not any("num_experts_kept=2" in label or "num_experts_kept=3" in label for label in labels)
    assert results["status"] == "complete" and results["skipped_arms"] == []
    (frontier,) = results["frontiers"]
    assert {p["arm"] for p in frontier["points"]} == set(labels)
    points = {p["arm"]: p for p in frontier["points"]}
    assert points["topn:num_experts_kept=4"]["distinct_experts"] <= 4
