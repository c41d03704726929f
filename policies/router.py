"""The router model: how a layer's router turns logits into choices and weights, for every policy.

A policy decides on a batch's router logits as if the router were softmax top-k (its bins, ratios and
masses are differences of logits: log(p_e / p_top1)). Other routers rank experts by another score:

    score     s_e = softmax(L)_e, sigmoid(L_e) or sqrt(softplus(L_e))     (the expert's weight, unnormalised)
    choice    c_e = s_e + b_e        b: the correction bias, used only to choose (DeepSeek-V3, GLM-4.5, Kimi-K2)
    groups    only experts in the token's best `topk_group` of `num_expert_group` groups are chosen

`RouterModel.choice_logits` maps the logits to log-choices, log(c_e), so that a policy's gaps are
ratios of the scores the router ranks by and its top-k is the router's choice; experts outside the
token's groups sit below every expert inside them (a remap prefers the token's groups and leaves them
only when the batch computes too few of their experts: docs/policies.md says why). The policy runs on
those log-choices unchanged, in torch or fused. `RouterModel.weights` then gives each remapped row the
weights the model's router gives its new experts: the scores without the bias, renormalised as the
model renormalises (to 1, or to the row's original top-k mass, which also carries a routed scaling
factor applied in the top-k). Rows the policy left alone keep the model's weights bit for bit. Shared
experts in fused top-k slots (the last columns) are never the policy's: `split_shared` and
`join_shared` take them out and put them back unchanged.

Static-shape tensor code only (the decode step is captured into CUDA graphs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .remap import sanitize_logits, target_weight_sum


SCORING_FUNCTIONS = ("softmax", "sigmoid", "sqrtsoftplus")
# log of the smallest normal fp32: where a choice score c <= 0 (a negative bias) sits in log space
_LOG_FLOOR = float(torch.log(torch.tensor(torch.finfo(torch.float32).tiny)))
# How far below a token's worst in-group expert its out-of-group experts start (in log-choice units:
# e**-64 is below every bin and ratio a policy takes, so they never win a vote the groups exclude)
_OUT_OF_GROUP_MARGIN = 64.0


@dataclass(frozen=True, eq=False)
class RouterModel:
    """One MoE layer's router, as SGLang's TopKConfig describes it.

    scoring: "softmax", "sigmoid" or "sqrtsoftplus".  correction_bias: [E] tensor or None.
    num_expert_group / topk_group: the group limit (None: none).  shared_slots: fused shared-expert
    top-k slots at the end of the model's ids (they are never pruned)."""

    scoring: str = "softmax"
    correction_bias: torch.Tensor | None = None
    num_expert_group: int | None = None
    topk_group: int | None = None
    shared_slots: int = 0

    def __post_init__(self):
        if self.scoring not in SCORING_FUNCTIONS:
            raise ValueError(f"router scoring {self.scoring!r} is not modelled (allowed: {', '.join(SCORING_FUNCTIONS)})")
        if (self.num_expert_group is None) != (self.topk_group is None):
            raise ValueError("a grouped router needs both num_expert_group and topk_group")
        if self.num_expert_group is not None and not 1 <= self.topk_group <= self.num_expert_group:
            raise ValueError(f"topk_group must be 1..num_expert_group ({self.num_expert_group}), got {self.topk_group}")
        if self.shared_slots < 0:
            raise ValueError(f"shared_slots must be >= 0, got {self.shared_slots}")

    @property
    def grouped(self) -> bool:
        """Whether the group limit excludes any group (a limit of all groups is no limit)."""
        return self.num_expert_group is not None and self.topk_group < self.num_expert_group

    @property
    def is_plain(self) -> bool:
        """Softmax top-k without bias, groups or shared slots: the policies' own model."""
        return self.scoring == "softmax" and self.correction_bias is None and not self.grouped and not self.shared_slots

    @property
    def kind(self) -> str:
        """A short name: softmax, sigmoid, biased-sigmoid, grouped-softmax, biased-grouped-sigmoid, ..."""
        parts = ("biased-" if self.correction_bias is not None else "") + ("grouped-" if self.grouped else "")
        return parts + self.scoring

    def check(self, num_experts: int) -> None:
        """Raise ValueError when the model does not fit a layer of `num_experts` routed experts."""
        bias = self.correction_bias
        if bias is not None and (bias.dim() != 1 or bias.shape[0] != num_experts):
            raise ValueError(f"correction bias of shape {tuple(bias.shape)} does not fit {num_experts} experts")
        if self.num_expert_group is not None and num_experts % self.num_expert_group:
            raise ValueError(f"{num_experts} experts do not split into {self.num_expert_group} groups")

    # ---- choosing -------------------------------------------------------------------------
    def scores(self, logits32: torch.Tensor) -> torch.Tensor:
        """[T, E] fp32 s: the router's unnormalised weights."""
        if self.scoring == "softmax":
            return torch.softmax(logits32, dim=-1)
        if self.scoring == "sigmoid":
            return torch.sigmoid(logits32)
        return torch.nn.functional.softplus(logits32).sqrt()

    def choice_logits(self, router_logits: torch.Tensor) -> torch.Tensor:
        """[T, E] fp32 log-choices (see the module docstring). Rows with a NaN or infinite logit are
        returned as they are, so the policy still sees them as non-finite and never lets them vote."""
        clean, row_is_finite = sanitize_logits(router_logits)
        biased_scores = None
        if self.scoring == "softmax" and self.correction_bias is None:
            choice = clean  # log(softmax) differs by a per-row constant: the same gaps, bit for bit
        elif self.scoring == "sigmoid" and self.correction_bias is None:
            choice = torch.nn.functional.logsigmoid(clean)
        else:
            biased_scores = self.scores(clean)
            if self.correction_bias is not None:
                biased_scores = biased_scores + self.correction_bias.float().unsqueeze(0)
            choice = torch.log(biased_scores).nan_to_num(nan=_LOG_FLOOR, neginf=_LOG_FLOOR).clamp_min(_LOG_FLOOR)
        if self.grouped:
            inside = self.group_mask(choice, biased_scores if self.correction_bias is not None else None)
            # out-of-group experts, in their order, start the margin below the row's lowest expert
            low, high = torch.aminmax(choice, dim=-1, keepdim=True)
            span = high - low
            choice = torch.where(inside, choice, choice - (span + _OUT_OF_GROUP_MARGIN))
        return torch.where(row_is_finite.unsqueeze(1), choice, router_logits.float())

    def group_mask(self, choice: torch.Tensor, biased_scores: torch.Tensor | None = None) -> torch.Tensor:
        """[T, E] bool: the experts in each token's chosen groups, as SGLang picks them: a group's score
        is its best score, or with a bias the sum of its two best biased scores (`biased_scores`, s + b);
        `choice`, any order-keeping map of the scores, serves for the best one. Equal groups: torch.topk's
        order, as SGLang's."""
        num_rows, num_experts = choice.shape
        groups, per_group = self.num_expert_group, num_experts // self.num_expert_group
        if biased_scores is not None:
            group_scores = biased_scores.view(num_rows, groups, per_group).topk(min(2, per_group), dim=-1).values.sum(dim=-1)
        else:
            group_scores = choice.view(num_rows, groups, per_group).amax(dim=-1)
        chosen = torch.topk(group_scores, self.topk_group, dim=-1, sorted=False).indices
        mask = torch.zeros(num_rows, groups, dtype=torch.bool, device=choice.device).scatter_(1, chosen, True)
        return mask.unsqueeze(-1).expand(num_rows, groups, per_group).reshape(num_rows, num_experts)

    # ---- weighting -------------------------------------------------------------------------
    def weight_logits(self, router_logits: torch.Tensor) -> torch.Tensor:
        """log s (fp32, finite), elementwise: a softmax over some of a row's entries is those experts'
        scores renormalised, without underflowing to 0/0 when all of them are tiny."""
        clean, _ = sanitize_logits(router_logits)
        if self.scoring == "softmax":
            return clean
        if self.scoring == "sigmoid":
            return torch.nn.functional.logsigmoid(clean)
        softplus = torch.nn.functional.softplus(clean)
        return 0.5 * torch.log(softplus).nan_to_num(neginf=_LOG_FLOOR).clamp_min(_LOG_FLOOR)

    def weights(self, router_logits: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                new_ids: torch.Tensor, new_weights: torch.Tensor, renormalize: bool) -> torch.Tensor:
        """[T, k] the model's weights for `new_ids` (in new_weights' dtype): a row whose ids are the
        model's keeps the model's weights; a remapped row gets its new experts' scores renormalised to 1
        (renormalize) or to the row's original top-k mass. Filler slots (a slot repeating the row's
        first id: fewer active experts than slots) keep weight 0."""
        num_rows, slots = new_ids.shape
        ids = new_ids.long().clamp(0, router_logits.shape[1] - 1)
        filler = torch.zeros(num_rows, slots, dtype=torch.bool, device=ids.device)
        filler[:, 1:] = ids[:, 1:] == ids[:, :1]
        # weight_logits is elementwise: gather the k entries first
        picked = self.weight_logits(router_logits.gather(1, ids)).masked_fill(filler, float("-inf"))
        remapped = torch.nan_to_num(torch.softmax(picked, dim=-1), nan=0.0) * target_weight_sum(topk_weights, renormalize)
        unchanged = (new_ids == topk_ids.to(new_ids.dtype)).all(dim=-1, keepdim=True)
        return torch.where(unchanged, topk_weights.to(new_weights.dtype), remapped.to(new_weights.dtype))


