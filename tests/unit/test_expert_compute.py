"""The expert compute of pruned steps (scheduler/expert_compute.py): SGLang's CPU expert loop on a
routing that names an expert twice in a row."""

import pytest
import torch

from lynx_sglang.kernels import fused_moe_active
from lynx_sglang.scheduler.expert_compute import distinct_ids_per_row

E, K, H, I = 8, 4, 16, 24


class ExpertWeights(torch.nn.Module):
    """What SGLang's CPU loop reads of a FusedMoE layer: its expert weights and expert count."""

    def __init__(self, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.w13_weight = torch.nn.Parameter(torch.randn(E, 2 * I, H, generator=generator) * 0.2)
        self.w2_weight = torch.nn.Parameter(torch.randn(E, H, I, generator=generator) * 0.2)
        self.num_experts = E


def fused_moe_reference(*args):
    return fused_moe_active(*args, implementation="reference")


def pruned_routing(seed: int, rows: int = 6):
    """Rows as the remap leaves them under a budget below k: the first choice repeated at weight 0."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(E, generator=generator)[:K] for _ in range(rows)]).to(torch.int32)
    weights = torch.softmax(torch.randn(rows, K, generator=generator), -1)
    ids[0, 1:] = ids[0, 0]  # one expert in every slot
    weights[0, 1:] = 0.0
    ids[1, 3] = ids[1, 1]  # a repeat with weight, folded into the first slot of its expert
    ids[2, 2:] = ids[2, 0]
    weights[2, 2:] = 0.0
    return ids, weights


def test_each_row_names_distinct_experts_and_keeps_its_weighted_sum():
    ids, weights = pruned_routing(seed=0)
    new_ids, new_weights = distinct_ids_per_row(ids, weights, E)
    assert new_ids.dtype == ids.dtype and new_weights.dtype == weights.dtype
    assert all(len(set(row)) == K for row in new_ids.tolist())
    assert ((new_ids >= 0) & (new_ids < E)).all()
    hidden = torch.randn(ids.shape[0], H, generator=torch.Generator().manual_seed(1))
    layer = ExpertWeights(seed=2)
    want = fused_moe_reference(hidden, layer.w13_weight.data, layer.w2_weight.data, ids, weights)
    got = fused_moe_reference(hidden, layer.w13_weight.data, layer.w2_weight.data, new_ids, new_weights)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)  # weights summed in fp32
    untouched = [3, 4, 5]  # rows without a repeat come back as they were
    assert torch.equal(new_ids[untouched], ids[untouched]) and torch.equal(new_weights[untouched], weights[untouched])


def test_sglangs_cpu_loop_needs_them_and_then_computes_the_pruned_routing():
    native = pytest.importorskip("sglang.srt.layers.moe.fused_moe_native")
    from sglang.srt.layers.moe.moe_runner import MoeRunnerConfig
    from sglang.srt.layers.moe.topk import StandardTopKOutput

    ids, weights = pruned_routing(seed=3)
    hidden = torch.randn(ids.shape[0], H, generator=torch.Generator().manual_seed(4))
    layer, config = ExpertWeights(seed=5), MoeRunnerConfig(activation="silu")
    with torch.no_grad():
        with pytest.raises((IndexError, RuntimeError)):  # why the scheduler steps in: SGLang's loop on repeated ids
            native.moe_forward_native(layer, hidden, StandardTopKOutput(weights, ids, None), config)
        new_ids, new_weights = distinct_ids_per_row(ids, weights, E)
        got = native.moe_forward_native(layer, hidden, StandardTopKOutput(new_weights, new_ids, None), config)
    want = fused_moe_reference(hidden, layer.w13_weight.data, layer.w2_weight.data, ids, weights)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
