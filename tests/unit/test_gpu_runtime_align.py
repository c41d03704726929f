"""The GPU runtime's MoE alignment (`sgl_kernel.moe_align_block_size` in Triton) against SGLang's own
Triton small-numel kernel and a plain-torch reference. Without CUDA the kernels run in Triton's
interpreter; with CUDA the same tests run compiled, and a CUDA graph replays the call."""

from lynx_sglang.kernels.interpret import interpret_without_cuda

interpret_without_cuda()  # Triton reads TRITON_INTERPRET when a kernel is decorated: before the imports below

import importlib  # noqa: E402
import importlib.util  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from sglang.kernels.ops.moe.moe_align_small_numel import _moe_align_small_numel_kernel  # noqa: E402

from lynx_sglang.gpu_runtime import STANDIN_DIR  # noqa: E402
from lynx_sglang.gpu_runtime.align import MAX_BUCKETS, max_padded_tokens, moe_align_block_size  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GUARD = 8  # elements past each buffer that must stay untouched
SENTINEL = -7


def routed_ids(tokens, top_k, experts, dtype, filtered_share, seed):
    """[tokens, top_k] distinct experts per token (as a router picks them), a share of them -1."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.rand(tokens, experts, generator=gen).topk(top_k, dim=1).indices
    ids[torch.rand(tokens, top_k, generator=gen) < filtered_share] = -1
    return ids.to(dtype).to(DEVICE)


def reference(topk_ids, num_buckets, block_size, ignore_invalid=False):
    """Plain torch: total, expert_ids of the real blocks, sorted_token_ids over [0, total), cumsum_buffer."""
    flat = topk_ids.reshape(-1).long().cpu()
    numel = flat.numel()
    bucket = flat + 1
    valid = (bucket >= (1 if ignore_invalid else 0)) & (bucket < num_buckets)
    counts = torch.bincount(bucket[valid], minlength=num_buckets)
    padded = (counts + block_size - 1) // block_size * block_size
    start = torch.cumsum(padded, 0) - padded
    total = int(padded.sum())
    kept, order = torch.sort(bucket[valid], stable=True)
    pairs = torch.arange(numel)[valid][order]
    rank = torch.arange(kept.numel()) - (torch.cumsum(counts, 0) - counts)[kept]
    sorted_ids = torch.full((total,), numel, dtype=torch.int32)
    sorted_ids[start[kept] + rank] = pairs.int()
    expert_ids = torch.repeat_interleave(torch.arange(num_buckets) - 1, padded // block_size).int()
    cumsum = torch.cat([start + counts, torch.tensor([total])]).int()
    return total, expert_ids, sorted_ids, cumsum


def run_ours(topk_ids, num_buckets, block_size, pad=True, ignore=False):
    """Our call on buffers of exactly the worst-case size, each followed by a guard that must stay intact."""
    padded = max_padded_tokens(topk_ids.numel(), num_buckets, block_size, ignore)
    sizes = (padded, triton.cdiv(padded, block_size), 1, num_buckets + 1)
    guarded = [torch.full((n + GUARD,), SENTINEL, dtype=torch.int32, device=DEVICE) for n in sizes]
    moe_align_block_size(topk_ids, num_buckets, block_size, *(b[:-GUARD] for b in guarded), pad, ignore)
    for buffer in guarded:
        assert (buffer[-GUARD:] == SENTINEL).all(), "written past the end of a buffer"
    return [b[:-GUARD].cpu() for b in guarded]


def run_sglang(topk_ids, num_buckets, block_size):
    """SGLang's single-program Triton alignment (its wrapper asks CUDA about PDL; launched directly)."""
    padded = max_padded_tokens(topk_ids.numel(), num_buckets, block_size)
    sorted_ids = torch.full((padded,), SENTINEL, dtype=torch.int32, device=DEVICE)
    expert_ids = torch.full((triton.cdiv(padded, block_size),), SENTINEL, dtype=torch.int32, device=DEVICE)
    total = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    _moe_align_small_numel_kernel[(1,)](
        topk_ids, sorted_ids, expert_ids, total, num_buckets, block_size, topk_ids.numel(),
        NP=triton.next_power_of_2(max(topk_ids.numel(), 2)), NB=triton.next_power_of_2(max(expert_ids.numel(), 2)),
    )
    return int(total), expert_ids.cpu(), sorted_ids.cpu()


