"""The expert cache on a GPU (skipped without CUDA): the Triton copy kernel reading pinned host memory
through its device address, and a layer call through the cache (plan, copies, rounds, compute)
captured into one CUDA graph and replayed with new routings. Not yet run: no GPU was available when
it was written (docs/offload.md)."""

import pytest
import torch

from kernels_testlib import make_problem
from lynx_sglang.kernels import fused_moe_active
from lynx_sglang.kernels.cache import ExpertCache, moe_through_cache

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def routing(num_tokens: int, num_experts: int, top_k: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(num_experts, generator=gen)[:top_k] for _ in range(num_tokens)]).to(torch.int32)
    weights = torch.softmax(torch.randn(num_tokens, top_k, generator=gen), -1)
    return ids.cuda(), weights.cuda()


def check_slots(cache: ExpertCache) -> None:
    for slot, expert in enumerate(cache.slot_to_expert.tolist()):
        if expert >= 0:
            assert torch.equal(cache.slot_w13[slot].cpu(), cache.host_w13[expert])
            assert torch.equal(cache.slot_w2[slot].cpu(), cache.host_w2[expert])


def test_the_host_store_is_pinned_and_the_triton_copies_read_it():
    problem = make_problem(1, 64, 32, 8, 2, torch.bfloat16, num_active=None, nan_inactive=False)
    cache = ExpertCache(problem.w13.cuda(), problem.w2.cuda(), 2)
    assert cache.host_w13.is_pinned() and cache.slot_w13.is_cuda
    wanted = torch.zeros(8, dtype=torch.bool, device="cuda")
    wanted[[5, 7]] = True
    cache.fetch(wanted)
    torch.cuda.synchronize()
    assert cache.resident[[5, 7]].all()
    check_slots(cache)


@pytest.mark.parametrize("num_tokens,num_slots", [(1, 2), (8, 2)])  # one round; four rounds
def test_a_captured_layer_call_replays_with_new_routings(num_tokens, num_slots):
    problem = make_problem(num_tokens, 64, 32, 8, 2, torch.bfloat16, num_active=None, nan_inactive=False)
    w13, w2 = problem.w13.cuda(), problem.w2.cuda()
    cache = ExpertCache(w13, w2, num_slots)
    hidden = problem.hidden.cuda()
    ids, weights = routing(num_tokens, 8, 2, seed=0)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (Triton compiles) outside the capture
        moe_through_cache(cache, hidden, ids, weights)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = moe_through_cache(cache, hidden, ids, weights)
    for seed in range(1, 6):
        new_ids, new_weights = routing(num_tokens, 8, 2, seed)
        ids.copy_(new_ids)
        weights.copy_(new_weights)
        graph.replay()
        torch.cuda.synchronize()
        dense = fused_moe_active(hidden, w13, w2, ids, weights)
        torch.testing.assert_close(captured.out.float(), dense.float(), rtol=2e-2, atol=2e-2)
        assert int(captured.needed) == ids.unique().numel()
        check_slots(cache)
