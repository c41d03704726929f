"""`lynx-sglang bench serve` end to end at toy scale: real servers, figures written and sane.

A named shape shrunk by overrides is served with SGLang's dummy weights (no checkpoint on disk); a
built tiny checkpoint is served through --model-path with a chosen expert kernel."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lynx_sglang.tools.bench.report import RECORD_FIELDS
from lynx_sglang.tiny_checkpoints import build_tiny_checkpoint

pytestmark = pytest.mark.slow

# Mixtral-8x7B at toy size; vocab_size above the embedded tokenizer's 100 tokens, so most sampled ids
# are ones the tokenizer does not have (the detokenizer must live with them, as at full size).
TOY_SHAPE = ("mixtral-8x7b,hidden_size=64,intermediate_size=128,num_hidden_layers=2,num_attention_heads=4,"
             "num_key_value_heads=2,vocab_size=512")  # fmt: skip
SMALL_LOAD = ["--concurrency", "4", "--requests", "8", "--prompt-tokens", "16", "--output-tokens", "6"]


def bench(*args, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "lynx_sglang.cli", "bench", "serve", *args],
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def check_row_values(row):
    assert set(row) == set(RECORD_FIELDS)
    assert row["tpot_median_ms"] > 0 and row["tpot_p90_ms"] >= row["tpot_median_ms"]
    assert row["decode_tokens_per_s"] > 0 and math.isfinite(row["decode_tokens_per_s"])


def test_named_shape_with_dummy_weights_records_both_arms(tmp_path):
    record, figures = tmp_path / "record.json", tmp_path / "bench.json"
    proc = bench("--shape", TOY_SHAPE, "--arms", "baseline;budget:experts=1", *SMALL_LOAD,
                 "--record", str(record), "--json", str(figures))  # fmt: skip
    assert "started in" in proc.stdout and "c=4:" in proc.stdout  # progress: server starts and levels
    assert "'before' figures" in proc.stdout and "ratios to baseline" in proc.stdout

    written = json.loads(record.read_text())
    assert set(written) == {"device", "commit", "command", "rows"}
    assert written["device"].startswith("CPU: ") and written["device"].endswith(" cores")
    assert written["command"].startswith("lynx-sglang bench serve --shape mixtral-8x7b,hidden_size=64")
    assert written["commit"] is None or len(written["commit"]) == 40
    rows = {row["arm"]: row for row in written["rows"]}
    assert len(written["rows"]) == 2 and set(rows) == {"baseline", "budget:experts=1"}
    baseline, pruned = rows["baseline"], rows["budget:experts=1"]
    for row in rows.values():
        check_row_values(row)
        assert (row["shape"], row["num_layers"], row["concurrency"]) == ("mixtral-8x7b", 2, 4)
    assert (baseline["kernel"], pruned["kernel"]) == ("sglang", "auto")
    assert pruned["experts_per_layer"] <= 1 < baseline["experts_per_layer"] <= 8
    assert 0 < pruned["expert_bytes_per_decode_token"] < baseline["expert_bytes_per_decode_token"]

    # baseline ran without bookkeeping: its expert figures are the pruned server's before-figures
    by_arm = {r["arm"]: r for r in json.loads(figures.read_text())["results"]}
    before = by_arm["budget:experts=1"]
    assert baseline["experts_per_layer"] == before["distinct_experts_per_layer_before"]
    assert baseline["expert_bytes_per_decode_token"] == before["expert_bytes_per_decode_token_before"]
    assert by_arm["baseline"]["expert_figures_from"] == "pruned arms' before-figures"
    # auto on a CPU without a measured table: lynx's kernel computed every pruned layer
    assert (by_arm["baseline"]["expert_compute"], before["expert_compute"]) == (None, "lynx-cpu")
    assert "what computed the pruned decode steps" in proc.stdout
    ratios = by_arm["budget:experts=1"]["ratios_to_baseline"]
    assert ratios["tpot_median"] == pytest.approx(pruned["tpot_median_ms"] / baseline["tpot_median_ms"])
    assert ratios["expert_bytes_per_decode_token"] < 1


def test_model_path_with_a_chosen_kernel_and_a_profile(tmp_path):
    model = build_tiny_checkpoint("mixtral", tmp_path / "tiny-mixtral", seed=3)
    record, figures = tmp_path / "record.json", tmp_path / "bench.json"
    load = ["--concurrency", "4", "--requests", "8", "--prompt-tokens", "16", "--output-tokens", "48"]
    proc = bench("--model-path", str(model), "--arms", "budget:fraction=0.5", "--kernels", "sglang", *load,
                 "--profile", "4", "--record", str(record), "--json", str(figures), "--", "--dtype", "float32")  # fmt: skip
    assert "KV cache holds" not in proc.stdout
    # SGLang's profiler recorded decode steps while the 4 requests decoded; its trace stays with the logs.
    # On 2 busy cores the first request may end before the last one starts (each is its own HTTP
    # stream): the steps then hold fewer rows, and the profile says so.
    [profile] = json.loads(record.read_text())["profiles"]
    assert (profile["arm"], profile["kernel"], profile["concurrency"], profile["num_layers"]) == (
        "budget:fraction=0.5", "sglang", 4, 4)
    assert profile["source"] == "cpu operators" and 1 <= profile["steps_recorded"] <= 17
    assert profile["batch_sizes"] and set(profile["batch_sizes"]) <= {1, 2, 3, 4}
    if profile["batch_sizes"] != [4] or profile["steps_recorded"] < 16:
        assert profile["note"].startswith(f"{profile['steps_recorded']} decode steps at batch sizes")
        assert "profile c=4: warning: " in proc.stdout
    assert sum(profile["shares"].values()) == pytest.approx(1.0, abs=1e-3) and profile["shares"]["dense_gemm"] > 0
    assert sum(profile["ms_per_step"].values()) == pytest.approx(profile["step_ms"], rel=1e-2)
    assert 0 < profile["step_ms"] < 10 * profile["tpot_median_ms"]
    assert Path(profile["trace"]).is_file() and profile["trace"] in proc.stdout
    assert "budget:fraction=0.5 [sglang] profile c=4: " in proc.stdout and profile["top"][0]["share"] > 0
    [row] = json.loads(record.read_text())["rows"]
    check_row_values(row)
    assert (row["shape"], row["num_layers"]) == ("tiny-mixtral", 4)
    assert (row["arm"], row["kernel"]) == ("budget:fraction=0.5", "sglang")
    [result] = json.loads(figures.read_text())["results"]  # --json keeps its own format
    assert result["ratios_to_baseline"] is None  # no baseline arm to compare with
    assert result["expert_compute"] == "sglang"
    assert row["experts_per_layer"] <= 4 and row["experts_per_layer"] < result["distinct_experts_per_layer_before"]


def test_a_kv_cache_below_the_highest_level_is_named(tmp_path):
    # SGLang's own figure, read after the start: 4 x (16 + 6) tokens do not fit in 64, requests wait
    model = build_tiny_checkpoint("mixtral", tmp_path / "tiny-mixtral", seed=3)
    proc = bench("--model-path", str(model), "--arms", "baseline", *SMALL_LOAD, "--", "--dtype", "float32",
                 "--max-total-tokens", "64")  # fmt: skip
    assert re.search(r"warning: its KV cache holds \d+ tokens but concurrency 4 needs 88", proc.stdout), proc.stdout


def test_a_biased_router_with_dummy_weights_routes_by_the_tokens(tmp_path):
    # SGLang's random correction bias outweighs a dummy router's scores: unzeroed, all 4 rows of every
    # step took the same 4 experts (experts per layer 4.00 = top-k), and no policy had anything to choose.
    shape = ("glm-4.5-air,hidden_size=64,intermediate_size=128,moe_intermediate_size=32,num_attention_heads=4,"
             "num_key_value_heads=2,head_dim=16,vocab_size=512,num_hidden_layers=2,n_routed_experts=16,"
             "num_experts_per_tok=4")  # fmt: skip
    record, figures = tmp_path / "record.json", tmp_path / "bench.json"
    bench("--shape", shape, "--arms", "budget:experts=4", "--concurrency", "4", "--requests", "8",
          "--prompt-tokens", "16", "--output-tokens", "8", "--record", str(record), "--json", str(figures))  # fmt: skip
    (row,) = json.loads(record.read_text())["rows"]
    assert (row["shape"], row["num_layers"], row["experts_per_layer"]) == ("glm-4.5-air", 2, 4.0)
    (result,) = json.loads(figures.read_text())["results"]
    assert 4 < result["distinct_experts_per_layer_before"] <= 16  # the model's own routing, before the policy