def assert_matches_reference(result, topk_ids, num_buckets, block_size, pad=True, ignore=False):
    sorted_ids, expert_ids, total, cumsum = result
    ref_total, ref_experts, ref_sorted, ref_cumsum = reference(topk_ids, num_buckets, block_size, ignore)
    assert int(total) == ref_total
    blocks = ref_total // block_size
    assert torch.equal(expert_ids[:blocks], ref_experts)
    assert (expert_ids[blocks:] == -1).all()
    assert torch.equal(cumsum, ref_cumsum)
    if pad:
        assert torch.equal(sorted_ids[:ref_total], ref_sorted)
        assert (sorted_ids[ref_total:] == topk_ids.numel()).all()
    else:  # only the pairs' own slots are written
        placed = ref_sorted != topk_ids.numel()
        assert torch.equal(sorted_ids[:ref_total][placed], ref_sorted[placed])
        assert (sorted_ids[:ref_total][~placed] == SENTINEL).all()
        assert (sorted_ids[ref_total:] == SENTINEL).all()


SMALL = [  # tokens, top_k, experts, block_size, id dtype, share of -1 ids
    (0, 8, 64, 16, torch.int32, 0.0),
    (1, 1, 8, 16, torch.int32, 0.0),
    (1, 8, 256, 64, torch.int64, 0.0),
    (3, 2, 8, 16, torch.int64, 0.5),
    (8, 8, 256, 16, torch.int32, 0.2),
    (16, 4, 64, 32, torch.int64, 0.1),
    (32, 8, 128, 128, torch.int32, 0.3),
    (32, 8, 256, 64, torch.int64, 0.25),
    (32, 8, 256, 16, torch.int32, 1.0),
    (100, 2, 8, 32, torch.int32, 0.1),
    (128, 2, 16, 16, torch.int64, 0.0),
    (64, 4, 256, 128, torch.int32, 0.1),
]


