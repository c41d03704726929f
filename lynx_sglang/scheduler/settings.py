"""The live settings of the scheduler: a `LynxConfig` turned into the objects a decode step uses.

Policies (one per MoE layer shape: experts, top-k, whether weights renormalise), expert budgets (one
per expert count: device tensors the policy and any captured CUDA graph read, filled in place) and
the latency controller. `apply` validates a new config against the model in full before anything
changes, so a bad switch leaves the old settings in place.
"""

from __future__ import annotations

from lynx_sglang.config import TPOT_WITH_TP, ConfigError, LynxConfig
from lynx_sglang.policies import ExpertBudget
from lynx_sglang.policy_setup import build_policy, check_policy_layers, validate_for_experts, validate_settings
from lynx_sglang.scheduler.expert_cost import measure_ms_per_expert
from lynx_sglang.scheduler.controller import TpotController
from lynx_sglang.scheduler.log import logger
from lynx_sglang.scheduler.lone_row import budget_keeps_lone_row, policy_keeps_lone_row
from lynx_sglang.scheduler.schedule import BandSchedule
from lynx_sglang.scheduler.stats import MoeLayerInfo
from lynx_sglang.setting_values import Budget


class PolicySettings:
    def __init__(self, config: LynxConfig, layers: list[MoeLayerInfo], device, model_name: str, tp_size: int,
                 timing_layer=None, num_layers: int | None = None,
                 moe_layers: tuple[int, ...] | None = None):  # fmt: skip
        self.config = config
        self.layers = layers
        self.num_layers = num_layers  # the decoder's layers, MoE or not, that `layers` may name (None: unknown)
        self.moe_layers = moe_layers  # those with routed experts, one of which `layers` must name (None: unknown)
        self.model_name = model_name
        self.tp_size = tp_size
        self._timing_layer = timing_layer  # (w13, w2, activation) of one MoE layer, for the controller
        self.budgets = {info.num_experts: ExpertBudget.unlimited(info.num_experts, device) for info in layers}
        self.policies: dict[tuple, object] = {}  # by (E, k, renormalize, router kind)
        self.controller: TpotController | None = None
        self.lone_row_kept = False  # a decode call of one row keeps the model's routing (lone_row.py)
        self._device = device
        self.schedule: BandSchedule | None = None  # config.schedule's bands (schedule.py)
        self.apply(config)

    def policy_for(self, num_experts: int, top_k: int, renormalize: bool, router_kind: str | None = None):
        """The policy for a layer of this shape and router kind (RouterModel.kind; None: plain softmax)."""
        key = (num_experts, top_k, renormalize, router_kind)
        policy = self.policies.get(key)
        if policy is None:
            policy = build_policy(self.config, num_experts, top_k, renormalize, self.model_name, router_kind)
            self.policies[key] = policy
        return policy

    def budget_for(self, num_experts: int) -> ExpertBudget:
        return self.budgets[num_experts]

    def signature(self) -> tuple:
        """What a captured CUDA graph holds of the settings (budget values live in device tensors)."""
        bands = None if self.schedule is None else self.schedule.signature()
        return (self.config.policy, tuple(sorted(self.config.params.items())), self.config.layers, bands)

    def keeps_routing(self, rows: int) -> bool:
        """Whether a decode call of `rows` rows (a static shape) keeps the model's routing untouched:
        one row under a setting that cannot change it launches nothing (lone_row.py)."""
        return rows == 1 and self.lone_row_kept

    # ---- at start and on every switch -----------------------------------------------------------
    def apply(self, config: LynxConfig) -> None:
        """Validate `config` against the loaded model, build everything it needs, then swap it in.
        Raises ConfigError and changes nothing when any part is invalid."""
        validate_settings(config)
        for num_experts, top_k in {(info.num_experts, info.top_k) for info in self.layers}:
            validate_for_experts(config, num_experts, top_k, True, self.model_name)
        check_policy_layers(config, self.num_layers, self.moe_layers)
        policies = {key: build_policy(config, *key[:3], self.model_name, key[3]) for key in self.policies}
        controller = self._controller_for(config.parsed_budget)
        policy_changed = (config.policy, config.params) != (self.config.policy, self.config.params)
        self.config = config
        self.policies = policies
        self.controller = controller
        for num_experts, expert_budget in self.budgets.items():
            self._fill_budget(num_experts, expert_budget)
        self.lone_row_kept = all(
            policy_keeps_lone_row(self.policy_for(num_experts, top_k, True), config.expert_cache is not None)
            and budget_keeps_lone_row(config.parsed_budget, self.budgets[num_experts], top_k)
            for num_experts, top_k in {(info.num_experts, info.top_k) for info in self.layers}
        )
        self._apply_schedule(config)
        if policy_changed:
            logger.info("lynx-sglang: policy is now %s %s", config.policy, config.params or "")

    def _apply_schedule(self, config: LynxConfig) -> None:
        """One child settings per band (validated with the parent above, so building them cannot fail
        half-way); the same number of bands refills the schedule in place."""
        if not config.schedule:
            self.schedule = None
            return
        bands = config.bands()
        if self.schedule is None or not self.schedule.refill(bands):
            children = [PolicySettings(band, self.layers, self._device, self.model_name, self.tp_size,
                                       self._timing_layer, self.num_layers, self.moe_layers) for _, band in bands]
            self.schedule = BandSchedule(children, [start for start, _ in bands], self._device)
        self.lone_row_kept = self.lone_row_kept and self.schedule.lone_row_kept
        logger.info("lynx-sglang: %s varies by decode batch size: %s", config.policy,
                    "; ".join(f"from {start} rows {band.params}{' ' + band.budget if band.budget else ''}"
                              for start, band in bands))

    def _controller_for(self, budget: Budget | None) -> TpotController | None:
        if budget is None or budget.kind != "tpot_ms":
            return None
        if self.tp_size > 1:
            raise ConfigError(TPOT_WITH_TP)
        if self.controller is not None and self.controller.target_ms == budget.value:
            return self.controller
        num_experts = max(info.num_experts for info in self.layers)
        info = self.layers[0]
        slope = measure_ms_per_expert(*self._timing_layer, info.num_experts, info.top_k, len(self.layers))
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

    # ---- between steps ----------------------------------------------------------------------------
    def observe_decode_interval(self, interval_ms: float) -> None:
        """Feed the latency controller; a new cap reaches the budgets (and any captured graph) at once."""
        if self.controller is None:
            return
        new_cap = self.controller.observe(interval_ms)
        if new_cap is not None:
            for num_experts, expert_budget in self.budgets.items():
                expert_budget.set_experts(min(new_cap, num_experts))

    def current_cap(self) -> int | None:
        """The experts-per-layer cap in force (None: no cap). Reads a device scalar: control path only."""
        if self.config.parsed_budget is None or not self.budgets:
            return None
        num_experts, budget = max(self.budgets.items())
        cap = int(budget.max_experts.item())
        return cap if cap < num_experts else None
