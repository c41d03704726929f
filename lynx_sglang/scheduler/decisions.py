"""Each tensor-parallel rank's routing decisions, as a digest the ranks can compare.

Under `--tp N` every rank routes the same tokens from replicated router logits and must reach the
same active set in every MoE layer at every step, or the ranks would compute shards of different
experts. Per MoE layer this keeps, on the model's device, a rolling digest of the layer's final
active set (the experts the real rows' final top-k use) and a count of layer calls, updated by a
few tensor ops per call (7 from the layer's active mask, 13 from its top-k ids) and never read on
the step path (CUDA-graph safe). The digest follows the order of steps, so the same sets in another
order do not match. Between steps a control request reads it on every rank and the ranks exchange
what they read over SGLang's CPU process group, so rank 0's `/lynx/stats` shows every rank's. A call
of one row that keeps the model's routing launches nothing (lone_row.py): counted on the host, not
digested.

Arithmetic is modulo a prime below 2**31, so every intermediate (digest x BASE < 2**51, a sum of at
most E values below 2**31) stays exact in int64.
"""

from __future__ import annotations

import torch

from lynx_sglang.kernels.routing.batch import real_rows
from lynx_sglang.scheduler.stats import MoeLayerInfo

PRIME = 2_147_483_647  # 2**31 - 1
BASE = 1_000_003  # steps the digest: digest' = digest * BASE + set value (mod PRIME)
EXPERT_BASE = 40_503  # an expert set's value: sum over its experts e of EXPERT_BASE**(e + 1) (mod PRIME)


class DecisionDigest:
    def __init__(self, layers: list[MoeLayerInfo], device):
        self.row_of = {info.layer_id: row for row, info in enumerate(layers)}
        self.num_experts = {info.layer_id: info.num_experts for info in layers}
        self.sink = max((info.num_experts for info in layers), default=0)  # where padding rows vote: weight 0
        weights = [pow(EXPERT_BASE, expert + 1, PRIME) for expert in range(self.sink)] + [0]
        self.weights = torch.tensor(weights, dtype=torch.int64, device=device)
        self.table = torch.zeros(len(layers), 2, dtype=torch.int64, device=device)  # [digest, layer calls]
        # Per layer, host-side: one-row calls that kept the model's routing (counted, not digested).
        self.lone_row_calls = [0] * len(layers)

    def record(self, layer_id: int, num_real, final_ids: torch.Tensor, active: torch.Tensor | None = None) -> None:
        """Fold one layer call's final routing into the layer's digest. num_real: the first rows that
        are real (a 0-dim tensor, an int, or None for all); the other rows do not count. active: the
        layer's active mask [E] bool of those same rows when the bookkeeping made one (fewer ops)."""
        row = self.row_of.get(layer_id)
        if row is None:
            return
        num_experts = self.num_experts[layer_id]
        if active is not None:
            value = torch.where(active, self.weights[:num_experts], 0).sum()
        else:
            real = real_rows(final_ids.shape[0], num_real, final_ids.device).unsqueeze(1)
            slots = torch.where(real, final_ids.long().clamp(0, num_experts - 1), self.sink).flatten()
            # An expert chosen by several rows writes the same weight several times: the set, not the count.
            value = torch.zeros_like(self.weights).scatter_(0, slots, self.weights[slots]).sum()
        entry = self.table[row]
        entry[:1].mul_(BASE).add_(value).remainder_(PRIME)
        entry[1:].add_(1)

    def add_lone_row_step(self, layer_ids) -> None:
        for layer_id in layer_ids:
            row = self.row_of.get(layer_id)
            if row is not None:
                self.lone_row_calls[row] += 1

    def reset(self) -> None:
        self.lone_row_calls = [0] * len(self.lone_row_calls)
        self.table.zero_()

    def read(self, rank: int) -> dict:
        """This rank's digest over all layers (hex), its pruned steps (the most calls of any layer) and
        its layer calls: a host read, for control requests only."""
        table = self.table.cpu().tolist()
        digest = 0
        for layer_digest, _ in table:
            digest = (digest * BASE + layer_digest) % PRIME
        calls = [count + lone for (_, count), lone in zip(table, self.lone_row_calls)]
        return {"rank": rank, "digest": f"{digest:08x}", "steps": max(calls, default=0), "layer_calls": sum(calls)}


def decisions_by_rank(decisions: DecisionDigest, group) -> dict:
    """`decisions_by_rank` (every rank's `read`, by rank in `group`, the tensor-parallel CPU group) and
    `ranks_agree`. Every rank of `group` must call this at the same point (as each handles the same
    control request between the same two steps); None = a single rank."""
    if group is None:
        gathered = [decisions.read(0)]
    else:
        import torch.distributed as dist

        gathered = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, decisions.read(dist.get_rank(group)), group=group)
    gathered.sort(key=lambda entry: entry["rank"])
    first = gathered[0]
    agree = all((entry["digest"], entry["steps"]) == (first["digest"], first["steps"]) for entry in gathered)
    return {"decisions_by_rank": gathered, "ranks_agree": agree}
