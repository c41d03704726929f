"""Alignment over the active experts: invariants, static sizes, histogram input, graph compatibility."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lynx_sglang.kernels import align_active_experts, max_blocks_bound


def _check_alignment(topk_ids, num_experts, block_m, active_mask, alignment):
    flat = topk_ids.reshape(-1).long()
    num_pairs = flat.numel()
    in_range = (flat >= 0) & (flat < num_experts)
    computed = in_range.clone()
    if active_mask is not None:
        computed &= active_mask[flat.clamp(0, num_experts - 1)]
    assert torch.equal(alignment.pair_is_computed, computed)
    # Static sizes: from shapes only.
    assert alignment.max_blocks == max_blocks_bound(num_pairs, num_experts, block_m)
    assert alignment.sorted_pair_ids.shape == (alignment.max_blocks * block_m,)
    assert alignment.block_expert.shape == (alignment.max_blocks,)

    sorted_ids = alignment.sorted_pair_ids.long()
    real = sorted_ids[sorted_ids < num_pairs]
    # Every computed pair appears exactly once; no other pair appears.
    assert sorted(real.tolist()) == sorted(computed.nonzero().flatten().tolist())
    num_blocks = int(alignment.num_blocks)
    blocks = alignment.block_expert.long()
    assert (blocks[num_blocks:] == -1).all()
    assert (blocks[:num_blocks] >= 0).all()
    for b in range(alignment.max_blocks):
        rows = sorted_ids[b * block_m : (b + 1) * block_m]
        rows = rows[rows < num_pairs]
        if b >= num_blocks:
            assert rows.numel() == 0
            continue
        assert rows.numel() > 0, "a real block must hold at least one pair"
        assert (flat[rows] == blocks[b]).all(), "a block holds pairs of one expert only"
    # Expert blocks are contiguous and each expert's block count is ceil(n / block_m).
    counts = torch.zeros(num_experts, dtype=torch.long).index_add_(0, flat[computed], torch.ones_like(flat[computed]))
    assert torch.equal(alignment.expert_counts.long(), counts)
    for e in range(num_experts):
        assert int((blocks == e).sum()) == -(-int(counts[e]) // block_m)
    # Compact active list: ascending, then -1.
    if active_mask is None:
        expected_active = (counts > 0).nonzero().flatten()
    else:
        expected_active = active_mask.nonzero().flatten()
    num_active = int(alignment.num_active)
    assert num_active == expected_active.numel()
    assert torch.equal(alignment.active_experts[:num_active].long(), expected_active)
    assert (alignment.active_experts[num_active:] == -1).all()


@settings(max_examples=60, deadline=None)
@given(
    num_tokens=st.integers(1, 24),
    top_k=st.integers(1, 8),
    num_experts=st.integers(1, 128),
    block_m=st.sampled_from([16, 32]),
    use_mask=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_alignment_invariants(num_tokens, top_k, num_experts, block_m, use_mask, seed):
    gen = torch.Generator().manual_seed(seed)
    topk_ids = torch.randint(-1, num_experts, (num_tokens, top_k), generator=gen, dtype=torch.int32)
    active_mask = torch.rand(num_experts, generator=gen) < 0.5 if use_mask else None
    alignment = align_active_experts(topk_ids, num_experts, block_m, active_mask)
    _check_alignment(topk_ids, num_experts, block_m, active_mask, alignment)


def test_out_of_range_ids_are_dropped():
    topk_ids = torch.tensor([[0, 7], [9, -3]], dtype=torch.int32)  # 9 >= E, -3 < 0
    alignment = align_active_experts(topk_ids, num_experts=8, block_m=16)
    assert alignment.pair_is_computed.tolist() == [True, True, False, False]
    _check_alignment(topk_ids, 8, 16, None, alignment)


def test_a_wrong_expert_bound_drops_pairs_and_never_writes_out_of_bounds():
    """max_active_experts sizes the grid; a value below the experts really used must not write past
    the buffers (scatter_ would raise here and fault on a GPU). The pairs that do not fit are
    dropped: marked not computed, like an inactive id."""
    gen = torch.Generator().manual_seed(3)
    topk_ids = torch.randint(0, 16, (10, 4), generator=gen)  # about 14 distinct experts
    alignment = align_active_experts(topk_ids, 16, 16, max_active_experts=2)
    assert alignment.max_blocks == max_blocks_bound(40, 16, 16, 2) < int(alignment.expert_counts.gt(0).sum())
    placed = alignment.sorted_pair_ids[alignment.sorted_pair_ids < 40].long()
    assert sorted(placed.tolist()) == alignment.pair_is_computed.nonzero().flatten().tolist()
    assert 0 < placed.numel() < 40
    flat = topk_ids.reshape(-1)
    for b in range(alignment.max_blocks):  # every placed pair sits in a block of its own expert
        rows = alignment.sorted_pair_ids[b * 16:(b + 1) * 16].long()
        rows = rows[rows < 40]
        assert (flat[rows] == alignment.block_expert[b]).all()


def test_grid_bound_follows_active_budget_and_not_e():
    # T=1, k=8, E=128: at most 8 non-empty experts whatever E is.
    assert max_blocks_bound(8, 128, 16) == 8
    assert max_blocks_bound(8, 8, 16) == 8
    # Large batch: bounded by T*k/BM + nonempty experts, and tightened by a static expert budget.
    assert max_blocks_bound(64 * 8, 128, 16) == (512 + 128 * 15) // 16
    assert max_blocks_bound(64 * 8, 128, 16, max_active_experts=32) == (512 + 32 * 15) // 16
    topk_ids = torch.randint(0, 32, (64, 8))
    alignment = align_active_experts(topk_ids, 128, 16, max_active_experts=32)
    assert alignment.max_blocks == (512 + 32 * 15) // 16
    assert int(alignment.num_blocks) <= alignment.max_blocks


def test_no_active_expert_gives_empty_grid():
    topk_ids = torch.zeros(3, 2, dtype=torch.int32)
    alignment = align_active_experts(topk_ids, 4, 16, torch.zeros(4, dtype=torch.bool))
    assert int(alignment.num_blocks) == 0 and (alignment.block_expert == -1).all()
    assert int(alignment.num_active) == 0


def test_alignment_compiles_fullgraph():
    """No graph breaks: no .item(), host syncs or data-dependent shapes in the alignment."""
    compiled = torch.compile(
        lambda ids, mask: align_active_experts(ids, 16, 16, mask), fullgraph=True, backend="eager"
    )
    gen = torch.Generator().manual_seed(5)
    topk_ids = torch.randint(-1, 16, (6, 4), generator=gen, dtype=torch.int32)
    mask = torch.rand(16, generator=gen) < 0.5
    got = compiled(topk_ids, mask)
    _check_alignment(topk_ids, 16, 16, mask, got)


@pytest.mark.parametrize("block_m", [16, 64])
def test_alignment_is_deterministic_token_order(block_m):
    topk_ids = torch.tensor([[1, 0], [1, 2], [0, 1]])
    alignment = align_active_experts(topk_ids, 3, block_m)
    ids = alignment.sorted_pair_ids[alignment.sorted_pair_ids < 6].tolist()
    assert ids == [1, 4, 0, 2, 5, 3]  # expert 0: pairs 1, 4; expert 1: 0, 2, 5; expert 2: 3
