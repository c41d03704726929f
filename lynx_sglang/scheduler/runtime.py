"""lynx-sglang's state inside SGLang's scheduler process: policy, budget, stats, controller, kernel.

One `LynxRuntime` per scheduler process. SGLang calls into it through the hooks in `hooks.py`:
`bind` once the model is loaded, `begin_step`/`end_step` around every forward, `route` for every
MoE layer's top-k, `expert_kernel` for every MoE layer's expert compute, and `handle` for control
requests (policy switch, stats) that arrive between steps through SGLang's RPC channel.

Everything `route` does on a decode step is tensor code with static shapes: it is what a CUDA graph
captures. Python-side branches depend only on the configuration and on shapes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch

from lynx_sglang.config import TPOT_WITH_TP, Budget, ConfigError, LynxConfig
from lynx_sglang.policies import ExpertBudget, ids_to_mask
from lynx_sglang.kernels.routing.batch import real_rows
from lynx_sglang.policy_setup import MoeShape, build_policy, validate_for_model
from lynx_sglang.scheduler.calibration import calibrate_ms_per_expert
from lynx_sglang.scheduler.controller import TpotController
from lynx_sglang.scheduler.decisions import DecisionDigest
from lynx_sglang.scheduler.step import Step
from lynx_sglang.scheduler.stats import MoeLayerInfo, RoutingStats

logger = logging.getLogger("lynx_sglang")

FAILURE_LOG_INTERVAL_S = 60.0


class LynxRuntime:
    def __init__(self, config: LynxConfig):
        self.config = config
        self.bound = False
        self.layers: list[MoeLayerInfo] = []
        self.model_name = ""
        self.device: torch.device | None = None
        self.stats: RoutingStats | None = None
        self.decisions: DecisionDigest | None = None  # tensor parallel only: each rank's decisions, comparable
        self.budgets: dict[int, ExpertBudget] = {}  # by number of experts
        self.policies: dict[tuple, object] = {}  # by (E, k, renormalize)
        self.controller: TpotController | None = None
        self.decode_steps = 0
        self.passthrough_steps = 0
        self.steps_by_policy: dict[str, int] = {}
        self.steps_by_mode: dict[str, int] = {}
        self.tp_size = 1
        self.active_masks: dict[int, torch.Tensor] = {}  # layer id -> experts the kernel computes
        self.graph_signature: tuple | None = None
        self.failures = 0
        self._last_failure_log = -FAILURE_LOG_INTERVAL_S
        self._last_fallback_check = -FAILURE_LOG_INTERVAL_S
        self._fallbacks_reported = 0
        self._notes: set[str] = set()
        self._last_decode_start: float | None = None
        self._calibration = None
        self._kernels: dict[int, ActiveExpertCompute | None] = {}  # by id of the MoE layer
        self.compute_by_layer: dict[int, str] = {}  # what computed each layer's pruned decode steps

    # ---- binding to the loaded model ----------------------------------------------------------
    def bind(self, model_runner) -> None:
        if self.bound or getattr(model_runner, "is_draft_worker", False):
            return
        from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE

        moe_layers = [m for m in model_runner.model.modules() if isinstance(m, FusedMoE)]
        if not moe_layers:
            logger.info("lynx-sglang: the model has no MoE layers; nothing to prune")
            return
        self._note_unsupported_routers(model_runner.model)
        from sglang.srt.runtime_context import get_parallel

        self.tp_size = get_parallel().tp_size
        hf_config = model_runner.model_config.hf_config
        first = moe_layers[0]
        top_k = getattr(hf_config, "num_experts_per_tok", None)  # some MoE layers leave top_k to TopK
        self.bind_layers(
            [_layer_info(m, top_k) for m in moe_layers], first.w13_weight.device,
            getattr(hf_config, "_name_or_path", "") or str(model_runner.model_config.model_path),
            (first.w13_weight, first.w2_weight, first.moe_runner_config.activation),
        )  # fmt: skip

    def _note_unsupported_routers(self, model) -> None:
        """Say at start which MoE layers the policy will leave alone (the routing hook re-checks each
        call; layers whose top-k never reaches select_experts are only visible here)."""
        from sglang.srt.layers.moe.topk import TopK, TopKOutputFormat

        for module in model.modules():
            if not isinstance(module, TopK):
                continue
            config = module.topk_config
            if config.output_format not in (None, TopKOutputFormat.STANDARD):
                reason = f"the {config.output_format.name} top-k format"
            else:
                reason = router_passthrough_reason(config)
            if reason:
                self._note_once(f"MoE layers with {reason} pass through untouched (first: layer {module.layer_id})")

    def bind_layers(self, layers: list[MoeLayerInfo], device, model_name: str, calibration=None) -> None:
        """Everything `bind` learns from the model; separate so that tests can bind plain tensors."""
        self.layers = layers
        self.device = torch.device(device)
        self.model_name = model_name
        self.stats = RoutingStats(layers if self.config.stats else [], self.device)
        self.decisions = DecisionDigest(layers, self.device) if self.tp_size > 1 else None
        # On CUDA the bookkeeping after a decision (checks, fallback, mask, statistics) is one Triton
        # launch per layer call, not more than 60 small torch ops (each a kernel under the step's CUDA graph).
        self.fused_bookkeeping = self.stats.fused  # the same condition: CUDA, and Triton available
        # On a CPU the same work is one call into the routing op's C++ library: the torch ops cost more
        # than the policy's decision there (lynx-sglang bench bookkeeping).
        self.cpu_bookkeeping = self.stats.cpu_op
        self._calibration = calibration  # (w13, w2, activation) of one MoE layer, for the controller
        for info in layers:
            self.budget_for(info.num_experts)
        self.apply_config(self.config)
        self.graph_signature = self.policy_signature()
        self.bound = True
        info = layers[0]
        logger.info(
            "lynx-sglang: policy %s%s on %d MoE layers (%d experts, top-%d, %.2f MB per expert); "
            "kernel %s; budget %s",
            self.config.policy, f" {self.config.params}" if self.config.params else "", len(self.layers),
            info.num_experts, info.top_k, info.expert_bytes / 1e6, self.config.kernel, self.config.budget or "none",
        )  # fmt: skip

    def budget_for(self, num_experts: int) -> ExpertBudget:
        budget = self.budgets.get(num_experts)
        if budget is None:
            budget = ExpertBudget.unlimited(num_experts, self.device)
            self.budgets[num_experts] = budget
            self._fill_budget(num_experts, budget)
        return budget

    def policy_for(self, num_experts: int, top_k: int, renormalize: bool):
        key = (num_experts, top_k, renormalize)
        policy = self.policies.get(key)
        if policy is None:
            policy = build_policy(self.config, num_experts, top_k, renormalize, self.model_name)
            self.policies[key] = policy
        return policy

    # ---- configuration, at start and on every switch ------------------------------------------
    def apply_config(self, config: LynxConfig) -> None:
        """Validate `config` against the loaded model, build everything it needs, then swap it in.
        Raises ConfigError and changes nothing when any part is invalid."""
        shapes = {(info.num_experts, info.top_k) for info in self.layers}
        for num_experts, top_k in shapes:
            validate_for_model(config, _shape(num_experts, top_k, self.model_name))
        policies = {
            key: build_policy(config, key[0], key[1], key[2], self.model_name) for key in self.policies
        }
        budget = config.parsed_budget
        controller = self._controller_for(budget)
        signature_changed = (config.policy, config.params) != (self.config.policy, self.config.params)
        self.config = config
        self.policies = policies
        self.controller = controller
        for num_experts, expert_budget in self.budgets.items():
            self._fill_budget(num_experts, expert_budget)
        if signature_changed:
            logger.info("lynx-sglang: policy is now %s %s", config.policy, config.params or "")

    def _controller_for(self, budget: Budget | None) -> TpotController | None:
        if budget is None or budget.kind != "tpot_ms":
            return None
        if self.tp_size > 1:
            raise ConfigError(TPOT_WITH_TP)
        if self.controller is not None and self.controller.target_ms == budget.value:
            return self.controller
        num_experts = max(info.num_experts for info in self.layers)
        info = self.layers[0]
        slope = calibrate_ms_per_expert(*self._calibration, info.num_experts, info.top_k, len(self.layers))
        return TpotController(budget.value, num_experts, slope, min_experts=1)

    def _fill_budget(self, num_experts: int, expert_budget: ExpertBudget) -> None:
        """Write the configured cap into the device tensors the policy (and any captured graph) reads."""
        budget = self.config.parsed_budget
        expert_budget.set_unlimited()
        if budget is None:
            return
        if budget.kind == "experts":
            expert_budget.set_experts(min(int(budget.value), num_experts))
        elif budget.kind == "fraction":
            expert_budget.set_fraction(budget.value)
        elif budget.kind == "mass":
            expert_budget.set_mass(budget.value)
        else:  # tpot_ms: the controller's current cap (all experts until it has one)
            cap = self.controller.experts if self.controller is not None else num_experts
            expert_budget.set_experts(min(cap, num_experts))

    def policy_signature(self) -> tuple:
        return (self.config.policy, tuple(sorted(self.config.params.items())), self.config.layers)

    # ---- per step (host side, around every forward) -------------------------------------------
    def begin_step(self, step: Step) -> None:
        self.steps_by_mode[step.mode] = self.steps_by_mode.get(step.mode, 0) + 1
        if not step.prune:
            self.passthrough_steps += 1
            self._last_decode_start = None  # a prefill in between is not part of a decode interval
            return
        self.decode_steps += 1
        self.steps_by_policy[self.config.policy] = self.steps_by_policy.get(self.config.policy, 0) + 1
        now = time.perf_counter()
        if self.controller is not None and self._last_decode_start is not None:
            new_cap = self.controller.observe((now - self._last_decode_start) * 1000.0)
            if new_cap is not None:
                for num_experts, expert_budget in self.budgets.items():
                    expert_budget.set_experts(min(new_cap, num_experts))
        self._last_decode_start = now

    def end_step(self, step: Step) -> None:
        self.active_masks.clear()
        if step.prune and self.stats is not None:
            self.stats.end_step()
            self._report_silent_fallbacks()

    def _report_silent_fallbacks(self) -> None:
        """Fallbacks decided by tensor ops (out-of-range ids, non-finite weights) are only counted on
        the device; once a minute, one host read of the count tells the log whether there were any."""
        now = time.monotonic()
        if now - self._last_fallback_check < FAILURE_LOG_INTERVAL_S:
            return
        self._last_fallback_check = now
        total = int(self.stats.fallback_steps.item())
        if total > self._fallbacks_reported:
            logger.warning(
                "lynx-sglang: %d decode step(s) fell back to the model's routing in some layer since the last report "
                "(invalid policy output: an expert id out of range or a non-finite weight); see fallback_steps in /lynx/stats",
                total - self._fallbacks_reported,
            )  # fmt: skip
        self._fallbacks_reported = total

    # ---- per MoE layer (tensor code: captured by CUDA graphs) ---------------------------------
    def route(self, output, router_logits, topk_config, layer_id, num_token_non_padded, dispatch_info, step):
        reason = passthrough_reason(output, router_logits, topk_config, dispatch_info)
        if reason is not None:
            self._note_once(f"MoE layers with {reason} pass through untouched (first: layer {layer_id})")
            return output
        ids, weights = output.topk_ids, output.topk_weights
        if step.mode == "mixed":
            start = ids.shape[0] - step.decode_rows
            new_ids, new_weights = self._route_rows(
                router_logits[start:], ids[start:], weights[start:], None, layer_id, topk_config
            )
            return output._replace(topk_ids=torch.cat([ids[:start], new_ids]),
                                   topk_weights=torch.cat([weights[:start], new_weights]))
        new_ids, new_weights = self._route_rows(router_logits, ids, weights, num_token_non_padded, layer_id,
                                                topk_config)
        return output._replace(topk_ids=new_ids, topk_weights=new_weights)

    def _route_rows(self, logits, ids, weights, num_real, layer_id, topk_config):
        """num_real: the first rows that are real (SGLang's num_token_non_padded: a 0-dim tensor), or
        None when all are."""
        try:
            new_ids, new_weights = self._propose(logits, ids, weights, num_real, layer_id, topk_config)
            new_ids, new_weights, active = self._finish(logits, ids, weights, new_ids, new_weights, num_real,
                                                        layer_id)  # fmt: skip
        except Exception as error:  # a policy bug must cost one step's pruning, never the server
            self._log_failure(error, layer_id)
            if self.stats is not None:
                self.stats.mark_step_fallback()
                self.stats.record(layer_id, num_real, logits, ids, ids, torch.ones((), dtype=torch.bool,
                                                                                   device=logits.device))
            new_ids, new_weights, active = ids, weights, None
        if self.decisions is not None:
            self.decisions.record(layer_id, num_real, new_ids, active)
        if active is not None:
            self.active_masks[layer_id] = active
        return new_ids, new_weights

    def _propose(self, logits, ids, weights, num_real, layer_id, topk_config):
        """The policy's routing for this layer call, unchecked; the model's own (the same tensors)
        where there is nothing to decide."""
        if self.config.policy == "baseline":
            return ids, weights
        num_experts = logits.shape[1]
        renormalize = topk_config.renormalize and not _scales_weights(topk_config)
        policy = self.policy_for(num_experts, ids.shape[1], renormalize)
        if not policy.applies_to_layer(layer_id):  # the model's routing as it is: nothing to check
            return ids, weights
        decision = policy.select(logits, ids, weights, num_real=num_real, layer_id=layer_id,
                                 budget=self.budget_for(num_experts))
        new_ids, new_weights = decision.topk_ids, decision.topk_weights
        if new_ids.shape != ids.shape or new_weights.shape != weights.shape:
            raise ValueError(f"policy returned shapes {tuple(new_ids.shape)}/{tuple(new_weights.shape)}, "
                             f"expected {tuple(ids.shape)}")
        return new_ids, new_weights

    def _finish(self, logits, ids, weights, new_ids, new_weights, num_real, layer_id):
        """(final ids, final weights, active mask or None), statistics recorded. Data-dependent problems
        are handled on the device (no host sync): a decision with ids out of range or non-finite
        weights in a real row makes the whole layer keep the model's own routing for this step (a
        fallback, counted); a row with non-finite logits is the policy's to route (docs/policies.md)."""
        num_experts = logits.shape[1]
        want_mask = self.uses_active_kernel()
        stats_row = self.stats.row(layer_id) if self.stats is not None else None
        table_row, step_fell_back = stats_row if stats_row is not None else (None, None)
        if new_ids is ids and new_weights is weights:  # the model's routing: nothing to check
            if self.fused_bookkeeping or self.cpu_bookkeeping:
                if self.fused_bookkeeping:
                    from lynx_sglang.kernels.bookkeeping.triton_launch import record_triton as record
                else:
                    from lynx_sglang.kernels.bookkeeping.cpu import record_cpu as record

                active = None
                if stats_row is not None or want_mask:  # the figures and the mask in one launch
                    active = record(table_row, step_fell_back, num_real, logits, ids, ids, mask=want_mask)
                return ids, weights, active
            if stats_row is not None:
                self.stats.record(layer_id, num_real, logits, ids, ids)
            real = real_rows(logits.shape[0], num_real, logits.device)
            return ids, weights, ids_to_mask(ids, real, num_experts) if want_mask else None
        if self.fused_bookkeeping or self.cpu_bookkeeping:
            if self.fused_bookkeeping:
                from lynx_sglang.kernels.bookkeeping.triton_launch import finalize_triton as finalize
            else:
                from lynx_sglang.kernels.bookkeeping.cpu import finalize_cpu as finalize

            final_ids, final_weights, _, active = finalize(
                logits, ids, weights, new_ids, new_weights, num_real, mask=want_mask, table_row=table_row,
                step_fell_back=step_fell_back,
            )  # fmt: skip
            return final_ids, final_weights, active
        real = real_rows(logits.shape[0], num_real, logits.device)
        new_ids, new_weights = new_ids.to(ids.dtype), new_weights.to(weights.dtype)
        bad_ids = ((new_ids < 0) | (new_ids >= num_experts)).any(dim=-1)
        bad_weights = ~torch.isfinite(new_weights.float()).all(dim=-1)
        fell_back = ((bad_ids | bad_weights) & real).any()
        final_ids, final_weights = torch.where(fell_back, ids, new_ids), torch.where(fell_back, weights, new_weights)
        if stats_row is not None:
            self.stats.record(layer_id, num_real, logits, ids, final_ids, fell_back)
        return final_ids, final_weights, ids_to_mask(final_ids, real, num_experts) if want_mask else None

    def expert_kernel(self, layer, method):
        """The active-expert compute for this MoE layer on pruned decode steps, or None for SGLang's
        own (decided once per layer; an unsupported layer says why, once, in the log)."""
        key = id(layer)
        if key not in self._kernels:
            reason = active_kernel_unsupported(layer, method)
            if reason:
                self._note_once(f"MoE layers with {reason} keep SGLang's expert compute (the policy still applies)")
            compute = None if reason else ActiveExpertCompute(self.config.kernel, layer.w13_weight.is_cuda)
            self._kernels[key] = compute
            self.compute_by_layer[layer.layer_id] = f"sglang ({reason})" if reason else compute.name
        return self._kernels[key]

    def uses_active_kernel(self) -> bool:
        kernel = self.config.kernel
        return kernel != "sglang" and not (kernel == "auto" and self.config.policy == "baseline")

    def _note_once(self, message: str) -> None:
        if message not in self._notes:
            self._notes.add(message)
            logger.info("lynx-sglang: %s", message)

    def _log_failure(self, error: Exception, layer_id) -> None:
        self.failures += 1
        now = time.monotonic()
        if now - self._last_failure_log >= FAILURE_LOG_INTERVAL_S:
            self._last_failure_log = now
            logger.warning(
                "lynx-sglang: policy %r failed at layer %s (%s: %s); this step keeps the model's routing "
                "(%d failures so far; logged at most once a minute)",
                self.config.policy, layer_id, type(error).__name__, error, self.failures,
            )  # fmt: skip

    # ---- control requests (between steps) -----------------------------------------------------
    def handle(self, request: dict) -> dict:
        op = request.get("op")
        if op == "get_policy":
            return self.policy_state()
        if op == "set_policy":
            self.apply_config(self.switched_config(request))
            return self.policy_state()
        if op == "get_stats":
            return self.stats_snapshot()
        if op == "reset_stats":
            self.reset_stats()
            return self.stats_snapshot()
        raise ConfigError(f"unknown control operation {op!r}")

    def switched_config(self, request: dict) -> LynxConfig:
        """The config a POST /lynx/policy asks for. A new policy starts from the given params; the
        same policy merges them into its current ones. An absent budget keeps the current one."""
        policy = request.get("policy") or self.config.policy
        params = request.get("params") or {}
        if not isinstance(params, dict):
            raise ConfigError(f"params: {params!r} must be an object of parameter values")
        if policy == self.config.policy:
            params = {**self.config.params, **params}
        budget = request["budget"] if "budget" in request else self.config.budget
        if policy == "baseline" and "budget" not in request:
            budget = None  # baseline takes no budget; switching to it drops the old one
        parsed = Budget.parse(budget)
        return replace(self.config, policy=policy, params=params, budget=None if parsed is None else str(parsed))

    def policy_state(self) -> dict:
        state = self.config.public_view()
        state["controller"] = None if self.controller is None else self.controller.state()
        state["budget_experts"] = self._current_cap()
        state["cuda_graphs_replay_pruning"] = self.policy_signature() == self.graph_signature
        state["expert_compute"] = {str(layer): name for layer, name in sorted(self.compute_by_layer.items())}
        return state

    def _current_cap(self) -> int | None:
        """The experts-per-layer cap in force (None: no cap). Reads a device scalar: control path only."""
        if self.config.parsed_budget is None or not self.budgets:
            return None
        num_experts, budget = max(self.budgets.items())
        cap = int(budget.max_experts.item())
        return cap if cap < num_experts else None

    def stats_snapshot(self) -> dict:
        figures = self.stats.snapshot() if self.stats is not None else {"fallback_steps": 0, "layers": []}
        fallback_steps = figures.pop("fallback_steps")
        return {
            "policy": self.config.policy,
            "params": self.config.params,
            "budget": self.config.budget,
            "budget_experts": self._current_cap(),
            "kernel": self.config.kernel,
            "decode_steps": self.decode_steps,
            "pruned_steps": self.decode_steps - fallback_steps,
            "passthrough_steps": self.passthrough_steps,
            "fallback_steps": fallback_steps,
            "policy_failures": self.failures,
            "steps_by_policy": dict(self.steps_by_policy),
            "steps_by_mode": dict(self.steps_by_mode),
            "stats_enabled": self.config.stats,
            "controller": None if self.controller is None else self.controller.state(),
            **figures,
        }

    def reset_stats(self) -> None:
        self.decode_steps = self.passthrough_steps = self.failures = self._fallbacks_reported = 0
        self.steps_by_policy.clear()
        self.steps_by_mode.clear()
        for record in (self.stats, self.decisions):
            if record is not None:
                record.reset()


