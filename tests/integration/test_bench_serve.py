"""`lynx-sglang bench serve` end to end at toy scale: two real servers, figures written and sane."""

import json
import subprocess
import sys

import pytest

from lynx_sglang.tiny_checkpoints import build_tiny_checkpoint

pytestmark = pytest.mark.slow


def test_bench_serve_measures_both_arms(tmp_path):
    model = build_tiny_checkpoint("mixtral", tmp_path / "model", seed=3)
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "lynx_sglang.cli", "bench", "serve", "--model-path", str(model), "--arms",
         "baseline;budget:experts=1", "--concurrency", "4", "--requests", "8", "--output-tokens", "6",
         "--json", str(out), "--", "--dtype", "float32"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ratios to baseline" in proc.stdout
    results = {r["arm"]: r for r in json.loads(out.read_text())["results"]}
    baseline, pruned = results["baseline"], results["budget experts=1"]
    assert baseline["decode_tokens_per_s"] > 0 and pruned["tpot_median_ms"] > 0
    assert pruned["distinct_experts_per_layer"] == 1.0 < baseline["distinct_experts_per_layer"]
    assert pruned["expert_bytes_per_decode_token"] < baseline["expert_bytes_per_decode_token"]
