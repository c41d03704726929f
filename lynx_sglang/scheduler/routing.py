"""The per-layer path of a pruned step: route -> propose (the policy) -> finish (checks, statistics).

Everything here on a decode step is tensor code with static shapes: it is what a CUDA graph captures.
Python branches depend only on the configuration and on shapes; data-dependent trouble is decided on
the device (kernels/bookkeeping/, on the backend kernels/backend.py chooses), and a policy that raises
costs its layer's pruning for the step.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect

import torch

from lynx_sglang.kernels.bookkeeping import Bookkeeping
from lynx_sglang.kernels.routing.batch import real_rows
from lynx_sglang.policies.router import RouterModel, join_shared, split_shared
from lynx_sglang.scheduler.decisions import DecisionDigest
from lynx_sglang.scheduler.introspection import passthrough_reason, renormalizes, router_model
from lynx_sglang.scheduler.log import NoteOnce, Throttle, logger
from lynx_sglang.scheduler.schedule import select_band
from lynx_sglang.scheduler.settings import PolicySettings
from lynx_sglang.scheduler.stats import RoutingStats
from lynx_sglang.scheduler.step import Step


class Router:
    def __init__(self, settings: PolicySettings, bookkeeping: Bookkeeping, stats: RoutingStats,
                 decisions: DecisionDigest | None, note: NoteOnce, resident_of=None):  # fmt: skip
        self.settings = settings
        # layer id -> [E] bool of the experts its cache holds now, or None (expert_cache.py)
        self.resident_of = resident_of or (lambda layer_id: None)
        self.bookkeeping = bookkeeping
        self.stats = stats
        self.decisions = decisions  # tensor parallel only: each rank's decisions, comparable
        self.note = note
        self.routed_layers: set[int] = set()  # the layers the policy routes (the others pass through)
        self.passthrough: dict[int, str] = {}  # layer id -> why its routing is left alone
        self.routers: dict[int, tuple] = {}  # layer id -> router_for's answer
        self.failures = 0
        self._failure_log = Throttle()

    def route(self, output, router_logits, topk_config, layer_id, num_real, dispatch_info, step: Step,
              mask_padding: bool = False):
        """SGLang's top-k `output` of one MoE layer, routed by the policy. num_real: the first rows
        that are real (a 0-dim tensor: SGLang's num_token_non_padded, or the runtime's graph_rows), or
        None when all are. mask_padding: the rows after num_real get id -1 (no expert), as SGLang gives
        them under expert parallelism; else they would keep the stale routing of a graph's padding."""
        router, shared_slots, router_reason = self.router_for(layer_id, topk_config)
        reason = passthrough_reason(output, router_logits, router_reason, dispatch_info)
        if reason is not None:
            self.pass_through(layer_id, reason)
            return output
        self.routed_layers.add(layer_id)
        rows = step.decode_rows if step.mode == "mixed" else output.topk_ids.shape[0]  # a static shape
        if self.settings.keeps_routing(rows):  # nothing to decide: launch nothing
            return output
        if mask_padding:
            padding = ~real_rows(output.topk_ids.shape[0], num_real, output.topk_ids.device)
            output = output._replace(topk_ids=output.topk_ids.masked_fill(padding.unsqueeze(1), -1))
        # Fused shared-expert slots (the last columns) are never the policy's: routed columns only from here
        ids, shared_ids = split_shared(output.topk_ids, shared_slots)
        weights, shared_weights = split_shared(output.topk_weights, shared_slots)
        renormalize = renormalizes(topk_config)
        schedule = self.settings.schedule
        if schedule is not None and layer_id == self.settings.layers[0].layer_id:
            real = None if step.mode == "mixed" else num_real  # num_real counts a mixed batch's prefill rows too
            schedule.count(schedule.band_of(real, rows))
        if step.mode == "mixed":  # the decode rows follow the prefill rows
            start = ids.shape[0] - step.decode_rows
            new_ids, new_weights = self._route_rows(router_logits[start:], ids[start:], weights[start:], None,
                                                    layer_id, renormalize, router)  # fmt: skip
            new_ids, new_weights = torch.cat([ids[:start], new_ids]), torch.cat([weights[:start], new_weights])
        else:
            new_ids, new_weights = self._route_rows(router_logits, ids, weights, num_real, layer_id, renormalize, router)
        return output._replace(topk_ids=join_shared(new_ids, shared_ids),
                               topk_weights=join_shared(new_weights, shared_weights))

    def router_for(self, layer_id: int, topk_config) -> tuple[RouterModel | None, int, str | None]:
        """(the layer's router for its routed columns, its fused shared-expert slots, why it is not
        modelled: then the router is None), read from its TopKConfig once: static per layer."""
        if layer_id not in self.routers:
            router, reason = router_model(topk_config)
            if router is None:
                self.routers[layer_id] = (None, 0, reason)
                return self.routers[layer_id]
            known_kinds = {known.kind for known, _, _ in self.routers.values() if known is not None}
            if not router.is_plain and router.kind not in known_kinds:
                self.note(f"MoE layers with a {router.kind} router: the policy decides on the scores it chooses by "
                          f"(first: layer {layer_id})")
            self.routers[layer_id] = (dataclasses.replace(router, shared_slots=0), router.shared_slots, None)
        return self.routers[layer_id]

    def pass_through(self, layer_id: int, reason: str) -> None:
        """Record that a layer's routing is left alone, and say so once per reason."""
        if layer_id not in self.passthrough:
            if reason not in self.passthrough.values():
                self.note(f"MoE layers with {reason} pass through untouched (first: layer {layer_id})")
            self.passthrough[layer_id] = reason

    def layer_routing(self, layer_id: int) -> dict:
        """How the policy treats a layer, for /lynx/stats: pruned (the policy decides its routing;
        `baseline` decides the identity) or passed through, with the reason."""
        reason = self.passthrough.get(layer_id)
        if reason is None and self.settings.config.policy != "baseline":
            info = next(info for info in self.settings.layers if info.layer_id == layer_id)
            if not self.settings.policy_for(info.num_experts, info.top_k, True).applies_to_layer(layer_id):
                reason = "not in the policy's layers (--lynx-layers)"
        return {"routing": "pruned"} if reason is None else {"routing": "passthrough", "passthrough_reason": reason}

    def _route_rows(self, logits, ids, weights, num_real, layer_id, renormalize, router: RouterModel):
        # The expert kernel takes the experts present in the final ids; only the digest reads a mask.
        want_mask = self.decisions is not None
        try:
            new_ids, new_weights = self._propose(logits, ids, weights, num_real, layer_id, renormalize, router)
            new_ids, new_weights, active = self._finish(logits, ids, weights, new_ids, new_weights, num_real,
                                                        layer_id, want_mask, router)  # fmt: skip
        except Exception as error:  # a policy bug must cost one step's pruning, never the server
            self._log_failure(error, layer_id)
            self.stats.mark_step_fallback()
            fell_back = torch.ones((), dtype=torch.bool, device=logits.device)
            self.stats.record(layer_id, num_real, logits, ids, ids, fell_back)
            new_ids, new_weights, active = ids, weights, None
        if self.decisions is not None:
            self.decisions.record(layer_id, num_real, new_ids, active)
        return new_ids, new_weights

    def _propose(self, logits, ids, weights, num_real, layer_id, renormalize, router):
        """The policy's routing for this layer call, unchecked; the model's own (the same tensors)
        where there is nothing to decide. With a schedule, the band of the call's real rows decides
        which band's routing it is (schedule.py)."""
        if self.settings.config.policy == "baseline":
            return ids, weights
        schedule = self.settings.schedule
        if schedule is None:
            return self._propose_with(self.settings, logits, ids, weights, num_real, layer_id, renormalize, router)
        proposals = [self._propose_with(band, logits, ids, weights, num_real, layer_id, renormalize, router)
                     for band in schedule.children]
        return select_band(schedule.band_of(num_real, ids.shape[0]), proposals)

    def _propose_with(self, settings: PolicySettings, logits, ids, weights, num_real, layer_id, renormalize, router):
        num_experts = logits.shape[1]
        policy = settings.policy_for(num_experts, ids.shape[1], renormalize, None if router.is_plain else router.kind)
        if not policy.applies_to_layer(layer_id):  # the model's routing as it is: nothing to check
            return ids, weights
        options = {"implementation": self.bookkeeping.name} if _takes(type(policy), "implementation") else {}
        if not router.is_plain:
            if not _takes(type(policy), "router"):
                raise TypeError(f"policy {policy.name!r} does not take router= and the layer's router is {router.kind}")
            options["router"] = router
        if getattr(policy, "prefer_resident", False) and _takes(type(policy), "resident"):
            options["resident"] = self.resident_of(layer_id)  # None for a layer without a cache
        decision = policy.select(logits, ids, weights, num_real=num_real, layer_id=layer_id,
                                 budget=settings.budget_for(num_experts), **options)  # fmt: skip
        new_ids, new_weights = decision.topk_ids, decision.topk_weights
        if new_ids.shape != ids.shape or new_weights.shape != weights.shape:
            raise ValueError(f"policy returned shapes {tuple(new_ids.shape)}/{tuple(new_weights.shape)}, "
                             f"expected {tuple(ids.shape)}")
        return new_ids, new_weights

    def _finish(self, logits, ids, weights, new_ids, new_weights, num_real, layer_id, want_mask: bool, router):
        """(final ids, final weights, active mask or None), statistics recorded (their router mass is
        the share of the scores the router chooses by)."""
        table_row, step_fell_back = self.stats.row(layer_id) or (None, None)
        if table_row is not None and not router.is_plain:
            logits = router.choice_logits(logits)
        if new_ids is ids and new_weights is weights:  # the model's routing: nothing to check
            if table_row is None and not want_mask:
                return ids, weights, None
            active = self.bookkeeping.record(table_row, step_fell_back, num_real, logits, ids, ids, mask=want_mask)
            return ids, weights, active
        final_ids, final_weights, _, active = self.bookkeeping.finalize(
            logits, ids, weights, new_ids, new_weights, num_real, mask=want_mask, table_row=table_row,
            step_fell_back=step_fell_back,
        )  # fmt: skip
        return final_ids, final_weights, active

    def _log_failure(self, error: Exception, layer_id) -> None:
        self.failures += 1
        if self._failure_log.ready():
            logger.warning(
                "lynx-sglang: policy %r failed at layer %s (%s: %s); this step keeps the model's routing "
                "(%d failures so far; logged at most once a minute)",
                self.settings.config.policy, layer_id, type(error).__name__, error, self.failures,
            )  # fmt: skip


@functools.cache
def _takes(policy_class, keyword: str) -> bool:
    """Whether the policy's select takes `keyword=` (a third party's override may not)."""
    parameters = inspect.signature(policy_class.select).parameters.values()
    return any(p.name == keyword or p.kind is p.VAR_KEYWORD for p in parameters)