def passthrough_reason(output, router_logits, topk_config, dispatch_info) -> str | None:
    """Why a layer's routing is left alone (None: the policy applies). Static per layer."""
    if type(output).__name__ != "StandardTopKOutput":
        return f"the {type(output).__name__} top-k format"
    reason = router_passthrough_reason(topk_config)
    if reason:
        return reason
    if dispatch_info is not None:
        return "expert-location dispatch (EPLB)"
    if router_logits is None or router_logits.dim() != 2 or router_logits.shape[0] != output.topk_ids.shape[0]:
        return "router logits that do not match the top-k rows"
    return None


def router_passthrough_reason(topk_config) -> str | None:
    """Routers the policies do not model: they assume plain softmax top-k routing."""
    if topk_config.use_grouped_topk:
        return "a grouped router"
    if topk_config.correction_bias is not None:
        return "a biased router"
    if topk_config.scoring_func != "softmax":
        return f"{topk_config.scoring_func} scoring"
    if topk_config.custom_routing_function is not None:
        return "a custom routing function"
    if topk_config.num_shared_topk_slots:
        return "shared-expert top-k slots"
    return None


def _scales_weights(topk_config) -> bool:
    factor = topk_config.routed_scaling_factor
    return bool(topk_config.apply_routed_scaling_factor_on_output and factor not in (None, 1.0))


