"""Shared helpers for the policy tests: routing generation, the policy configurations under test,
and slow, obviously-correct reference implementations (python loops over the formulas of
docs/policies.md)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch

from lynx_sglang.policies import MASS_ONE, ExpertBudget, get_policy


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def make_logits(num_rows, num_experts, *, seed, dtype=torch.float32, scale=2.0, skew=0.0, grid=False):
    """Random router logits. `skew` adds a per-expert bias shared by the batch (real routing is
    skewed, which makes active sets small); `grid` puts values on a coarse grid so ties are common."""
    generator = torch.Generator().manual_seed(seed)
    if grid:
        logits = torch.randint(-4, 5, (num_rows, num_experts), generator=generator).float() * 0.5
    else:
        logits = torch.randn(num_rows, num_experts, generator=generator) * scale
    logits = logits + skew * torch.randn(1, num_experts, generator=generator)
    return logits.to(dtype)


def normal_routing(router_logits, top_k, renormalize):
    """The model's normal softmax top-k routing, taking ties by lower expert index."""
    logits32 = router_logits.float()
    probs = torch.softmax(logits32, dim=-1)
    ids = torch.sort(logits32, dim=-1, descending=True, stable=True).indices[:, :top_k]
    weights = probs.gather(1, ids)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return ids.to(torch.int32), weights


def device_for(implementation):
    """Where an implementation's inputs live: the Triton path on the GPU when there is one (else CPU
    tensors under Triton's interpreter), everything else on the CPU."""
    if implementation == "triton" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def moved(device, *values):
    """Tensors (0-dim num_real included) and budgets on `device`; anything else unchanged."""
    out = []
    for value in values:
        if isinstance(value, torch.Tensor):
            value = value.to(device)
        elif isinstance(value, ExpertBudget):
            value = ExpertBudget(value.num_experts, value.max_experts.to(device), value.mass_fraction.to(device))
        out.append(value)
    return out


