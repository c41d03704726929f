"""scripts/serve_gpu_report.py: the GPU run's records merged into the fixed schema, ratios and targets."""

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("serve_gpu_report", REPO / "scripts" / "serve_gpu_report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def row(shape, arm, concurrency, tpot, kernel="auto"):
    return {"shape": shape, "num_layers": 32, "arm": arm, "kernel": "sglang" if arm == "baseline" else kernel,
            "concurrency": concurrency, "tpot_median_ms": tpot, "tpot_p90_ms": tpot * 1.1,
            "decode_tokens_per_s": 1000 / tpot, "experts_per_layer": 8.0 if arm == "baseline" else 4.0,
            "expert_bytes_per_decode_token": 8e6 if arm == "baseline" else 4e6}


def record(rows, command="lynx-sglang bench serve --shape mixtral-8x7b"):
    return {"device": "NVIDIA H200", "commit": "abc", "command": command, "rows": rows}


def test_records_merge_into_the_fixed_schema_and_targets_are_judged(tmp_path, capsys):
    mixtral = record([row("mixtral-8x7b", "baseline", 32, 20.0), row("mixtral-8x7b", "budget:fraction=0.5", 32, 12.0),
                      row("mixtral-8x7b", "baseline", 1, 10.0), row("mixtral-8x7b", "lynx", 1, 10.5)])
    qwen = record([row("qwen3-30b-a3b", "baseline", 32, 10.0), row("qwen3-30b-a3b", "budget:fraction=0.5", 32, 8.0)],
                  "lynx-sglang bench serve --shape qwen3-30b-a3b")
    paths = []
    for name, content in (("m.json", mixtral), ("q.json", qwen)):
        (tmp_path / name).write_text(json.dumps(content))
        paths.append(str(tmp_path / name))
    assert report.main([*paths, "--json", str(tmp_path / "serve-gpu.json")]) == 0
    merged = json.loads((tmp_path / "serve-gpu.json").read_text())
    assert set(merged) == {"device", "commit", "command", "rows"} and len(merged["rows"]) == 6
    assert merged["command"].count("bench serve") == 2
    out = capsys.readouterr().out
    assert "c=32 budget:fraction=0.5 [auto]: TPOT ratio <= 0.65 | 0.600 | yes" in out
    assert "qwen3-30b-a3b (32 layers) c=32 budget:fraction=0.5 [auto]: TPOT ratio <= 0.75 | 0.800 | no" in out
    assert "c=1 lynx [auto]: within 3 % of baseline | 1.050 | no" in out
    assert "| 0.500 |" in out  # bytes ratio of the pruned arm


def test_records_of_different_devices_do_not_merge():
    with pytest.raises(SystemExit, match="different devices"):
        report.merge([record([]), {**record([]), "device": "NVIDIA H100 80GB HBM3"}])


def test_rows_come_out_by_shape_and_concurrency_with_arms_in_the_order_run():
    run_order = [row("mixtral-8x7b", arm, c, 10.0) for arm in ("baseline", "budget:fraction=0.5", "lynx")
                 for c in (32, 16, 1, 64)]  # fmt: skip
    merged = report.merge([record(run_order)])
    assert [(r["concurrency"], r["arm"]) for r in merged["rows"][:4]] == [
        (1, "baseline"), (1, "budget:fraction=0.5"), (1, "lynx"), (16, "baseline")]


@pytest.mark.parametrize("text, message", [(None, "cannot read it"), ("{bad", "not valid JSON"),
                                           ('{"device": "NVIDIA H200"}', "not a bench serve record (missing commit")])
def test_a_file_that_is_no_record_is_one_line(tmp_path, capsys, text, message):
    path = tmp_path / "mixtral-serve.json"
    if text is not None:
        path.write_text(text)
    assert report.main([str(path)]) == 2
    assert f"serve_gpu_report.py: {path}: {message}" in capsys.readouterr().err


def test_profiles_print_as_a_table_and_stay_out_of_the_fixed_schema(tmp_path, capsys):
    profiled = record([row("mixtral-8x7b", "baseline", 32, 20.0)])
    ms = {"expert_gemm": 14.0, "attention": 3.0, "idle": 1.5}
    profiled["profiles"] = [
        {"arm": "baseline", "kernel": "sglang", "concurrency": 32, "num_layers": 24, "steps_recorded": 16,
         "batch_sizes": [32], "step_ms": 20.0, "ms_per_step": ms},
        {"arm": "budget:fraction=0.5", "kernel": "auto", "concurrency": 32, "error": "TimeoutError: no complete trace"},
    ]  # fmt: skip
    path, merged = tmp_path / "mixtral-serve.json", tmp_path / "serve-gpu.json"
    path.write_text(json.dumps(profiled))
    assert report.main([str(path), "--json", str(merged)]) == 0
    out = capsys.readouterr().out
    assert ("| shape | layers | arm | kernel | c | steps (batch) | ms per step | expert_gemm | moe_align | lynx_routing | "
            "lynx_bookkeeping | model_routing | attention | dense_gemm | other | idle |") in out
    assert "| mixtral-8x7b | 24 | baseline | sglang | 32 | 16 (32) | 20.00 | 14.00 | 0.00 | 0.00 | 0.00 | 0.00 | 3.00 |" in out
    assert "| mixtral-8x7b |  | budget:fraction=0.5 | auto | 32 | failed: TimeoutError: no complete trace |" in out
    assert set(json.loads(merged.read_text())) == {"device", "commit", "command", "rows"}