def _layer_info(layer, model_top_k: int | None) -> MoeLayerInfo:
    per_rank = layer.w13_weight[0].numel() * layer.w13_weight.element_size()
    per_rank += layer.w2_weight[0].numel() * layer.w2_weight.element_size()
    routed = layer.num_experts - layer.num_fused_shared_experts
    return MoeLayerInfo(layer.layer_id, routed, layer.top_k or model_top_k, per_rank * layer.moe_tp_size)


def _shape(num_experts: int, top_k: int, model_name: str) -> MoeShape:
    return MoeShape(num_experts, top_k, 0, True, model_name)


class ActiveExpertCompute:
    """Runs a decode step's experts through lynx_sglang.kernels over the policy's active set."""

    def __init__(self, kernel: str, on_cuda: bool):
        self.force_triton = kernel == "triton"
        self.name = "lynx-triton" if on_cuda or self.force_triton else "lynx-cpu"

    def __call__(self, layer, dispatch_output, active_mask):
        from sglang.srt.layers.moe.token_dispatcher import StandardCombineInput

        from lynx_sglang import kernels

        hidden = dispatch_output.hidden_states
        topk = dispatch_output.topk_output
        compute = kernels.fused_moe_active_triton if self.force_triton else kernels.fused_moe_active
        out = compute(hidden, layer.w13_weight, layer.w2_weight, topk.topk_ids, topk.topk_weights, active_mask,
                      layer.moe_runner_config.activation)
        return StandardCombineInput(hidden_states=out)


