"""The fp64 reference against a hand-computed case and a dense all-experts formula."""

import torch
import torch.nn.functional as F

from lynx_sglang.kernels import fused_moe_active


def test_reference_hand_computed_single_expert():
    # E=2, H=1, I=1: out = w * w2 * silu(g x) * (u x)
    hidden = torch.tensor([[2.0]])
    w13 = torch.tensor([[[0.5], [3.0]], [[1.0], [1.0]]])  # expert 0: gate 0.5, up 3.0
    w2 = torch.tensor([[[4.0]], [[100.0]]])
    ids = torch.tensor([[0, 1]])
    weights = torch.tensor([[0.25, 0.75]])
    mask = torch.tensor([True, False])  # expert 1 inactive: contributes 0
    out = fused_moe_active(hidden, w13, w2, ids, weights, mask, implementation="reference")
    expected = 0.25 * 4.0 * F.silu(torch.tensor(1.0, dtype=torch.float64)) * 6.0
    assert torch.allclose(out, expected.reshape(1, 1))


def test_reference_matches_dense_formula():
    torch.manual_seed(0)
    T, H, I, E, k = 4, 8, 6, 5, 2
    hidden = torch.randn(T, H, dtype=torch.float64)
    w13 = torch.randn(E, 2 * I, H, dtype=torch.float64)
    w2 = torch.randn(E, H, I, dtype=torch.float64)
    weights, ids = torch.randn(T, E).softmax(-1).double().topk(k)
    # Dense: every expert on every token, combined by a [T, E] routing matrix.
    gate_up = torch.einsum("eih,th->tei", w13, hidden)
    h = F.gelu(gate_up[..., :I]) * gate_up[..., I:]
    per_expert = torch.einsum("ehi,tei->teh", w2, h)
    routing = torch.zeros(T, E, dtype=torch.float64).scatter(1, ids, weights)
    dense = torch.einsum("te,teh->th", routing, per_expert)
    out = fused_moe_active(hidden, w13, w2, ids, weights, activation="gelu", implementation="reference")
    assert torch.allclose(out, dense)
