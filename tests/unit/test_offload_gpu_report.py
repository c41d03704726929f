"""scripts/offload_gpu_report.py and the `offload` stage of scripts/gpu_stages.py: the table of the
expert-offload measurement on a GPU (the stage itself was rehearsed on a CPU; it needs a GPU to mean much)."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_arm_is_set_against_every_expert_resident_and_the_copy_bound():
    report = load("offload_gpu_report")
    row = {"cuda_graphs": True, "decode_tokens": 100}
    result = {"device": "NVIDIA H200", "commit": "abc", "shape": "mixtral-8x7b,num_hidden_layers=8",
              "bandwidth": {"copy_engine_gb_s": 50.0, "cache_copy_kernel_gb_s": 20.0},
              "rows": [{**row, "arm": "all resident", "batch": 8, "tpot_median_ms": 10.0, "misses_per_decode_token": 0.0,
                        "bytes_copied_per_decode_token": 0.0, "copy_bound_ms": 0.0},
                       {**row, "arm": "lru", "batch": 8, "tpot_median_ms": 25.0, "misses_per_decode_token": 1.5,
                        "bytes_copied_per_decode_token": 528e6, "copy_bound_ms": 84.48, "cuda_graphs": False}]}
    text = report.markdown(result)
    assert "device: NVIDIA H200; commit: abc" in text and "copy engine 50.00 GB/s" in text
    assert "| lru | 8 | no (eager) | 25.00 | 2.50x | 1.50 | 528.00 | 84.48 |" in text


def test_the_offload_stage_is_one_of_the_kits_stages():
    stages = load("gpu_stages")
    assert "offload" in stages.STAGES
    labels = [label for label, _, _ in stages.OFFLOAD_ARMS]
    assert labels[0] == "all resident" and {"lru", "activation"} <= set(labels)
    assert all("--lynx-expert-cache" in args for label, _, args in stages.OFFLOAD_ARMS[1:])
    assert "offload" in (REPO / "scripts" / "gpu-serve.sh").read_text()


def test_a_file_that_is_no_result_is_one_line(tmp_path, capsys):
    path = tmp_path / "offload.json"
    path.write_text('{"device": "NVIDIA H200"}')
    assert load("offload_gpu_report").main([str(path)]) == 2
    assert f"offload_gpu_report.py: {path}: not an offload stage's result (missing rows)" in capsys.readouterr().err
