"""The fused routing's launch configurations are data: one JSON per shape family and device under
kernels/configs/, read at launch on the device's name, with the heuristic for a device or shape
without one. No GPU needed: the device is named."""

import json

import pytest
import torch

from lynx_sglang.kernels import configs
from lynx_sglang.kernels.routing import launch_config as lc

H100 = "NVIDIA_H100_80GB_HBM3"


def test_the_h100_files_give_the_configurations_the_heuristic_gave():
    """Every T the files cover (up to 256, by T rounded up to a power of two), at E 64 and 128: read from
    the file, and the same as the choices made in code before they became data."""
    for experts in (64, 128):
        table = lc.tuned_launch_configs(experts, H100)
        assert table is not None and sorted(table) == [1 << p for p in range(9)], experts
        for num_rows in range(1, 257):
            assert lc.launch_config(num_rows, experts, 8, H100) == lc.heuristic_launch_config(num_rows, experts, 8)
    assert lc.launch_config(1, 60, 4, H100).decide_warps == table[1]["decide_warps"]  # E 60 is E 64's family


def test_a_device_or_shape_without_a_file_gets_the_heuristic():
    for device in ("NVIDIA_A100-SXM4-80GB", None):
        assert lc.tuned_launch_configs(128, device) is None
        assert lc.launch_config(32, 128, 8, device) == lc.heuristic_launch_config(32, 128, 8)
    assert lc.tuned_launch_configs(256, H100) is None  # no E 256 file
    assert lc.launch_config(40, 256, 8, H100) == lc.heuristic_launch_config(40, 256, 8)
    assert lc.launch_config(512, 128, 8, H100) == lc.heuristic_launch_config(512, 128, 8)  # T beyond the file


def test_a_file_is_read_as_written_and_a_wrong_entry_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(configs, "CONFIG_DIR", tmp_path)
    entry = {"block_t": 2, "scan_t": 8, "rows_warps": 2, "decide_warps": 8, "chunk": 16, "picks": 0, "sort": False}
    (tmp_path / "routing_launch,E=64,device_name=Test_GPU_a.json").write_text(json.dumps({"8": entry}))
    config = lc.launch_config(7, 64, 8, "Test_GPU_a")
    assert config == lc.LaunchConfig(**entry, parts=4) != lc.heuristic_launch_config(7, 64, 8)
    (tmp_path / "routing_launch,E=64,device_name=Test_GPU_b.json").write_text(json.dumps({"8": {"block_t": 2}}))
    with pytest.raises(ValueError, match=r"routing_launch,E=64,device_name=Test_GPU_b.json: entry '8' must be a T with"):
        lc.launch_config(7, 64, 8, "Test_GPU_b")
    (tmp_path / "routing_launch,E=64,device_name=Test_GPU_c.json").write_text("{")
    with pytest.raises(ValueError, match="Test_GPU_c.json: not valid JSON"):
        lc.launch_config(7, 64, 8, "Test_GPU_c")


def test_the_launch_looks_its_configuration_up_once_per_shape():
    """plan_triton's default: cached per (T, E, k, device), so a call reads no file and no device name."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    first = lc.default_launch_config(24, 64, 8, device)
    hits = lc.default_launch_config.cache_info().hits
    assert lc.default_launch_config(24, 64, 8, device) is first
    assert lc.default_launch_config.cache_info().hits == hits + 1
    if device.type == "cuda":  # the device's own file, where it has one
        assert first == lc.launch_config(24, 64, 8, configs.device_name(device))
