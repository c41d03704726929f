"""One entry point for the active-expert MoE: every implementation gets the same arguments, checked once,
and a bad one is refused with an error that names it. The Triton tiles follow the device's SM count."""

import pytest
import torch

from kernels_testlib import make_problem
from lynx_sglang.kernels import IMPLEMENTATIONS, MoeKernelConfig, fused_moe_active
from lynx_sglang.kernels.moe.config import INTERPRETER_SMS, choose_config, sm_count

PROBLEM = make_problem(4, 32, 16, 8, 2, torch.float32, num_active=4)
ARGS = (PROBLEM.hidden, PROBLEM.w13, PROBLEM.w2, PROBLEM.topk_ids, PROBLEM.topk_weights)


def replaced(index, value):
    return tuple(value if i == index else arg for i, arg in enumerate(ARGS))


BAD = [
    (replaced(0, PROBLEM.hidden[0]), {}, r"hidden must be \[T, H\]"),
    (replaced(1, PROBLEM.w13[:, :31]), {}, r"disagree: \[4, 32\], \[8, 31, 32\], \[8, 32, 16\]"),
    (replaced(2, PROBLEM.w2[:, :, :8]), {}, "disagree"),
    (replaced(1, PROBLEM.w13.half()), {}, "must share one float dtype; got torch.float32, torch.float16"),
    (replaced(0, PROBLEM.hidden.long()), {}, "must share one float dtype"),
    (replaced(3, PROBLEM.topk_ids[:3]), {}, r"must be \[T=4, k\]; got \[3, 2\], \[4, 2\]"),
    (replaced(4, PROBLEM.topk_weights[:, :1]), {}, r"must be \[T=4, k\]"),
    (replaced(3, PROBLEM.topk_ids.float()), {}, "topk_ids must be int32/int64 and topk_weights float; got torch.float32"),
    (ARGS, {"active_mask": torch.ones(7, dtype=torch.bool)}, r"active_mask must be \[E=8\] bool"),
    (ARGS, {"active_mask": torch.ones(8)}, r"active_mask must be \[E=8\] bool; got \[8\] torch.float32"),
    (ARGS, {"activation": "relu"}, r"activation must be one of \('silu', 'gelu'\), got 'relu'"),
    (ARGS, {"max_active_experts": -1}, "max_active_experts must be an int >= 0 or None, got -1"),
    (ARGS, {"out": torch.empty(4, 31)}, r"out must be \[T, H\] in hidden's dtype"),
    (ARGS, {"out": torch.empty(4, 32, dtype=torch.float16)}, "out must be"),
    (ARGS, {"out": torch.empty(32, 4).t()}, "with unit stride along H"),
]


@pytest.mark.parametrize("args,kwargs,message", BAD)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_every_implementation_refuses_a_bad_call_by_name(args, kwargs, message, implementation):
    with pytest.raises(ValueError, match="^fused_moe_active: .*" + message):
        fused_moe_active(*args, implementation=implementation, **kwargs)


def test_an_unknown_implementation_and_triton_options_elsewhere_are_refused():
    with pytest.raises(ValueError, match=r"implementation must be one of \('auto', 'triton', 'cpu', 'reference'\)"):
        fused_moe_active(*ARGS, implementation="cuda")
    with pytest.raises(ValueError, match="config and alignment are the Triton implementation's, not 'cpu''s"):
        fused_moe_active(*ARGS, implementation="cpu", config=MoeKernelConfig())


def test_cpu_and_reference_agree_on_a_good_call():
    out = torch.full((4, 32), float("nan"))
    got = fused_moe_active(*ARGS, PROBLEM.active_mask, "gelu", out=out, implementation="cpu")
    want = fused_moe_active(*ARGS, PROBLEM.active_mask, "gelu", implementation="reference")
    assert got is out and want.dtype == torch.float64
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_tiles_follow_the_devices_sm_count():
    """BLOCK_N splits the weights over about two programs per SM: more SMs, narrower tiles. A CUDA
    device's count is read from it; CPU tensors (the interpreter) use an H100's."""
    few, many = (choose_config(1, 2, 8, 4096, 14336, num_sms=sms) for sms in (16, 132))
    assert few.gate_up_block_n > many.gate_up_block_n and few.down_block_n > many.down_block_n
    assert sm_count(torch.device("cpu")) == INTERPRETER_SMS
    if torch.cuda.is_available():
        device = torch.device("cuda", 0)
        assert sm_count(device) == torch.cuda.get_device_properties(device).multi_processor_count
