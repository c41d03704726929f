"""Outputs that must not change: `--lynx-policy baseline` against plain SGLang (our plugin not
loaded), and the Triton kernels (run by Triton's interpreter on CPU tensors, the CUDA code path)
against SGLang's own expert compute under the same policy."""

import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from live_server import RunningServer, get_json, post

from lynx_sglang.embedded import EMBEDDED_MODEL_DIR
from lynx_sglang.embedded.task import heldout_problems
from lynx_sglang.launch_checks import CPU_DEFAULTS
from lynx_sglang.sglang_settings import as_flags

pytestmark = pytest.mark.slow


def plain_sglang_command() -> list[str]:
    flags = as_flags(CPU_DEFAULTS)
    return [sys.executable, "-m", "sglang.launch_server", "--model-path", str(EMBEDDED_MODEL_DIR),
            "--host", "127.0.0.1", "--port", "{port}", *flags]


def started(tmp_path, name, args=(), **kwargs) -> RunningServer:
    return RunningServer.healthy_one(list(args), tmp_path / f"{name}.log", **kwargs)


def greedy(server, prompts, max_tokens=8, concurrency=32, ignore_eos=False):
    def one(prompt):
        body = {"model": "default", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                "ignore_eos": ignore_eos}
        status, reply = post(server.url + "/v1/completions", body, timeout=600)
        assert status == 200, reply
        return reply["choices"][0]["text"]

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(one, prompts))


def test_baseline_policy_answers_exactly_like_plain_sglang(tmp_path):
    prompts = [p.prompt for p in heldout_problems(200, seed=31)]
    outputs = {}
    # SGLANG_PLUGINS names the plugins allowed to load: none of ours.
    for name, kwargs in (("plain", {"command": plain_sglang_command(), "env": {"SGLANG_PLUGINS": "none"}}),
                         ("baseline", {"args": ["--lynx-policy", "baseline"]})):
        srv = started(tmp_path, name, **kwargs)
        try:
            if name == "plain":
                assert post(srv.url + "/lynx/policy", {})[0] == 404  # really without the plugin
            outputs[name] = greedy(srv, prompts)
        finally:
            srv.stop()
    assert outputs["baseline"] == outputs["plain"]


def test_triton_kernels_match_sglang_compute_under_the_same_policy(tmp_path):
    prompts = ["123+45=", "r4821=", "12*34=", "999-123="]
    outputs, compute = {}, {}
    for kernel in ("sglang", "triton"):
        # Interpreted, SGLang's warm-up request would cost as much as the test's own (the same path).
        warmup = ["--skip-server-warmup"] if kernel == "triton" else []
        srv = started(tmp_path, kernel, ["--lynx-policy", "lynx", "--lynx-kernel", kernel, *warmup])
        try:
            outputs[kernel] = greedy(srv, prompts, max_tokens=6, concurrency=4, ignore_eos=True)
            compute[kernel] = set(get_json(srv.url + "/lynx/policy")["expert_compute"].values())
            status, reply = post(srv.url + "/lynx/policy", {"policy": "oea"})
            assert status == 403 and "--lynx-admin-token" in reply["error"]  # no token: disabled
        finally:
            srv.stop()
    assert compute["triton"] == {"lynx-triton"}
    assert outputs["triton"] == outputs["sglang"]
