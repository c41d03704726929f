"""`lynx-sglang calibrate` end to end on a checkpoint of another shape than the embedded model's (16
experts, top-4) with a JSONL task: it sweeps three candidates, writes a config that `serve
--lynx-config` loads and serves, and `ab --b-config` takes that config as an arm."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from live_server import RunningServer, get_json, post

from lynx_sglang.tiny_checkpoints import build_tiny_checkpoint

pytestmark = pytest.mark.slow

CANDIDATES = "topn:num_experts_kept=4,8;anchor:ratio=0.5:fill_to_k=false"


def lynx_sglang(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "lynx_sglang.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_checkpoint("mixtral", tmp_path_factory.mktemp("model16x4"), seed=5, num_experts=16, top_k=4)


def test_calibrate_writes_a_config_that_serves_and_ab_takes(model, tmp_path):
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n"
                            for a in range(8) for b in range(6)))
    out = tmp_path / "calib"
    done = lynx_sglang("calibrate", "--model-path", str(model), "--task", str(task), "--candidates", CANDIDATES,
                       "--n", "16", "--confirm-n", "16", "--concurrency", "2,8", "--max-tokens", "4",
                       "--max-loss", "50", "--margin", "0",
                       "--bootstrap", "100", "--blocks", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [band["rows"] for band in results["bands"]] == ["1-3 rows", "4+ rows"]
    assert results["calibration_items"] == 16 and results["confirmation_items"] == 16
    config = yaml.safe_load((out / "lynx-config.yaml").read_text())
    # a random model answers nothing right under any arm: on 16 items every candidate is within 50 points,
    # and each band takes its cheapest
    assert config["policy"] in ("topn", "anchor") and results["confirmation"]
    assert all(record["holds"] for record in results["confirmation"])
    report = (out / "report.md").read_text()
    assert "## Bands" in report and "**chosen**" in report and "## Confirmation on held-out items" in report
    calibration = {line for line in (out / "calibration-items.jsonl").read_text().splitlines()}
    assert not calibration & set((out / "confirmation-items.jsonl").read_text().splitlines())

    server = RunningServer(["--model-path", str(model), "--lynx-config", str(out / "lynx-config.yaml"),
                            "--lynx-admin-token", "t"], tmp_path / "server.log")
    try:
        server.wait_healthy()
        state = get_json(server.url + "/lynx/policy")
        assert state["policy"] == config["policy"] and (state["schedule"] is None) == ("schedule" not in config)
        for prompt in ("1+2=", "3+4="):
            status, _ = post(server.url + "/v1/completions", {"model": "default", "prompt": prompt, "max_tokens": 4})
            assert status == 200
        stats = get_json(server.url + "/lynx/stats")
        assert stats["decode_steps"] > 0 and stats["policy"] == config["policy"]
        if "schedule" in config:
            assert sum(band["steps"] for band in stats["steps_by_band"]) == stats["decode_steps"]
        ab = lynx_sglang("ab", "--url", server.url, "--admin-token", "t", "--b-config", str(out / "lynx-config.yaml"),
                         "--task", str(task), "--n", "8", "--concurrency", "4", "--max-tokens", "4",
                         "--bootstrap", "100", "--blocks", "1", "--out", str(tmp_path / "ab"))
        assert ab.returncode == 0, ab.stderr[-3000:]
        arms = json.loads((tmp_path / "ab" / "results.json").read_text())["config"]["arms"]
        assert [arm["label"] for arm in arms] == ["baseline", "config:lynx-config"]
    finally:
        server.stop()
