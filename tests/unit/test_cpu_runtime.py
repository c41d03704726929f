"""The CPU runtime glue: active in this environment, and its sgl_kernel stand-ins compute the right thing."""

import importlib
import sys

import pytest
import torch

from lynx_sglang import cpu_runtime

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU glue is never active on CUDA installs")


def test_glue_is_enabled_and_bootstrapped():
    assert cpu_runtime.is_installed()
    assert cpu_runtime.glue_is_active()


def test_sgl_kernel_resolves_to_the_standin():
    sgl_kernel = importlib.import_module("sgl_kernel")
    assert sgl_kernel.__name__ == "sgl_kernel"
    assert sgl_kernel.__file__.endswith("sgl_kernel_standin.py")
    from sgl_kernel import some_op_we_do_not_have_cpu  # resolves at import, fails only when called

    with pytest.raises(NotImplementedError, match="some_op_we_do_not_have_cpu"):
        some_op_we_do_not_have_cpu()


def test_torchvision_imports_with_cpu_torch():
    import torchvision  # noqa: F401  (raised "operator torchvision::nms does not exist" without the glue)

    assert "torchvision" in sys.modules


def test_assign_req_to_token_pool_matches_a_plain_loop():
    from sgl_kernel import assign_req_to_token_pool_cpu

    req_to_token = torch.zeros(4, 16, dtype=torch.int32)
    rows = torch.tensor([2, 0, 3])
    start = torch.tensor([0, 5, 3])
    end = torch.tensor([3, 7, 3])
    out_cache_loc = torch.tensor([10, 11, 12, 20, 21])
    assign_req_to_token_pool_cpu(rows, req_to_token, start, end, out_cache_loc, 16)
    expected = torch.zeros(4, 16, dtype=torch.int32)
    expected[2, 0:3] = torch.tensor([10, 11, 12], dtype=torch.int32)
    expected[0, 5:7] = torch.tensor([20, 21], dtype=torch.int32)
    assert torch.equal(req_to_token, expected)


def test_copy_all_layer_kv_cache_moves_slots_in_every_layer():
    from sgl_kernel import copy_all_layer_kv_cache_cpu

    layers = [torch.arange(6 * 4, dtype=torch.float32).view(6, 4) + 100 * i for i in range(3)]
    before = [t.clone() for t in layers]
    ptrs = torch.tensor([t.data_ptr() for t in layers], dtype=torch.int64)
    strides = torch.tensor([t.stride(0) * t.element_size() for t in layers], dtype=torch.int64)
    copy_all_layer_kv_cache_cpu(ptrs, strides, torch.tensor([0, 5]), torch.tensor([2, 3]))
    for t, b in zip(layers, before):
        assert torch.equal(t[0], b[2]) and torch.equal(t[5], b[3])
        assert torch.equal(t[1:5], b[1:5])


def test_torchvision_schemas_are_left_to_a_torchvision_that_loads(tmp_path):
    """Defining torchvision::nms before a torchvision built for this torch aborted the process at
    its import (duplicate registration): the glue defines it only where torchvision's ops fail to load."""
    import shutil
    import subprocess

    from lynx_sglang.cpu_runtime.bootstrap import torchvision_extension_loads

    assert not torchvision_extension_loads(str(tmp_path))  # no compiled ops at all
    (tmp_path / "_C.so").write_bytes(b"not a shared library")
    assert not torchvision_extension_loads(str(tmp_path))
    if shutil.which("gcc") is None:
        pytest.skip("no C compiler to build a library that loads")
    source = tmp_path / "ops.c"
    source.write_text("int torchvision_ops_loaded = 1;\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "_C.so"), str(source)], check=True)
    assert torchvision_extension_loads(str(tmp_path))
