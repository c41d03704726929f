"""The expert compute of pruned steps: what SGLang's own compute needs from a pruned routing."""

from __future__ import annotations

import torch


def distinct_ids_per_row(topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                         num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same routing with no expert twice in a row, for SGLang's CPU expert loop.

    A pruned routing may name an expert in several slots of a row (the remap fills the slots it cannot
    fill with the token's first choice at weight 0). SGLang's CPU loop (`moe_forward_native`) counts
    each expert once per row and then fails on the pair count. Each repeated slot here adds its weight
    to the expert's first slot and takes an expert the row does not use, at weight 0: the same sum of
    weighted expert outputs. Tensor ops with static shapes; k <= E."""
    num_rows, top_k = topk_ids.shape
    ids = topk_ids.long()
    same = ids.unsqueeze(2) == ids.unsqueeze(1)  # [T, k, k]: slot i names slot j's expert
    first_slot = same.int().argmax(dim=2)  # the first slot naming each slot's expert
    slot = torch.arange(top_k, device=ids.device)
    repeated = first_slot != slot
    weights = torch.zeros_like(topk_weights).scatter_add_(1, first_slot, topk_weights)
    used = torch.zeros(num_rows, num_experts, dtype=torch.int8, device=ids.device).scatter_(1, ids.clamp(min=0), 1)
    unused = torch.argsort(used, dim=1, stable=True)[:, :top_k]  # the row's unused experts, lowest first
    nth_repeat = (torch.cumsum(repeated.long(), dim=1) - 1).clamp(min=0)
    ids = torch.where(repeated, unused.gather(1, nth_repeat), ids)
    return ids.to(topk_ids.dtype), weights


def for_sglang_cpu_loop(dispatch_output, num_experts: int):
    """`dispatch_output` with each row's experts distinct (`distinct_ids_per_row`)."""
    topk = dispatch_output.topk_output
    ids, weights = distinct_ids_per_row(topk.topk_ids, topk.topk_weights, num_experts)
    return dispatch_output._replace(topk_output=topk._replace(topk_ids=ids, topk_weights=weights))
