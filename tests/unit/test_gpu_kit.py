"""The GPU kit (scripts/gpu_kit.py): SGLang repacked without compiled parts, and the whole kit and the
repository within the 64 MiB a GPU machine receives."""

import csv
import importlib.util
import io
import json
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_kit", REPO / "scripts" / "gpu_kit.py")
gpu_kit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_kit)


def make_wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr("sglang-0.5.23.dist-info/WHEEL", "Tag: cp312-cp312-manylinux_2_34_x86_64\n")
        wheel.writestr("sglang-0.5.23.dist-info/RECORD", "stale\n")
    return path


def test_repack_keeps_python_and_data_drops_compiled_and_unused_trees(tmp_path):
    files = {
        "sglang/__init__.py": b"version = 1\n",
        "sglang/srt/configs/E=8,N=14336,device_name=NVIDIA_H200.json": b"{}",  # commas in a name
        "sglang/srt/rust_extensions/_server.cpython-312-x86_64-linux-gnu.so": b"\x7fELF",
        "sglang/multimodal_gen/runtime.py": b"",
        "sglang/test/test_utils.py": b"",
        "sglang/srt/__pycache__/x.cpython-312.pyc": b"",
        "sglang-0.5.23.dist-info/METADATA": b"Name: sglang\n",
    }
    wheel = make_wheel(tmp_path / "sglang-0.5.23-cp312-cp312-manylinux_2_34_x86_64.whl", files)
    out = gpu_kit.repack_pure(wheel, tmp_path)
    assert out.name == "sglang-0.5.23-py3-none-any.whl" and not wheel.exists()
    with zipfile.ZipFile(out) as repacked:
        names = set(repacked.namelist())
        record = list(csv.reader(io.StringIO(repacked.read("sglang-0.5.23.dist-info/RECORD").decode())))
        tag = repacked.read("sglang-0.5.23.dist-info/WHEEL").decode()
    assert "Tag: py3-none-any" in tag and "Root-Is-Purelib: true" in tag
    kept = {"sglang/__init__.py", "sglang/srt/configs/E=8,N=14336,device_name=NVIDIA_H200.json",
            "sglang-0.5.23.dist-info/METADATA"}
    assert kept <= names
    assert not any(n.endswith((".so", ".pyc")) or "/multimodal_gen/" in n or "/test/" in n for n in names)
    # every file but RECORD itself is listed once, with its size; names with commas survive the csv quoting
    listed = {row[0]: row for row in record}
    assert set(listed) == names
    assert listed["sglang/srt/configs/E=8,N=14336,device_name=NVIDIA_H200.json"][2] == "2"
    assert listed["sglang-0.5.23.dist-info/RECORD"][1:] == ["", ""]


def test_kit_requirements_are_pinned_and_leave_out_what_the_image_has():
    lines = gpu_kit.requirement_lines(REPO / "scripts" / "gpu-kit-requirements.txt")
    assert lines and all("==" in line for line in lines)
    names = {line.split("==")[0].lower().replace("_", "-") for line in lines}
    assert not names & {"torch", "triton", "numpy", "ipython", "sglang"}
    assert {"transformers", "xgrammar", "apache-tvm-ffi", "fastapi", "uvicorn", "pyzmq"} <= names


@pytest.mark.slow
def test_kit_and_repository_fit_the_64_mib_a_gpu_machine_receives(tmp_path):
    manifest = gpu_kit.build(tmp_path / "kit", "3.12")  # downloads the wheels from PyPI
    total = manifest["kit_bytes"] + manifest["repository_bytes"]
    assert total <= gpu_kit.SIZE_LIMIT, f"{total / 2**20:.1f} MiB"
    assert manifest["sglang_wheel"] == "sglang-0.5.23-py3-none-any.whl"
    assert (tmp_path / "kit" / "stubs" / "IPython" / "display.py").is_file()
    assert json.loads((tmp_path / "kit" / "kit.json").read_text())["python_version"] == "3.12"
    wheels = {w.name for w in (tmp_path / "kit" / "wheels").glob("*.whl")}
    assert len(wheels) == len(gpu_kit.requirement_lines(REPO / "scripts" / "gpu-kit-requirements.txt")) + 1
    assert all("cp312" in w or "py3" in w or "abi3" in w or "py2.py3" in w for w in wheels)