def router_family(kind: str | None) -> str:
    """"softmax" (scores normalised over the experts) or "sigmoid" (each expert scored alone: sigmoid and
    sqrt-softplus, biased or grouped) for a `RouterModel.kind`; None is plain softmax. Per-model defaults
    of the policies depend on it: per-expert scores are flatter than a softmax's (docs/policies.md)."""
    if kind is None:
        return "softmax"
    parts = kind.split("-") if isinstance(kind, str) else [None]
    if parts[-1] not in SCORING_FUNCTIONS or any(part not in ("biased", "grouped") for part in parts[:-1]):
        raise ValueError(f"unknown router kind {kind!r} (allowed: [biased-][grouped-]softmax, sigmoid or sqrtsoftplus)")
    return "softmax" if parts[-1] == "softmax" else "sigmoid"


def split_shared(tensor: torch.Tensor, shared_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the routed columns, the fused shared-expert columns) of a [T, k + shared] top-k tensor; without
    shared slots the routed columns are `tensor` itself (callers tell an unchanged routing by identity)."""
    routed = tensor.shape[1] - shared_slots
    return (tensor if shared_slots == 0 else tensor[:, :routed]), tensor[:, routed:]


def join_shared(routed: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """The inverse of split_shared (no copy when there are no shared slots)."""
    return routed if shared.shape[1] == 0 else torch.cat([routed, shared.to(routed.dtype)], dim=1)

