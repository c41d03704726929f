"""`sgl_kernel.moe_align_block_size` in Triton: the MoE alignment SGLang's Triton fused MoE calls.

Contract of sgl-kernel 0.4.10 (its `moe_align_kernel.cu`), with `num_buckets` = E + 1: pair p with
expert id e goes to bucket e + 1 (EP-filtered ids, -1, to bucket 0); each bucket's pairs are padded to
a multiple of `block_size`, buckets laid out in order; `expert_ids[block] = bucket - 1`;
`num_tokens_post_pad[0]` is the padded total.

One program does it all, so that within a bucket the pairs keep their pair order (sgl-kernel places
them with atomics, in whatever order its threads run) and every run gives the same result: count the
pairs per bucket (a histogram per chunk), lay the buckets out, then place the pairs chunk by chunk,
each at its bucket's next free slot plus its rank in the chunk. Sizes and loop bounds come from shapes
only, with no host sync, so a call can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Pairs per counting chunk (a histogram each), and per placing chunk (ranked pairwise: [64, 64] fits
# in registers, larger squares spill).
MIN_CHUNK = 64
MAX_CHUNK = 1024
PLACE_CHUNK = 64
FILL_CHUNK = 2048
# Compiled for sm_90 without register spills up to here (sgl-kernel itself takes up to 8192).
MAX_BUCKETS = 2047
_INT32_MAX = 2**31 - 1


@triton.jit
def _max(a, b):
    return tl.maximum(a, b)


@triton.jit
def _buckets(ids_ptr, pairs, numel, num_buckets, FIRST_BUCKET: tl.constexpr, TRASH: tl.constexpr):
    """Bucket of each pair; TRASH for lanes past numel, ignored ids and ids outside [-1, E)."""
    in_range = pairs < numel
    bucket = tl.load(ids_ptr + pairs, mask=in_range, other=-2) + 1  # compared in the ids' own width
    keep = in_range & (bucket >= FIRST_BUCKET) & (bucket < num_buckets)
    return tl.where(keep, bucket, TRASH).to(tl.int32)


# Sizes that change with the batch are not specialised on: batch sizes share compiled variants (one
# per counting-chunk size up to 1024 pairs).
@triton.jit(do_not_specialize=["numel", "sorted_len", "expert_len"])
def _align_kernel(
    ids_ptr, sorted_ptr, expert_ids_ptr, total_ptr, cumsum_ptr,
    numel, num_buckets, block_size, sorted_len, expert_len,
    CHUNK: tl.constexpr, PLACE: tl.constexpr, NBK: tl.constexpr, FILL: tl.constexpr,
    PAD_SORTED: tl.constexpr, IGNORE_INVALID: tl.constexpr,
):
    TRASH: tl.constexpr = NBK - 1  # NBK >= buckets + 1: a bin no real bucket uses
    FIRST_BUCKET: tl.constexpr = 1 if IGNORE_INVALID else 0
    lanes = tl.arange(0, CHUNK)
    fill = tl.arange(0, FILL)
    bins = tl.arange(0, NBK)

    # (a) Backgrounds that other threads overwrite after the barrier below.
    if PAD_SORTED:
        for start in range(0, sorted_len, FILL):
            tl.store(sorted_ptr + start + fill, tl.full([FILL], 0, tl.int32) + numel,
                     mask=start + fill < sorted_len)
    for start in range(0, expert_len, FILL):
        tl.store(expert_ids_ptr + start + fill, tl.full([FILL], -1, tl.int32), mask=start + fill < expert_len)

    # (b) Pairs per bucket.
    counts = tl.zeros([NBK], tl.int32)
    for start in range(0, numel, CHUNK):
        counts += tl.histogram(_buckets(ids_ptr, start + lanes, numel, num_buckets, FIRST_BUCKET, TRASH), NBK)
    counts = tl.where(bins < num_buckets, counts, 0)

    # (c) Padded layout in bucket order.
    padded = (counts + block_size - 1) // block_size * block_size
    bucket_start = tl.cumsum(padded, 0) - padded
    total = tl.sum(padded, 0)
    tl.store(total_ptr, total)
    # cumsum_buffer holds each bucket's next free slot (as in sgl-kernel, whose atomics advance it);
    # after (d) it ends, as there, at each bucket's start plus its count, then the total.
    tl.store(cumsum_ptr + bins, tl.where(bins < num_buckets, bucket_start, total), mask=bins <= num_buckets)
    tl.debug_barrier()

    # expert_ids: the first block of every non-empty bucket gets its id, then a running maximum over
    # the blocks spreads it to the bucket's other blocks (ids grow with the block index; bucket 0's
    # blocks keep the -1 background).
    tl.store(expert_ids_ptr + bucket_start // block_size, bins - 1, mask=(counts > 0) & (bins > 0))
    tl.debug_barrier()
    num_blocks = total // block_size
    carry = tl.full([], -1, tl.int32)
    for start in range(0, expert_len, FILL):
        blocks = start + fill
        marks = tl.load(expert_ids_ptr + blocks, mask=blocks < num_blocks, other=-1)
        spread = tl.maximum(tl.associative_scan(marks, 0, _max), carry)
        tl.store(expert_ids_ptr + blocks, spread, mask=blocks < num_blocks)
        carry = tl.max(spread, 0)

    # (d) Each pair's slot: its bucket's next free slot plus its rank among the chunk's pairs of that
    # bucket (pairwise, as in SGLang's small-numel kernel). The next chunk's ids load while this one
    # is ranked.
    pairs = tl.arange(0, PLACE)
    earlier = pairs[None, :] < pairs[:, None]
    upcoming = _buckets(ids_ptr, pairs, numel, num_buckets, FIRST_BUCKET, TRASH)
    for start in range(0, numel, PLACE):
        bucket = upcoming
        upcoming = _buckets(ids_ptr, start + PLACE + pairs, numel, num_buckets, FIRST_BUCKET, TRASH)
        same = bucket[:, None] == bucket[None, :]
        rank = tl.sum((same & earlier).to(tl.int32), 1)
        live = bucket != TRASH
        slot = tl.load(cumsum_ptr + bucket, mask=live, other=0)
        tl.store(sorted_ptr + slot + rank, start + pairs, mask=live)
        tl.debug_barrier()  # every slot read before any is advanced
        tl.store(cumsum_ptr + bucket, slot + tl.sum(same.to(tl.int32), 1), mask=live & (rank == 0))
        tl.debug_barrier()  # advanced slots visible to the next chunk


def max_padded_tokens(numel: int, num_buckets: int, block_size: int, ignore_invalid_expert: bool = False) -> int:
    """The largest padded total the shape allows: each non-empty bucket adds at most block_size - 1."""
    usable = num_buckets - 1 if ignore_invalid_expert else num_buckets
    return numel + min(numel, max(usable, 0)) * (block_size - 1)


def _check_buffer(name: str, buffer, device: torch.device, min_numel: int) -> None:
    if not isinstance(buffer, torch.Tensor):
        raise ValueError(f"moe_align_block_size: {name} must be a torch.Tensor, got {type(buffer).__name__}")
    if buffer.dtype != torch.int32:
        raise ValueError(f"moe_align_block_size: {name} must be int32, got {buffer.dtype}")
    if buffer.device != device:
        raise ValueError(f"moe_align_block_size: {name} is on {buffer.device}, topk_ids on {device}")
    if not buffer.is_contiguous():
        raise ValueError(f"moe_align_block_size: {name} must be contiguous")
    if buffer.numel() < min_numel:
        raise ValueError(f"moe_align_block_size: {name} holds {buffer.numel()} elements; this shape needs "
                         f"at least {min_numel}")


def _check_call(topk_ids, num_buckets, block_size, sorted_token_ids, experts_ids, num_tokens_post_pad,
                cumsum_buffer, ignore_invalid_expert) -> None:
    if not isinstance(topk_ids, torch.Tensor) or topk_ids.dtype not in (torch.int32, torch.int64):
        got = topk_ids.dtype if isinstance(topk_ids, torch.Tensor) else type(topk_ids).__name__
        raise ValueError(f"moe_align_block_size: topk_ids must be an int32 or int64 tensor, got {got}")
    for name, value in (("num_experts", num_buckets), ("block_size", block_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"moe_align_block_size: {name} must be a positive int, got {value!r}")
    if num_buckets > MAX_BUCKETS:
        raise ValueError(f"moe_align_block_size: num_experts (buckets, E + 1) must be <= {MAX_BUCKETS}, "
                         f"got {num_buckets}")
    padded = max_padded_tokens(topk_ids.numel(), num_buckets, block_size, ignore_invalid_expert)
    if padded > _INT32_MAX:
        raise ValueError(f"moe_align_block_size: {topk_ids.numel()} pairs pad to up to {padded} slots, "
                         "more than int32 indexes")
    device = topk_ids.device
    _check_buffer("sorted_token_ids", sorted_token_ids, device, padded)
    _check_buffer("experts_ids", experts_ids, device, triton.cdiv(padded, block_size))
    _check_buffer("num_tokens_post_pad", num_tokens_post_pad, device, 1)
    _check_buffer("cumsum_buffer", cumsum_buffer, device, num_buckets + 1)


def moe_align_block_size(
    topk_ids: torch.Tensor,
    num_experts: int,
    block_size: int,
    sorted_token_ids: torch.Tensor,
    experts_ids: torch.Tensor,
    num_tokens_post_pad: torch.Tensor,
    cumsum_buffer: torch.Tensor,
    pad_sorted_token_ids: bool = False,
    ignore_invalid_expert: bool = False,
) -> None:
    """Align (token, expert) pairs into block-padded buckets, in place; `num_experts` counts buckets (E + 1).

    As in sgl-kernel: `pad_sorted_token_ids` first fills all of sorted_token_ids with numel, else the
    padding slots keep their old contents; `ignore_invalid_expert` drops pairs with a negative id
    instead of putting them in bucket 0; cumsum_buffer[:E + 2] ends at each bucket's start plus its
    count, then the total (sgl-kernel's general path; its small-batch path leaves this scratch alone).
    Unlike sgl-kernel: pairs keep their order within a bucket (there: thread order); expert_ids past the
    real blocks get -1 (there: unwritten); ids outside [-1, E) are dropped (there: out-of-bounds writes).
    """
    _check_call(topk_ids, num_experts, block_size, sorted_token_ids, experts_ids, num_tokens_post_pad,
                cumsum_buffer, ignore_invalid_expert)
    numel = topk_ids.numel()
    nbk = triton.next_power_of_2(num_experts + 1)
    _align_kernel[(1,)](
        topk_ids.reshape(-1), sorted_token_ids, experts_ids, num_tokens_post_pad, cumsum_buffer,
        numel, num_experts, block_size, sorted_token_ids.numel(), experts_ids.numel(),
        CHUNK=min(max(triton.next_power_of_2(numel), MIN_CHUNK), MAX_CHUNK),
        NBK=nbk, PLACE=PLACE_CHUNK, FILL=FILL_CHUNK,
        PAD_SORTED=bool(pad_sorted_token_ids), IGNORE_INVALID=bool(ignore_invalid_expert),
        num_warps=4 if nbk <= 1024 else 8,
    )
