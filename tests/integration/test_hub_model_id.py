"""`--model-path` takes a Hugging Face Hub id as SGLang does: lynx-sglang reads the model's config.json
from the Hugging Face cache (or the Hub) for its checks, and SGLang loads the model by the same id.
The cache here is a real one, laid out as huggingface_hub lays it out, read with HF_HUB_OFFLINE=1."""

import json
import os
import subprocess
import sys
import time

import pytest
from live_server import RunningServer, generate_greedy, get_json

from lynx_sglang.tiny_checkpoints import build_tiny_checkpoint

REPO_ID = "lynx-test/tiny-qwen3-moe"
NUM_EXPERTS, TOP_K = 12, 3
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf-cache")
    repo = cache / ("models--" + REPO_ID.replace("/", "--"))
    build_tiny_checkpoint("qwen3_moe", repo / "snapshots" / COMMIT, seed=3, num_experts=NUM_EXPERTS, top_k=TOP_K)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


def lynx_sglang(*args, env):
    return subprocess.run([sys.executable, "-m", "lynx_sglang.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1", **env})  # fmt: skip


def test_the_checks_read_a_hub_models_config_from_the_cache(hub_env):
    listed = lynx_sglang("policies", "--model-path", REPO_ID, "--json", env=hub_env)
    assert listed.returncode == 0, listed.stderr
    listing = json.loads(listed.stdout)
    assert (listing["model"], listing["num_experts"], listing["top_k"]) == (REPO_ID, NUM_EXPERTS, TOP_K), listing
    refused = lynx_sglang("serve", "--model-path", REPO_ID, "--lynx-policy", "budget", "--lynx-budget", "experts=13",
                          env=hub_env)  # fmt: skip
    assert refused.returncode == 2 and f"1..{NUM_EXPERTS}" in refused.stderr, refused.stderr


def test_an_id_the_hub_cannot_answer_fails_at_once_online_too(hub_env):
    started = time.monotonic()
    online = {"HF_HUB_CACHE": hub_env["HF_HUB_CACHE"]}
    refused = lynx_sglang("serve", "--model-path", "lynx-test/not-cached", env=online)
    # Without a network (this suite's machines) the Hub cannot be reached; with one, it has no such repository.
    assert refused.returncode == 2, refused.stderr
    assert "the Hub could not be reached" in refused.stderr or "names no repository" in refused.stderr, refused.stderr
    assert time.monotonic() - started < 15  # huggingface_hub's own retries took about 23 s


def test_a_modelscope_id_asks_for_a_local_copy(hub_env):
    env = {**hub_env, "SGLANG_USE_MODELSCOPE": "true"}
    refused = lynx_sglang("serve", "--model-path", "Qwen/Qwen3-30B-A3B", env=env)
    assert refused.returncode == 2, refused.stderr
    assert "modelscope download --model Qwen/Qwen3-30B-A3B" in refused.stderr, refused.stderr


def test_bench_serve_takes_a_hub_model_by_its_id(hub_env):
    code = ("from pathlib import Path; from lynx_sglang.tools.bench.models import given_model; "
            f"model = given_model(Path({REPO_ID!r})); print(model.name, model.num_layers)")
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env={**os.environ, **hub_env})  # fmt: skip
    assert probe.returncode == 0 and probe.stdout.split() == [REPO_ID, "4"], probe.stderr


@pytest.mark.parametrize("model_path, needle", [
    ("lynx-test/not-cached", "not in the Hugging Face cache and the Hub could not be reached"),
    (f"{REPO_ID}-typo", "does not exist here, and as a Hugging Face Hub id"),
    ("/no/such/folder", "model path /no/such/folder does not exist"),
])  # fmt: skip
def test_a_model_path_that_is_neither_here_nor_cached_says_which(hub_env, model_path, needle):
    refused = lynx_sglang("serve", "--model-path", model_path, "--lynx-policy", "lynx", env=hub_env)
    assert refused.returncode == 2 and needle in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.slow
def test_serves_a_hub_model_by_its_id_and_prunes(hub_env, tmp_path):
    srv = RunningServer(["--model-path", REPO_ID, "--lynx-policy", "budget", "--lynx-budget", "fraction=0.5"],
                        tmp_path / "server.log", env=hub_env)  # fmt: skip
    try:
        srv.wait_healthy()
        generate_greedy(srv, [[5, 6, 7, 8], [9, 10, 11], [12, 13], [14, 15, 16, 17]], 8)
        stats = get_json(srv.url + "/lynx/stats")
    finally:
        srv.stop()
    assert stats["pruned_steps"] > 0 and len(stats["layers"]) == 4, stats
    assert {layer["num_experts"] for layer in stats["layers"]} == {NUM_EXPERTS}
    assert stats["distinct_experts_after"] <= NUM_EXPERTS // 2, stats
