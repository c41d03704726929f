"""A step's copy plan for one MoE layer's expert cache, made on the device with static shapes.

From the experts a layer call wants (an [E] bool mask) and the cache's two maps, `plan_copies` pairs
each wanted expert that is not resident with a slot to overwrite, at most N of them (N slots):

* missing experts in ascending id order (the first N: more do not fit this round);
* victim slots: empty slots first, then the lowest keep score (the replacement policy's), never a slot
  that holds a wanted expert (protected);
* pair i copies the i-th missing expert into the i-th victim while i < both counts.

The plan is N entries long whatever the data: `source_expert[i]` (-1: no copy), `target_slot[i]` (a
permutation of the slots, so writes never collide) and `evicted_expert[i]`. No `.item()`, no host
sync, no Python branch on tensor data: a CUDA graph captures it and replays it with new data.

When a call wants more experts than N, one round places min(N, wanted) of them (the resident wanted
ones stay, the victims take missing ones): the caller computes what is resident, drops it from the
wanted set and plans again. ceil(min(T*k, E) / N) rounds always suffice (kernels/cache/compute.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CopyPlan:
    source_expert: torch.Tensor  # [N] int32: the expert copied into target_slot[i]; -1: no copy
    target_slot: torch.Tensor  # [N] int64: a permutation of the slots (victims first)
    evicted_expert: torch.Tensor  # [N] int32: the expert target_slot[i] held before a copy; -1: none
    num_copies: torch.Tensor  # [] int64: entries with a copy (they come first)

    @property
    def copies(self) -> torch.Tensor:
        """[N] bool: which entries copy."""
        return self.source_expert >= 0


def plan_copies(wanted: torch.Tensor, expert_to_slot: torch.Tensor, slot_to_expert: torch.Tensor,
                keep_score: torch.Tensor) -> CopyPlan:  # fmt: skip
    """wanted [E] bool; expert_to_slot [E] int32 (-1: not resident); slot_to_expert [N] int32 (-1:
    empty); keep_score [N] float (the replacement policy's: lower is evicted first)."""
    num_experts, num_slots = wanted.shape[0], slot_to_expert.shape[0]
    device = wanted.device
    missing = wanted & (expert_to_slot < 0)
    # Stable sort of "not missing": the missing experts first, in ascending id order.
    missing_order = torch.argsort((~missing).to(torch.int8), stable=True)[:num_slots]
    num_missing = missing.sum()

    slot_expert = slot_to_expert.long()
    holds = slot_expert >= 0
    protected = holds & wanted[slot_expert.clamp(min=0)]
    inf = torch.full_like(keep_score, float("inf"))
    score = torch.where(holds, keep_score, -inf)  # empty slots go first
    score = torch.where(protected, inf, score)  # and a wanted expert's slot never goes
    victim_order = torch.argsort(score, stable=True)
    num_victims = num_slots - protected.sum()

    rank = torch.arange(num_slots, device=device)
    copies = (rank < num_missing) & (rank < num_victims)
    none = torch.full((num_slots,), -1, dtype=torch.int32, device=device)
    source = torch.where(copies, missing_order.to(torch.int32), none)
    evicted = torch.where(copies, slot_to_expert[victim_order], none)
    return CopyPlan(source, victim_order, evicted, copies.sum())


def apply_plan_to_maps(plan: CopyPlan, expert_to_slot_buffer: torch.Tensor, slot_to_expert: torch.Tensor) -> None:
    """Update the maps in place as the plan's copies land. expert_to_slot_buffer is [E + 1]: the last
    entry takes the writes of entries without a copy (static shapes, no masked scatter), and is never
    read as an expert's slot."""
    trash = expert_to_slot_buffer.shape[0] - 1
    copies = plan.copies
    trash_index = torch.full_like(plan.target_slot, trash)
    evicted_index = torch.where(plan.evicted_expert >= 0, plan.evicted_expert.long(), trash_index)
    expert_to_slot_buffer.scatter_(0, evicted_index, torch.full_like(evicted_index, -1, dtype=torch.int32))
    source_index = torch.where(copies, plan.source_expert.long(), trash_index)
    expert_to_slot_buffer.scatter_(0, source_index, plan.target_slot.to(torch.int32))
    expert_to_slot_buffer[trash:].fill_(-1)
    current = slot_to_expert[plan.target_slot]
    slot_to_expert.scatter_(0, plan.target_slot, torch.where(copies, plan.source_expert, current))
