"""The serving runtime's bookkeeping after a policy's decision, for one MoE layer call, in torch ops: the
definition the fused paths (triton_launch.py, cpu.py) reproduce, with the same signatures, and what runs
where neither does.

1. Checks (`finalize_torch`): the layer keeps the model's own routing for this step (a fallback) when the
   proposed routing has an id outside [0, E) or a non-finite weight in a real row, checked in the dtypes
   it is returned in. Non-finite router logits are not a fallback: the policies route such a row
   inside the active set without letting it vote (docs/policies.md), and that routing stands.
2. Active mask: the experts the final ids use in real rows (ids clamped, as `ids_to_mask`).
3. Statistics (alone too, for a routing already final: `record_torch`): the layer's row of the table
   (layout.FIELDS) gets steps, tokens (real rows), distinct experts before and after, rows rerouted (one
   of their original experts gone), and the router mass dropped: the probability (softmax of the
   logits; a row with NaN, +inf or only -inf counts 0) of the original experts a row lost. Every
   figure but `fallbacks` counts only when the layer did not fall back.
"""

from __future__ import annotations

import torch

from ..routing.batch import ids_to_mask, real_rows
from . import layout


def record_torch(table_row: torch.Tensor | None, step_fell_back: torch.Tensor | None, num_real,
                 router_logits: torch.Tensor, original_ids: torch.Tensor, final_ids: torch.Tensor,
                 fell_back: torch.Tensor | None = None, *, mask: bool = False) -> torch.Tensor | None:
    """A layer call whose routing is final (`final_ids`): add its figures to `table_row` (a row of the
    table, float64; None: no figures) and fold `fell_back` (a 0-dim bool tensor, or None: it did not fall back)
    into `step_fell_back` (0-dim float64). Returns the active mask of `final_ids` [E] bool when `mask`.
    num_real: the first rows that are real (a 0-dim tensor, an int, or None for all)."""
    num_experts = router_logits.shape[-1]
    real = real_rows(router_logits.shape[0], num_real, router_logits.device)
    if table_row is not None:
        layout.check_table_row(table_row, step_fell_back)
        if fell_back is None:
            fell_back = torch.zeros((), dtype=torch.bool, device=router_logits.device)
        kept = (original_ids.unsqueeze(-1) == final_ids.unsqueeze(-2)).any(dim=-1)  # [T, k]
        probs = torch.softmax(router_logits.float(), dim=-1).nan_to_num(0.0)
        original_probs = probs.gather(1, original_ids.long().clamp(0, num_experts - 1))
        counted = (~fell_back).double()
        figures = {
            "steps": counted,
            "tokens": real.sum().double() * counted,
            "distinct_before": ids_to_mask(original_ids, real, num_experts).sum().double() * counted,
            "distinct_after": ids_to_mask(final_ids, real, num_experts).sum().double() * counted,
            "rerouted": (real & ~kept.all(dim=-1)).sum().double() * counted,
            "mass_dropped": (original_probs * ~kept * real.unsqueeze(1)).sum().double() * counted,
            "fallbacks": fell_back.double(),
        }
        table_row.add_(torch.stack([figures[name] for name in layout.FIELDS]))
        step_fell_back.copy_(torch.maximum(step_fell_back, fell_back.double()))
    return ids_to_mask(final_ids, real, num_experts) if mask else None


def finalize_torch(router_logits, ids, weights, new_ids, new_weights, num_real, *, mask: bool, table_row=None,
                   step_fell_back=None):  # fmt: skip
    """The layer's final routing after a policy proposed (new_ids, new_weights): (ids [T, k] in ids'
    dtype, weights [T, k] in weights' dtype, fell_back 0-dim bool, active mask [E] bool or None), and
    the statistics row updated when `table_row` is given (as record_torch)."""
    num_experts = router_logits.shape[1]
    real = real_rows(router_logits.shape[0], num_real, router_logits.device)
    new_ids, new_weights = new_ids.to(ids.dtype), new_weights.to(weights.dtype)
    bad_ids = ((new_ids < 0) | (new_ids >= num_experts)).any(dim=-1)
    bad_weights = ~torch.isfinite(new_weights.float()).all(dim=-1)
    fell_back = ((bad_ids | bad_weights) & real).any()
    final_ids, final_weights = torch.where(fell_back, ids, new_ids), torch.where(fell_back, weights, new_weights)
    active = record_torch(table_row, step_fell_back, num_real, router_logits, ids, final_ids, fell_back, mask=mask)
    return final_ids, final_weights, fell_back, active
