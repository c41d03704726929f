"""The serving runtime's per-layer routing statistics in one Triton launch (kernels/stats_triton.py)
against the torch version of RoutingStats.record, under the interpreter without a GPU."""

import pytest
import torch

from lynx_sglang.kernels.launches import count_launches
from lynx_sglang.kernels.routing import fused_available
from lynx_sglang.scheduler.stats import FIELDS, MoeLayerInfo, RoutingStats

pytestmark = pytest.mark.skipif(not fused_available("triton"), reason="needs Triton")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def layer_calls(num_rows, num_experts, top_k, seed, ids_dtype=torch.int32, logits_dtype=torch.float32):
    """Real and padding rows, NaN / +inf / all -inf rows, a -1 id, repeated ids, kept and rerouted rows."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_rows, num_experts, generator=generator) * 2
    original = torch.softmax(logits, -1).topk(top_k, dim=-1).indices
    final = original.clone()
    rerouted = torch.rand(num_rows, generator=generator) < 0.5
    final[rerouted, -1] = torch.randint(0, num_experts, (int(rerouted.sum()),), generator=generator)
    if num_rows >= 6:
        logits[1, 0] = float("nan")
        logits[2, 3] = float("inf")
        logits[3] = float("-inf")
        original[4, 0] = -1  # garbage in a padding row: clamped, never counted
        final[5] = final[5, :1]  # one expert in every slot
    real = torch.arange(num_rows) < max(1, num_rows - 2)
    if num_rows >= 6:
        real[4] = False
    moved = lambda t: t.to(DEVICE)  # noqa: E731
    return (moved(real), moved(logits.to(logits_dtype)), moved(original.to(ids_dtype)), moved(final.to(ids_dtype)))


def recorded(fused, calls, fell_back_at=()):
    layers = [MoeLayerInfo(0, calls[0][1].shape[1], calls[0][2].shape[1], expert_bytes=1)]
    stats = RoutingStats(layers, DEVICE, fused=fused)
    for index, (real, logits, original, final) in enumerate(calls):
        fell_back = torch.tensor(index in fell_back_at, device=DEVICE)
        stats.record(0, real, logits, original, final, fell_back)
        if index == 1:
            stats.end_step()
    stats.end_step()
    return stats


@pytest.mark.parametrize("num_rows,num_experts,top_k", [(1, 8, 2), (7, 8, 2), (40, 60, 4), (130, 128, 8)])
@pytest.mark.parametrize("dtypes", [(torch.int32, torch.float32), (torch.int64, torch.bfloat16)])
def test_one_launch_adds_the_same_figures_as_the_torch_ops(num_rows, num_experts, top_k, dtypes):
    calls = [layer_calls(num_rows, num_experts, top_k, seed, *dtypes) for seed in range(3)]
    reference = recorded(False, calls, fell_back_at=(1,))
    fused = recorded(True, calls, fell_back_at=(1,))
    mass = FIELDS.index("mass_dropped")
    counts = [i for i in range(len(FIELDS)) if i != mass]
    assert torch.equal(fused.table[:, counts], reference.table[:, counts]), (fused.table, reference.table)
    torch.testing.assert_close(fused.table[:, mass], reference.table[:, mass], rtol=1e-5, atol=1e-6)
    assert fused.table[0, FIELDS.index("fallbacks")] == 1 and fused.table[0, FIELDS.index("steps")] == 2
    assert torch.equal(fused.fallback_steps, reference.fallback_steps) and fused.fallback_steps == 1
    if num_rows > 2:  # the cases above do lose experts: the mass is not trivially 0
        assert fused.table[0, mass] > 0


def test_the_fused_record_is_one_triton_launch_and_no_torch_op():
    real, logits, original, final = layer_calls(16, 64, 8, seed=1)
    stats = RoutingStats([MoeLayerInfo(3, 64, 8, expert_bytes=1)], DEVICE, fused=True)
    counter = count_launches(stats.record, 3, real, logits, original, final, torch.tensor(False, device=DEVICE))
    assert (counter.triton, counter.torch_ops, counter.host_syncs) == (1, 0, 0), counter.op_names
    reference = RoutingStats([MoeLayerInfo(3, 64, 8, expert_bytes=1)], DEVICE, fused=False)
    counter = count_launches(reference.record, 3, real, logits, original, final, torch.tensor(False, device=DEVICE))
    assert counter.torch_ops > 20  # what the launch replaces, each a kernel under a CUDA graph


def test_auto_choice_follows_the_device():
    layers = [MoeLayerInfo(0, 8, 2, expert_bytes=1)]
    assert RoutingStats(layers, torch.device("cpu")).fused is False  # torch ops are cheaper on a CPU
    if torch.cuda.is_available():
        assert RoutingStats(layers, torch.device("cuda")).fused is True
