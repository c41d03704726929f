"""Which rows of a batch are real, and which experts rows use: the two questions every consumer of a
routing (policies, the runtime's bookkeeping) asks, as static-shape tensor code."""

from __future__ import annotations

import torch


def real_rows(num_rows: int, num_real, device) -> torch.Tensor:
    """[T] bool: rows below num_real (a python int, a 0-dim tensor, or None = all)."""
    row_index = torch.arange(num_rows, device=device)
    return row_index >= 0 if num_real is None else row_index < num_real


def ids_to_mask(ids: torch.Tensor, row_mask: torch.Tensor | None, num_experts: int) -> torch.Tensor:
    """Mask [E] bool of the experts that appear in `ids` [T, j], counting only rows where `row_mask`
    [T] is True (all rows when None). Out-of-range ids are clamped so a garbage row cannot trigger a
    device-side assert; callers only pass rows they trust."""
    num_rows, slots = ids.shape
    ids = ids.long().clamp(0, num_experts - 1)
    if row_mask is None:
        votes = torch.ones(num_rows, slots, dtype=torch.bool, device=ids.device)
    else:
        votes = row_mask.unsqueeze(1).expand(num_rows, slots)
    per_row = torch.zeros(num_rows, num_experts, dtype=torch.bool, device=ids.device)
    per_row.scatter_(1, ids, votes)
    return per_row.any(dim=0)