def active_kernel_unsupported(layer, method) -> str | None:
    """Why lynx's kernel cannot compute this layer (None: it can). Only unquantized gated experts
    with SiLU/GELU, no biases and no expert parallelism are supported."""
    config = layer.moe_runner_config
    weight = getattr(layer, "w13_weight", None)
    checks = (
        (weight is None or weight.dtype not in (torch.float32, torch.float16, torch.bfloat16),
         "quantized or non-float expert weights"),
        (getattr(layer, "moe_ep_size", 1) > 1, "expert parallelism"),
        (config.activation not in ("silu", "gelu") or not config.is_gated, f"activation {config.activation}"),
        (getattr(layer, "w13_weight_bias", None) is not None, "expert biases"),
        (config.apply_router_weight_on_input, "router weights applied on the input"),
        (config.gemm1_alpha is not None or config.gemm1_clamp_limit is not None, "clamped SwiGLU"),
        (getattr(method, "w13_swiglu_interleaved", False), "interleaved gate/up weights"),
        (config.no_combine, "no-combine output"),
        (getattr(layer, "use_intel_amx_backend", False), "the Intel AMX backend"),
        (getattr(method, "_aiter_runner", None) is not None, "the aiter MoE backend"),
        (config.routed_scaling_factor not in (None, 1.0) and not getattr(
            layer, "should_fuse_routed_scaling_factor_in_topk", False), "a routed scaling factor"),
        (weight is not None and weight.is_cuda and _runner_backend(method) not in (None, "triton"),
         f"the {_runner_backend(method)} MoE backend"),
    )  # fmt: skip
    return next((reason for failed, reason in checks if failed), None)


def _runner_backend(method) -> str | None:
    runner = getattr(method, "runner", None)
    backend = getattr(runner, "runner_backend", None)
    return None if backend is None else str(getattr(backend, "value", backend)).lower()
