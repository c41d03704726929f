"""One call of the active-expert MoE: its arguments, checked once for every implementation."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .align import computed_pairs_mask

ACTIVATIONS = ("silu", "gelu")  # gelu: the exact (erf) form, as the stock fused MoE's gelu_and_mul
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass(frozen=True)
class MoeCall:
    """hidden [T, H]; w13 [E, 2I, H], gate rows then up rows (SGLang's FusedMoE layout); w2 [E, H, I];
    topk_ids [T, k] int32/int64, a negative id (SGLang's padding) contributes 0; topk_weights [T, k];
    active_mask [E] bool or None ("the experts present in topk_ids"): a choice that points at an
    inactive expert contributes 0 and that expert's weights are never read; activation "silu" or
    "gelu", applied to the gate then multiplied by up; max_active_experts, a static bound on the
    experts holding pairs (tightens the CUDA grid); out, a preallocated [T, H] output, every element
    written; expert_slots [E] int32/int64 or None: the weights are held in N slots (an expert cache,
    kernels/cache/), w13 [N, 2I, H] and w2 [N, H, I], and expert e's are w13[expert_slots[e]]; an
    expert whose slot is -1 (not resident) contributes 0. Without it N = E. Shapes and dtypes only
    are checked: free under CUDA graphs."""

    hidden: torch.Tensor
    w13: torch.Tensor
    w2: torch.Tensor
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    active_mask: torch.Tensor | None = None
    activation: str = "silu"
    max_active_experts: int | None = None
    out: torch.Tensor | None = None
    expert_slots: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for problem in self._problems():
            raise ValueError(f"fused_moe_active: {problem}")

    def _problems(self):
        hidden, w13, w2, ids, weights = self.hidden, self.w13, self.w2, self.topk_ids, self.topk_weights
        if hidden.dim() != 2 or w13.dim() != 3 or w2.dim() != 3:
            yield f"hidden must be [T, H], w13 [E, 2I, H], w2 [E, H, I]; got {_shapes(hidden, w13, w2)}"
            return
        (num_tokens, hidden_size), (num_slots, two_i, _) = hidden.shape, w13.shape
        if two_i % 2 or w13.shape[2] != hidden_size or tuple(w2.shape) != (num_slots, hidden_size, two_i // 2):
            yield f"hidden [T, H], w13 [E, 2I, H] and w2 [E, H, I] disagree: {_shapes(hidden, w13, w2)}"
        slots = self.expert_slots
        if slots is not None and (slots.dim() != 1 or slots.dtype not in (torch.int32, torch.int64)):
            yield f"expert_slots must be [E] int32/int64; got {_shapes(slots)} {slots.dtype}"
            return
        num_experts = self.num_experts
        if hidden.dtype not in FLOAT_DTYPES or w13.dtype != hidden.dtype or w2.dtype != hidden.dtype:
            yield f"hidden, w13 and w2 must share one float dtype; got {hidden.dtype}, {w13.dtype}, {w2.dtype}"
        if ids.dim() != 2 or ids.shape[0] != num_tokens or tuple(weights.shape) != tuple(ids.shape):
            yield f"topk_ids and topk_weights must be [T={num_tokens}, k]; got {_shapes(ids, weights)}"
        if ids.dtype not in (torch.int32, torch.int64) or not weights.dtype.is_floating_point:
            yield f"topk_ids must be int32/int64 and topk_weights float; got {ids.dtype}, {weights.dtype}"
        if self.active_mask is not None and (self.active_mask.dtype != torch.bool
                                             or tuple(self.active_mask.shape) != (num_experts,)):
            yield f"active_mask must be [E={num_experts}] bool; got {_shapes(self.active_mask)} {self.active_mask.dtype}"
        if self.activation not in ACTIVATIONS:
            yield f"activation must be one of {ACTIVATIONS}, got {self.activation!r}"
        if self.max_active_experts is not None and (not isinstance(self.max_active_experts, int)
                                                    or self.max_active_experts < 0):
            yield f"max_active_experts must be an int >= 0 or None, got {self.max_active_experts!r}"
        optional = (self.active_mask, self.out, self.expert_slots)
        tensors = [hidden, w13, w2, ids, weights, *(t for t in optional if t is not None)]
        if len({t.device for t in tensors}) > 1:
            yield f"every tensor must be on one device; got {sorted({str(t.device) for t in tensors})}"
        out = self.out
        if out is not None and (tuple(out.shape) != (num_tokens, hidden_size) or out.dtype != hidden.dtype
                                or out.stride(1) != 1):
            yield f"out must be [T, H] in hidden's dtype with unit stride along H; got {_shapes(out)} {out.dtype}"

    @property
    def num_experts(self) -> int:
        """E, the experts topk_ids name (the rows of w13 unless the weights are held in slots)."""
        return self.w13.shape[0] if self.expert_slots is None else self.expert_slots.shape[0]

    def through_slots(self) -> "MoeCall":
        """The same call on slot ids: each pair's expert becomes its slot (-1 where the expert is not
        resident, inactive, negative or out of range), so every implementation computes slots as it
        computes experts. A gather and two selects with static shapes: graph safe."""
        if self.expert_slots is None:
            return self
        ids = self.topk_ids
        computed = computed_pairs_mask(ids, self.num_experts, self.active_mask).reshape(ids.shape)
        slot = self.expert_slots.to(ids.dtype)[ids.clamp(0, self.num_experts - 1).long()]
        slot_ids = torch.where(computed, slot, torch.full_like(ids, -1))
        return replace(self, topk_ids=slot_ids, active_mask=None, expert_slots=None)

    @property
    def intermediate_size(self) -> int:
        return self.w13.shape[1] // 2

    def output(self) -> torch.Tensor:
        """`out`, or a new [T, H] tensor in hidden's dtype."""
        if self.out is not None:
            return self.out
        return torch.empty(self.hidden.shape[0], self.w2.shape[1], dtype=self.hidden.dtype, device=self.hidden.device)


def _shapes(*tensors: torch.Tensor) -> str:
    return ", ".join(str(list(t.shape)) for t in tensors)
