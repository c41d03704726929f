"""`--lynx-kernel auto` and the measured table (scheduler/compute_table.py): the file format, the choice
per decode batch size, and scripts/expert-compute-table.py, which builds the file from a bench record."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from lynx_sglang.kernels import configs
from lynx_sglang.scheduler import compute_table
from lynx_sglang.scheduler.compute_table import ComputeTable, LayerShape, table_for
from lynx_sglang.scheduler.expert_compute import KernelChoice

SCRIPT = Path(__file__).parents[2] / "scripts" / "expert-compute-table.py"
DEVICE = "NVIDIA H200"
MIXTRAL_TP2 = LayerShape(8, 4096, 7168, 2, "bfloat16")  # Mixtral-8x7B's experts on one of two ranks


def script():
    spec = importlib.util.spec_from_file_location("expert_compute_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(arm, kernel, concurrency, tpot):
    return {"shape": "mixtral-8x7b", "num_layers": 32, "arm": arm, "kernel": kernel, "concurrency": concurrency,
            "tpot_median_ms": tpot, "tpot_p90_ms": tpot * 1.1, "decode_tokens_per_s": 1000.0 / tpot,
            "experts_per_layer": None, "expert_bytes_per_decode_token": None}


def write_record(tmp_path, rows, command=None, device=DEVICE) -> Path:
    command = command or ("lynx-sglang bench serve --shape mixtral-8x7b --arms 'baseline;lynx;budget:fraction=0.5' "
                          "--kernels lynx,sglang --concurrency 1,16,64 -- --tp 2")
    path = tmp_path / "record.json"
    path.write_text(json.dumps({"device": device, "commit": None, "command": command, "rows": rows}))
    return path


RECORD_ROWS = [
    row("baseline", "sglang", 1, 10.0), row("baseline", "sglang", 16, 14.0), row("baseline", "sglang", 64, 30.0),
    # concurrency 1: lynx's kernel slower in one arm -> sglang
    row("lynx", "lynx", 1, 10.5), row("lynx", "sglang", 1, 10.2),
    row("budget:fraction=0.5", "lynx", 1, 9.0), row("budget:fraction=0.5", "sglang", 1, 10.1),
    # 16 and 64: faster in both arms -> lynx
    row("lynx", "lynx", 16, 12.0), row("lynx", "sglang", 16, 13.0),
    row("budget:fraction=0.5", "lynx", 16, 9.0), row("budget:fraction=0.5", "sglang", 16, 12.5),
    row("lynx", "lynx", 64, 20.0), row("lynx", "sglang", 64, 25.0),
]


def test_the_script_writes_the_faster_kernel_per_batch_size_for_the_served_layer_shape(tmp_path, capsys):
    out = tmp_path / "configs"
    assert script().main([str(write_record(tmp_path, RECORD_ROWS)), "--out", str(out)]) == 0
    written = out / "expert_compute,device_name=NVIDIA_H200.json"
    assert json.loads(written.read_text()) == {MIXTRAL_TP2.key: {"1": "sglang", "16": "lynx", "64": "lynx"}}
    assert "1 rows -> sglang" in capsys.readouterr().out
    # another shape measured later joins the file; the first stays
    command = "lynx-sglang bench serve --shape qwen3-30b-a3b,num_hidden_layers=4 --kernels lynx,sglang"
    rows = [dict(r, shape="qwen3-30b-a3b") for r in RECORD_ROWS]
    assert script().main([str(write_record(tmp_path, rows, command)), "--out", str(out)]) == 0
    table = json.loads(written.read_text())
    assert set(table) == {MIXTRAL_TP2.key, "E=128,H=2048,I=768,top_k=8,dtype=bfloat16"}


@pytest.mark.parametrize("change,message", [
    ({"device": "CPU: AMD EPYC, 2 cores"}, "not measured on one"),
    ({"command": "lynx-sglang bench serve --concurrency 1"}, "has no --shape"),
    ({"command": "lynx-sglang bench serve --shape nope-7b"}, "unknown shape"),
    ({"command": "lynx-sglang bench serve --shape mixtral-8x7b -- --tp 3"}, "does not split in 3"),
    ({"rows": [row("lynx", "lynx", 1, 9.0), row("lynx", "auto", 1, 9.5)]}, "both --kernels lynx and sglang"),
    ({"rows": [{"arm": "lynx", "kernel": "lynx"}]}, "needs arm, kernel, concurrency and tpot_median_ms"),
])  # fmt: skip
def test_a_record_the_table_cannot_come_from_is_refused_by_name(tmp_path, capsys, change, message):
    record = {"device": DEVICE, "command": "lynx-sglang bench serve --shape mixtral-8x7b", "rows": RECORD_ROWS,
              **change}  # fmt: skip
    path = write_record(tmp_path, record["rows"], record["command"], record["device"])
    assert script().main([str(path), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_a_table_is_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.setattr(configs, "CONFIG_DIR", tmp_path)
    configs.load_device_config.cache_clear()
    path = configs.config_path("expert_compute", "NVIDIA_H200")
    path.write_text(json.dumps({MIXTRAL_TP2.key: {"16": "fastest"}}))
    with pytest.raises(ValueError, match=r"expert_compute,device_name=NVIDIA_H200.json: .*'fastest' is not one of"):
        ComputeTable.for_device("NVIDIA_H200")  # at bind: the server stops with this line
    configs.load_device_config.cache_clear()
    path.write_text('{"E=8,H=4096": ')
    with pytest.raises(ValueError, match=r"expert_compute,device_name=NVIDIA_H200.json: not valid JSON"):
        ComputeTable.for_device("NVIDIA_H200")
    configs.load_device_config.cache_clear()
    for data, message in (([1], "must be an object"), ({"E=8,H=1": {"1": "lynx"}}, "is not a layer shape"),
                          ({MIXTRAL_TP2.key: {"0": "lynx"}}, "'0' is not a batch size"),
                          ({MIXTRAL_TP2.key: {"4": "triton"}}, "'triton' is not one of lynx, sglang"),
                          ({MIXTRAL_TP2.key: {}}, "non-empty")):
        with pytest.raises(ValueError, match=message):
            ComputeTable.parse(data, "t.json")


@pytest.fixture
def measured_device(tmp_path, monkeypatch):
    """A table for DEVICE in a temporary kernels/configs, read through the loader the runtime uses."""
    monkeypatch.setattr(configs, "CONFIG_DIR", tmp_path)
    configs.load_device_config.cache_clear()
    path = configs.config_path("expert_compute", DEVICE.replace(" ", "_"))
    path.write_text(json.dumps(MEASURED))
    yield ComputeTable.for_device(DEVICE.replace(" ", "_"))
    configs.load_device_config.cache_clear()


MEASURED = {MIXTRAL_TP2.key: {"1": "sglang", "16": "lynx", "64": "sglang"}}


def test_the_runtime_reads_the_file_as_written_for_auto_on_its_cuda_device(measured_device, monkeypatch):
    assert measured_device.to_json() == MEASURED
    monkeypatch.setattr(compute_table, "device_name", lambda device: DEVICE.replace(" ", "_"))
    cuda = torch.device("cuda", 0)  # only named here: nothing touches a GPU
    assert table_for("auto", cuda).to_json() == MEASURED
    # the other kernels name their compute, and a CPU has no tables: no file is read
    assert [table_for(kernel, cuda) for kernel in ("lynx", "triton", "sglang")] == [None, None, None]
    assert table_for("auto", torch.device("cpu")) is None


def test_auto_follows_the_table_by_batch_rows_and_never_takes_a_kernel_it_shows_slower(measured_device):
    choice = KernelChoice("auto", measured_device)
    picks = {rows: choice.for_step("lynx", MIXTRAL_TP2, rows) for rows in (1, 2, 16, 17, 64, 256)}
    assert picks == {1: "sglang", 2: "lynx", 16: "lynx", 17: "sglang", 64: "sglang", 256: "sglang"}
    assert choice.for_step("baseline", MIXTRAL_TP2, 16) == "sglang"  # baseline is plain SGLang
    other_shape = LayerShape(128, 2048, 768, 8, "bfloat16")
    assert choice.for_step("lynx", other_shape, 1) == "lynx"  # not measured: today's choice
    assert KernelChoice("lynx", measured_device).for_step("lynx", MIXTRAL_TP2, 1) == "lynx"  # asked for
    assert KernelChoice("sglang", measured_device).for_step("lynx", MIXTRAL_TP2, 16) == "sglang"
    assert choice.describe("lynx", MIXTRAL_TP2, "lynx-triton") == (
        "sglang up to 1 rows, lynx-triton up to 16 rows, sglang above")


def test_without_a_table_auto_is_lynx_for_pruning_policies_and_sglang_for_baseline(tmp_path, monkeypatch):
    monkeypatch.setattr(configs, "CONFIG_DIR", tmp_path)
    configs.load_device_config.cache_clear()
    assert ComputeTable.for_device("NVIDIA_H100_80GB_HBM3") is None and ComputeTable.for_device(None) is None
    choice = KernelChoice("auto", None)
    assert [choice.for_step(policy, MIXTRAL_TP2, 8) for policy in ("lynx", "budget", "baseline")] == [
        "lynx", "lynx", "sglang"]
    assert choice.describe("lynx", MIXTRAL_TP2, "lynx-cpu") == "lynx-cpu"


def test_auto_leaves_a_lone_row_the_policy_keeps_to_sglang_unless_the_table_says_otherwise():
    # One row whose routing the policy keeps is the model's own step: baseline's compute, not lynx's
    # (slower at one row on the many-expert shapes). A measured table still decides where it has rows.
    untabled = KernelChoice("auto", None)
    assert untabled.for_step("lynx", MIXTRAL_TP2, 1, lone_row_kept=True) == "sglang"
    assert untabled.for_step("lynx", MIXTRAL_TP2, 1, lone_row_kept=False) == "lynx"  # e.g. random, tpot_ms
    assert untabled.for_step("lynx", MIXTRAL_TP2, 8, lone_row_kept=False) == "lynx"
    assert KernelChoice("lynx", None).for_step("lynx", MIXTRAL_TP2, 1, lone_row_kept=True) == "lynx"  # asked for
    assert KernelChoice("triton", None).for_step("budget", MIXTRAL_TP2, 1, lone_row_kept=True) == "lynx"
    lynx_at_one_row = KernelChoice("auto", ComputeTable({MIXTRAL_TP2.key: [(1, "lynx"), (64, "lynx")]}))
    assert lynx_at_one_row.for_step("lynx", MIXTRAL_TP2, 1, lone_row_kept=True) == "lynx"
    other_shape = LayerShape(128, 2048, 768, 8, "bfloat16")
    assert lynx_at_one_row.for_step("lynx", other_shape, 1, lone_row_kept=True) == "sglang"  # not measured
