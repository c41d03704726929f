"""Which experts of the next MoE layer a batch will likely use, from recorded activation statistics.

MoE-Infinity predicts the experts to prefetch from activation statistics; here the statistic is a
decayed co-activation count between consecutive layers: counts[i, j] grows by one for every token
that used expert i in this layer and expert j in the next. For a new batch, expert j of the next
layer scores sum over the batch's tokens and their experts i of P(j | i) = counts[i, j] / counts[i, :].sum(),
the expected number of the batch's tokens that will route to j; the top `count` experts with a
positive score are the prefetch. Tensor ops with static shapes (a top-k of a fixed count): graph safe.
"""

from __future__ import annotations

import torch


def expert_usage(topk_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """[T, E] float32: 1 where a token routes to an expert (padding ids, -1, route nowhere)."""
    ids = topk_ids.long()
    valid = (ids >= 0) & (ids < num_experts)
    usage = torch.zeros(ids.shape[0], num_experts + 1, dtype=torch.float32, device=ids.device)
    usage.scatter_(1, torch.where(valid, ids, num_experts), 1.0)
    return usage[:, :num_experts]


class CoactivationPredictor:
    """Between one layer (E experts) and the next (E_next): counts [E, E_next] float64 on the device."""

    def __init__(self, num_experts: int, next_num_experts: int, device, half_life: float = 256.0):
        if not half_life > 0:
            raise ValueError(f"CoactivationPredictor: half_life must be > 0, got {half_life!r}")
        self.counts = torch.zeros(num_experts, next_num_experts, dtype=torch.float64, device=device)
        self.decay = 0.5 ** (1.0 / half_life)  # per recorded batch

    def record(self, usage: torch.Tensor, next_usage: torch.Tensor) -> None:
        """usage [T, E] and next_usage [T, E_next] of the same tokens (expert_usage of both layers)."""
        self.counts.mul_(self.decay).add_((usage.t() @ next_usage).to(torch.float64))

    def likely(self, usage: torch.Tensor, count: int) -> torch.Tensor:
        """[E_next] bool: the `count` (static) next-layer experts the batch of `usage` most likely uses,
        among those with a positive score (none before anything is recorded)."""
        totals = self.counts.sum(dim=1, keepdim=True)
        chance = self.counts / totals.clamp(min=1e-30)  # P(next expert | expert), 0 for unseen experts
        scores = usage.sum(dim=0).to(torch.float64) @ chance
        top = torch.topk(scores, min(count, scores.shape[0])).indices
        wanted = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
        return wanted.scatter_(0, top, scores[top] > 0)

    def reset(self) -> None:
        self.counts.zero_()