@pytest.mark.parametrize("tokens,top_k,experts,block_size,dtype,filtered", SMALL)
def test_matches_sglang_small_numel_kernel(tokens, top_k, experts, block_size, dtype, filtered):
    topk_ids = routed_ids(tokens, top_k, experts, dtype, filtered, seed=tokens * 1000 + experts)
    buckets = experts + 1
    sorted_ids, expert_ids, total, cumsum = run_ours(topk_ids, buckets, block_size)
    sg_total, sg_experts, sg_sorted = run_sglang(topk_ids, buckets, block_size)
    # Both keep pair order within a bucket, so the layouts agree slot for slot.
    assert int(total) == sg_total
    assert torch.equal(expert_ids[: sg_total // block_size], sg_experts[: sg_total // block_size])
    assert torch.equal(sorted_ids[:sg_total], sg_sorted[:sg_total])
    assert_matches_reference((sorted_ids, expert_ids, total, cumsum), topk_ids, buckets, block_size)


LARGE = [  # several counting chunks (1024 pairs), many placing chunks (64), blocks past one scan chunk
    (512, 8, 256, 64, torch.int32, 0.1, False, True),
    (1000, 3, 512, 16, torch.int64, 0.05, False, True),
    (1024, 4, 64, 128, torch.int64, 0.2, True, False),
    (4096, 1, 4, 1, torch.int32, 0.1, False, True),  # 4096 one-pair blocks, buckets spanning scan chunks
]


@pytest.mark.parametrize("tokens,top_k,experts,block_size,dtype,filtered,ignore,pad", LARGE)
def test_large_batches_match_torch_reference(tokens, top_k, experts, block_size, dtype, filtered, ignore, pad):
    topk_ids = routed_ids(tokens, top_k, experts, dtype, filtered, seed=tokens + top_k)
    result = run_ours(topk_ids, experts + 1, block_size, pad=pad, ignore=ignore)
    assert_matches_reference(result, topk_ids, experts + 1, block_size, pad=pad, ignore=ignore)


@pytest.mark.parametrize("ignore", [False, True])
def test_ignore_invalid_expert_drops_negative_ids_and_bucket_zero(ignore):
    topk_ids = torch.tensor([[1, -1, 2], [1, 0, -1]], dtype=torch.int32, device=DEVICE)
    sorted_ids, expert_ids, total, cumsum = run_ours(topk_ids, 4, 2, pad=True, ignore=ignore)
    if ignore:  # sgl-kernel skips them: no bucket-0 blocks, no slots
        assert sorted_ids[: int(total)].tolist() == [4, 6, 0, 3, 2, 6]
        assert expert_ids[:3].tolist() == [0, 1, 2]
        assert cumsum.tolist() == [0, 1, 4, 5, 6]
    else:  # bucket 0 holds them, its blocks have expert id -1
        assert sorted_ids[: int(total)].tolist() == [1, 5, 4, 6, 0, 3, 2, 6]
        assert expert_ids[:4].tolist() == [-1, 0, 1, 2]
        assert cumsum.tolist() == [2, 3, 6, 7, 8]


def test_ids_outside_the_experts_are_dropped_without_writing_out_of_bounds():
    topk_ids = torch.tensor([[0, 7, -5], [3, 1000, -1], [2**31 - 1, 2, -(2**31)]], dtype=torch.int32, device=DEVICE)
    result = run_ours(topk_ids, 5, 16)  # E = 4: ids 7, 1000, -5 and the int32 extremes are dropped
    assert_matches_reference(result, topk_ids, 5, 16)
    assert sorted(result[0][: int(result[2])].tolist()) == [0, 3, 5, 7] + [9] * 60


@pytest.mark.parametrize("numel,buckets,block_size", [(8, 257, 64), (25, 9, 16), (1, 1, 128)])
def test_worst_case_layout_fills_the_bound_exactly(numel, buckets, block_size):
    # Every non-empty bucket one pair past a multiple of block_size: the largest padded total.
    used = min(numel, buckets)
    ids = torch.cat([torch.arange(used) - 1, torch.full((numel - used,), -1)])
    total = run_ours(ids.to(torch.int32).to(DEVICE), buckets, block_size)[2]
    assert numel - used in (0, block_size)  # the shapes above are chosen so each count is 1 mod block_size
    assert int(total) == max_padded_tokens(numel, buckets, block_size)


def load_gpu_standin():
    """The GPU runtime's `sgl_kernel` package, under another name (here `sgl_kernel` is the CPU stand-in)."""
    spec = importlib.util.spec_from_file_location("lynx_gpu_sgl_kernel", STANDIN_DIR / "sgl_kernel" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("tokens,top_k,experts,block_size", [(1, 8, 256, 128), (5, 8, 8, 64), (300, 1, 512, 16),
                                                               (64, 8, 64, 128)])
def test_buffers_sglang_allocates_are_enough(monkeypatch, tokens, top_k, experts, block_size, ignore):
    """SGLang's own wrapper sizes the buffers, and reaches us through the stand-in's sgl_kernel."""
    sglang_align = importlib.import_module("sglang.srt.layers.moe.moe_runner.triton_utils.moe_align_block_size")
    monkeypatch.setattr(sglang_align, "sgl_moe_align_block_size", load_gpu_standin().moe_align_block_size,
                        raising=False)
    topk_ids = routed_ids(tokens, top_k, experts, torch.int32, 0.1, seed=tokens)
    sorted_ids, expert_ids, total = sglang_align.moe_align_block_size(topk_ids, block_size, experts,
                                                                      ignore_invalid_expert=ignore)
    ref_total, ref_experts, ref_sorted, _ = reference(topk_ids, experts + 1, block_size, ignore)
    assert int(total) == ref_total
    assert torch.equal(expert_ids[: ref_total // block_size].cpu(), ref_experts)
    assert torch.equal(sorted_ids[:ref_total].cpu(), ref_sorted)


def good_call(**changes):
    """Arguments of a valid call (numel 16, 9 buckets, block 4), with some replaced."""
    args = dict(topk_ids=torch.zeros(4, 4, dtype=torch.int64), num_experts=9, block_size=4,
                sorted_token_ids=torch.empty(max_padded_tokens(16, 9, 4), dtype=torch.int32),
                experts_ids=torch.empty(triton.cdiv(max_padded_tokens(16, 9, 4), 4), dtype=torch.int32),
                num_tokens_post_pad=torch.empty(1, dtype=torch.int32), cumsum_buffer=torch.empty(10, dtype=torch.int32))
    args.update(changes)
    return args


BAD = [
    (dict(topk_ids=torch.zeros(4, 4)), "topk_ids must be an int32 or int64 tensor, got torch.float32"),
    (dict(topk_ids=[0, 1]), "topk_ids must be an int32 or int64 tensor, got list"),
    (dict(num_experts=0), "num_experts must be a positive int, got 0"),
    (dict(num_experts=True), "num_experts must be a positive int"),
    (dict(num_experts=9.0), "num_experts must be a positive int"),
    (dict(block_size=0), "block_size must be a positive int"),
    (dict(num_experts=MAX_BUCKETS + 1), f"must be <= {MAX_BUCKETS}"),
    (dict(sorted_token_ids=torch.empty(43, dtype=torch.int64)), "sorted_token_ids must be int32, got torch.int64"),
    (dict(sorted_token_ids=torch.empty(42, dtype=torch.int32)), "sorted_token_ids holds 42 elements; .* at least 43"),
    (dict(sorted_token_ids=torch.empty(86, dtype=torch.int32)[::2]), "sorted_token_ids must be contiguous"),
    (dict(sorted_token_ids=torch.empty(43, dtype=torch.int32, device="meta")), "sorted_token_ids is on meta"),
    (dict(experts_ids=torch.empty(10, dtype=torch.int32)), "experts_ids holds 10 elements; .* at least 11"),
    (dict(experts_ids=None), "experts_ids must be a torch.Tensor, got NoneType"),
    (dict(num_tokens_post_pad=torch.empty(0, dtype=torch.int32)), "num_tokens_post_pad holds 0 elements"),
    (dict(num_tokens_post_pad=torch.empty(1, dtype=torch.int64)), "num_tokens_post_pad must be int32"),
    (dict(cumsum_buffer=torch.empty(9, dtype=torch.int32)), "cumsum_buffer holds 9 elements; .* at least 10"),
]


@pytest.mark.parametrize("changes,message", BAD)
def test_bad_inputs_raise_a_clear_value_error(changes, message):
    with pytest.raises(ValueError, match=message):
        moe_align_block_size(**good_call(**changes))


def test_the_good_call_of_the_bad_input_cases_runs():
    args = good_call()
    moe_align_block_size(**args)
    assert max_padded_tokens(16, 9, 4) == 43 and args["sorted_token_ids"].numel() == 43
    assert int(args["num_tokens_post_pad"]) == 16  # 16 pairs of expert 0: four full blocks


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tokens=st.integers(0, 80), top_k=st.integers(1, 4), experts=st.integers(1, 300),
       block_size=st.sampled_from([1, 3, 16, 64, 128]), int64=st.booleans(), ignore=st.booleans(), pad=st.booleans(),
       seed=st.integers(0, 2**16))
def test_random_batches_match_torch_reference(tokens, top_k, experts, block_size, int64, ignore, pad, seed):
    gen = torch.Generator().manual_seed(seed)
    # Any ids, out of range and repeated included (the reference drops the ones outside [-1, E)).
    topk_ids = torch.randint(-3, experts + 3, (tokens, top_k), generator=gen)
    topk_ids = topk_ids.to(torch.int64 if int64 else torch.int32).to(DEVICE)
    result = run_ours(topk_ids, experts + 1, block_size, pad=pad, ignore=ignore)
    assert_matches_reference(result, topk_ids, experts + 1, block_size, pad=pad, ignore=ignore)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_replay_matches_the_reference():
    """Captured once, replayed on new ids: no host sync, sizes from shapes only, same result every time."""
    buckets, block_size = 257, 64
    topk_ids = routed_ids(64, 8, 256, torch.int32, 0.1, seed=0)
    padded = max_padded_tokens(topk_ids.numel(), buckets, block_size)
    buffers = [torch.empty(n, dtype=torch.int32, device=DEVICE)
               for n in (padded, triton.cdiv(padded, block_size), 1, buckets + 1)]
    moe_align_block_size(topk_ids, buckets, block_size, *buffers, True)  # compiles outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        moe_align_block_size(topk_ids, buckets, block_size, *buffers, True)
    for seed in (1, 2, 2):
        topk_ids.copy_(routed_ids(64, 8, 256, torch.int32, 0.1, seed=seed))
        graph.replay()
        result = [b.cpu() for b in buffers]
        assert_matches_reference(result, topk_ids, buckets, block_size)