def policies_under_test(num_experts, top_k, renormalize):
    """(label, policy, kind) for every built-in policy, some with non-default parameters.
    kind: 'identity', 'static' (fewer slots), 'budget' (never above N) or 'free'."""
    budget = max(top_k, num_experts // 4)
    configs = [
        ("baseline", {}, "identity"),
        ("lynx", {}, "free"),
        ("lynx", {"alpha": 3.0, "beta": 4}, "free"),
        ("lynx-v1", {}, "free"),
        ("lynx-v1", {"threshold": 0.1}, "free"),
        ("oea", {}, "free"),
        ("oea", {"k0": 1}, "free"),
        ("budget", {"num_experts_kept": budget}, "budget"),
        ("budget", {"fraction": 0.1}, "budget"),
        ("topn", {"num_experts_kept": budget}, "budget"),
        ("random", {"num_experts_kept": budget, "seed": 3}, "budget"),
        ("coverage", {"mass_fraction": 0.8}, "free"),
        ("coverage", {"mass_fraction": 0.6, "max_dropped_mass": 0.3}, "free"),
    ]
    if top_k >= 2:
        configs.append(("static-topk", {}, "static"))
    out = []
    for name, params, kind in configs:
        policy = get_policy(name, num_experts=num_experts, top_k=top_k, renormalize=renormalize, **params)
        label = name + "".join(f" {key}={value}" for key, value in params.items())
        out.append((label, policy, kind))
    return out


def weight_tolerance(dtype):
    return {torch.float32: 1e-5, torch.float64: 1e-9, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]


# ---------------------------------------------------------------------------------------------
# References: python loops, floats taken exactly from the fp32 logits
# ---------------------------------------------------------------------------------------------
def _rows(router_logits):
    return router_logits.float().tolist()  # fp32 -> python float is exact


def _own_order(row):
    """Experts of one token by its router order; ties: lower index first."""
    return sorted(range(len(row)), key=lambda e: (-row[e], e))


def _voters(router_logits, num_real):
    rows = _rows(router_logits)
    return [t < num_real and all(math.isfinite(x) for x in rows[t]) for t in range(len(rows))]


def reference_top_up(active, rows, voters, top_k, min_active):
    """Shared rule: if fewer than min_active experts, add the experts most voters have in their
    own top-k (ties: lower index)."""
    num_experts = len(rows[0])
    if sum(active) >= min_active:
        return active
    counts = [0] * num_experts
    for t, row in enumerate(rows):
        if voters[t]:
            for e in _own_order(row)[:top_k]:
                counts[e] += 1
    ranked = sorted(range(num_experts), key=lambda e: (-int(active[e]), -counts[e], e))
    active = list(active)
    for e in ranked[:min_active]:
        active[e] = True
    return active


def reference_remap(router_logits, topk_ids, topk_weights, active, num_real, renormalize):
    """Each real token re-takes its top-k over the active experts; padding rows pass through; a
    token whose original experts are all active keeps its routing. Weights in float64."""
    rows = _rows(router_logits)
    top_k = topk_ids.shape[1]
    ids_out = topk_ids.tolist()
    weights_out = topk_weights.double().tolist()
    for t, row in enumerate(rows):
        if t >= num_real:
            continue
        original = ids_out[t]
        if all(active[e] for e in original) and all(math.isfinite(x) for x in row):
            continue
        chosen = [e for e in _own_order(row) if active[e]][:top_k]
        top = max(row[e] for e in chosen)
        exps = [math.exp(row[e] - top) for e in chosen]
        target = 1.0 if renormalize else sum(weights_out[t])
        ids_out[t] = chosen
        weights_out[t] = [x / sum(exps) * target for x in exps]
    return ids_out, weights_out


def _finish(router_logits, topk_ids, topk_weights, active, voters, num_real, renormalize):
    rows = _rows(router_logits)
    active = reference_top_up(active, rows, voters, topk_ids.shape[1], topk_ids.shape[1])
    ids, weights = reference_remap(router_logits, topk_ids, topk_weights, active, num_real, renormalize)
    return ids, weights, active


def reference_own_weight_units(row, top_k):
    """A token's own top-k weights renormalised, in MASS_ONE units, as docs/policies.md defines
    them: exp in double rounded to fp32, scaled by 2**40 and truncated, then integer arithmetic."""
    own = _own_order(row)[:top_k]
    gaps = [np.float32(np.float32(row[e]) - np.float32(row[own[0]])) for e in own]
    fixed = [int(float(np.float32(math.exp(float(g)))) * 2.0**40) for g in gaps]
    return {e: f * MASS_ONE // sum(fixed) for e, f in zip(own, fixed)}


def reference_mass_and_counts(rows, voters, top_k):
    num_experts = len(rows[0])
    mass, counts = [0] * num_experts, [0] * num_experts
    for t, row in enumerate(rows):
        if voters[t]:
            for e, units in reference_own_weight_units(row, top_k).items():
                mass[e] += units
                counts[e] += 1
    return mass, counts


def reference_preference_order(rows, voters, top_k):
    """Experts by routed mass, then vote count (descending), then lower index."""
    mass, counts = reference_mass_and_counts(rows, voters, top_k)
    return sorted(range(len(rows[0])), key=lambda e: (-mass[e], -counts[e], e))


def reference_lynx(router_logits, topk_ids, topk_weights, num_real, alpha, beta, renormalize,
                   tie_break="mass"):
    """Affinity binning, straight from the formulas, in exact rational arithmetic. The bin uses
    fp32 arithmetic for alpha * (L - max L) as the implementation does (the only rounding step).
    Equal scores: the batch's preference order ("mass") or the lower index ("index")."""
    rows = _rows(router_logits)
    num_experts = len(rows[0])
    top_k = topk_ids.shape[1]
    voters = _voters(router_logits, num_real)
    batch = sum(voters)
    bins = {}
    for t, row in enumerate(rows):
        if not voters[t]:
            continue
        top = np.float32(max(row))
        for e in range(num_experts):
            scaled = np.float32(np.float32(alpha) * (np.float32(row[e]) - top))
            bins[t, e] = max(-beta, math.ceil(float(scaled)))
    vote = {key: Fraction(batch) ** q for key, q in bins.items()}
    total = [sum(vote[t, e] for t in range(len(rows)) if voters[t]) for e in range(num_experts)]
    if tie_break == "mass":
        order = reference_preference_order(rows, voters, top_k)
    else:
        order = list(range(num_experts))
    position = {e: i for i, e in enumerate(order)}
    active = [False] * num_experts
    for t in range(len(rows)):
        if not voters[t]:
            continue
        score = {e: bins[t, e] + (total[e] - vote[t, e]) / batch for e in range(num_experts)}
        for e in sorted(range(num_experts), key=lambda e: (-score[e], position[e]))[:top_k]:
            active[e] = True
    return _finish(router_logits, topk_ids, topk_weights, active, voters, num_real, renormalize)


class AmbiguousCase(Exception):
    """A float comparison in the reference sits on its threshold; the case proves nothing."""


def reference_lynx_v1(router_logits, topk_ids, topk_weights, num_real, threshold, renormalize):
    rows = _rows(router_logits)
    num_experts = len(rows[0])
    top_k = topk_ids.shape[1]
    top_half = math.ceil(top_k / 2)
    voters = _voters(router_logits, num_real)
    active = [False] * num_experts
    for t, row in enumerate(rows):
        if not voters[t]:
            continue
        own = _own_order(row)[:top_k]
        exps = [math.exp(row[e] - row[own[0]]) for e in own]
        weights = [x / sum(exps) for x in exps]
        top_mass, bottom_mass = sum(weights[:top_half]), sum(weights[top_half:])
        confidence = (top_mass - bottom_mass) / top_mass
        if abs(confidence - threshold) < 1e-5:
            raise AmbiguousCase
        if confidence > threshold:
            for e in own[:top_half]:
                active[e] = True
    return _finish(router_logits, topk_ids, topk_weights, active, voters, num_real, renormalize)


def reference_oea(router_logits, topk_ids, topk_weights, num_real, k0, renormalize):
    """OEA written as its description: floors, their union, then each token fills its remaining
    k - k0 slots with union experts in its own router order (not via the remap helper's logic)."""
    rows = _rows(router_logits)
    num_experts = len(rows[0])
    top_k = topk_ids.shape[1]
    voters = _voters(router_logits, num_real)
    union = [False] * num_experts
    for t, row in enumerate(rows):
        if voters[t]:
            for e in _own_order(row)[:k0]:
                union[e] = True
    union = reference_top_up(union, rows, voters, top_k, top_k)
    ids_out = topk_ids.tolist()
    weights_out = topk_weights.double().tolist()
    for t, row in enumerate(rows):
        if t >= num_real or all(union[e] for e in ids_out[t]):
            continue  # padding, or nothing to move
        own = _own_order(row)
        floor = own[:k0] if voters[t] else []
        fill = [e for e in own if union[e] and e not in floor][: top_k - len(floor)]
        chosen = [e for e in own if e in floor or e in fill]  # router order
        top = max(row[e] for e in chosen)
        exps = [math.exp(row[e] - top) for e in chosen]
        target = 1.0 if renormalize else sum(weights_out[t])
        ids_out[t] = chosen
        weights_out[t] = [x / sum(exps) * target for x in exps]
    return ids_out, weights_out, union


# ---------------------------------------------------------------------------------------------
# A third-party policy, as a user would write one (used by the registry tests and the docs)
# ---------------------------------------------------------------------------------------------
from lynx_sglang.policies import Policy, ids_to_mask  # noqa: E402


class FirstExpertsPolicy(Policy):
    """Keep only the experts 0..n-1 (topped up to k by the base class)."""

    name = "first-experts"

    def __init__(self, num_experts, top_k, renormalize=True, layers=None, *, n=2):
        super().__init__(num_experts, top_k, renormalize, layers)
        self.n = self.check_int("n", n, 1, num_experts)

    def decide(self, ctx):
        return torch.arange(self.num_experts, device=ctx.logits.device) < self.n


class NotAPolicy:
    pass
