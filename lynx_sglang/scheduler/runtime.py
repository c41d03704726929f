"""lynx-sglang inside SGLang's scheduler process: one `LynxRuntime`, which wires the parts.

SGLang calls into it through the hooks in `hooks.py`: `bind` once the model is loaded,
`begin_step`/`end_step` around every forward, `route` for every MoE layer's top-k, `compute_experts`
for every MoE layer's expert compute, and `handle` for control requests between steps.

    settings.py        the config as policies, budgets and the latency controller; the live switch
    routing.py         per MoE layer: the policy's decision, checks and statistics (tensor code)
    expert_compute.py  lynx's active-expert kernel or SGLang's compute
    expert_cache.py    --lynx-expert-cache: experts in host memory, N per layer in device slots
    stats.py, decisions.py, accounting.py   device-side figures, tensor-parallel digests, step counts
    control.py         the control requests
"""

from __future__ import annotations

import torch

from lynx_sglang.config import LynxConfig
from lynx_sglang.scheduler import control
from lynx_sglang.scheduler.accounting import DecodeStepTimer, SilentFallbackReport, StepCounts
from lynx_sglang.kernels.backend import fused_backend
from lynx_sglang.kernels.bookkeeping import bookkeeping_named
from lynx_sglang.scheduler.compute_table import table_for
from lynx_sglang.scheduler.decisions import DecisionDigest
from lynx_sglang.scheduler.expert_cache import ExpertCaches
from lynx_sglang.scheduler.expert_compute import ExpertCompute
from lynx_sglang.scheduler.introspection import read_model, replays_decode_graphs
from lynx_sglang.scheduler.log import NoteOnce, logger
from lynx_sglang.scheduler.routing import Router
from lynx_sglang.scheduler.settings import PolicySettings
from lynx_sglang.scheduler.stats import MoeLayerInfo, RoutingStats
from lynx_sglang.scheduler.step import Step


class LynxRuntime:
    def __init__(self, config: LynxConfig):
        self.initial_config = config
        self.bound = False
        self.note = NoteOnce()
        self.counts = StepCounts()
        self.timer = DecodeStepTimer(lag=0)
        self.fallback_report = SilentFallbackReport()
        self.caches = ExpertCaches(config, self.note)
        self.model_runner = None  # set at bind; its decode graphs are captured after the model loads
        self.router_kind: str | None = None  # the first modelled router's (what GET /lynx/policy shows)
        # SGLang capturing this model's decode graphs (not a draft model's): their padding rows are the
        # graph's last, past graph_rows, where the MoE input is the rank's own batch
        self.capturing_decode_graphs = False
        self.local_moe_input = True

    @property
    def config(self) -> LynxConfig:
        return self.settings.config if self.bound else self.initial_config

    def bind(self, model_runner) -> None:
        if self.bound or getattr(model_runner, "is_draft_worker", False):
            return
        model = read_model(model_runner)
        self.model_runner = model_runner
        if model is None:
            logger.info("lynx-sglang: the model has no MoE layers; nothing to prune")
            return
        self.bind_layers(model.layers, model.device, model.name, tp_size=model.tp_size,
                         timing_layer=model.timing_layer, num_layers=model.num_layers,
                         moe_layers=model.moe_layers)  # fmt: skip
        self.timer = DecodeStepTimer(lag=1 if model.overlapped_steps else 0)
        self.router_kind, self.local_moe_input = model.router_kind, model.local_moe_input
        for layer_id, reason in sorted(model.passthrough.items()):
            self.router.pass_through(layer_id, reason)
        self.caches.install(list(model.moe_modules), model.device)

    def bind_layers(self, layers: list[MoeLayerInfo], device, model_name: str, *, tp_size: int = 1,
                    timing_layer=None, backend: str | None = None, num_layers: int | None = None,
                    moe_layers: tuple[int, ...] | None = None) -> None:  # fmt: skip
        """Everything `bind` learns from the model; separate so that tests can bind plain tensors.
        backend: where the policy's decision and the per-layer work run (None: `fused_backend`, the one
        place it is chosen); resolved here once and handed to the router and the statistics."""
        device = torch.device(device)
        self.bookkeeping = bookkeeping_named(backend or fused_backend(device))
        self.settings = PolicySettings(self.initial_config, layers, device, model_name, tp_size, timing_layer,
                                       num_layers, moe_layers)
        # --lynx-stats off tracks no layer: the step counts and fallbacks remain
        self.stats = RoutingStats(layers if self.initial_config.stats else [], device, self.bookkeeping)
        self.decisions = DecisionDigest(layers, device) if tp_size > 1 else None
        # a table that does not parse stops the server here, naming its file
        self.expert_compute = ExpertCompute(self.settings, self.note, table_for(self.initial_config.kernel, device))
        self.router = Router(self.settings, self.bookkeeping, self.stats, self.decisions, self.note,
                             self.caches.resident_for)  # fmt: skip
        # The real rows of the decode graph replayed next (its batch before padding): SGLang hands
        # select_experts that count only under expert parallelism, and a graph's padding rows hold stale
        # tokens that would vote and be computed. Written before every replay, read inside the graphs.
        self.graph_rows = torch.zeros((), dtype=torch.int64, device=device)
        self.graph_signature = self.settings.signature()
        self.graph_lone_row_kept = self.settings.lone_row_kept
        self.bound = True
        info, config = layers[0], self.initial_config
        logger.info(
            "lynx-sglang: policy %s%s on %d MoE layers (%d experts, top-%d, %.2f MB per expert); "
            "kernel %s; budget %s; bookkeeping %s",
            config.policy, f" {config.params}" if config.params else "", len(layers), info.num_experts,
            info.top_k, info.expert_bytes / 1e6, config.kernel, config.budget or "none", self.bookkeeping.name,
        )  # fmt: skip

    # ---- per step (host side, around every forward) -------------------------------------------
    def begin_step(self, step: Step) -> None:
        self.counts.begin(step, self.settings.config.policy)
        interval_ms = self.timer.begin(step.prune)
        if interval_ms is not None:
            self.settings.observe_decode_interval(interval_ms)

    def end_step(self, step: Step, routed_rows: int | None) -> None:
        """routed_rows: the rows the routing saw (introspection.routed_rows); None: the forward failed."""
        if not step.prune:
            return
        if not self.router.routed_layers:  # every MoE layer passed through: nothing was routed
            self.counts.not_routed(self.settings.config.policy)
            return
        if self.settings.keeps_routing(routed_rows):  # the routing hook launched nothing (None: failed)
            for record in (self.stats, self.decisions):
                if record is not None:
                    record.add_lone_row_step(self.router.routed_layers)
            if self.settings.schedule is not None:
                self.settings.schedule.count_lone_row()
        self.stats.end_step()
        self.fallback_report.after_step(self.stats)

    def decode_graphs_prune(self) -> bool | None:
        """Whether decode's captured graphs route with the current settings; None without such graphs."""
        if not replays_decode_graphs(self.model_runner):
            return None
        return self.settings.signature() == self.graph_signature

    def graphs_hold_current_settings(self, batch_size: int) -> bool:
        """Whether the captured graphs may replay a batch: not after a switch of policy (the graphs hold
        the captured one), nor for one row when the lone-row rule changed (its graph routes or not)."""
        if self.settings.signature() != self.graph_signature:
            return False
        return batch_size != 1 or self.settings.lone_row_kept == self.graph_lone_row_kept

    def load_graph_rows(self, rows: int) -> None:
        """Before a decode graph replays: its real rows, where the captured routing reads them (no host sync)."""
        self.graph_rows.fill_(rows)

    # ---- per MoE layer --------------------------------------------------------------------------
    def route(self, output, router_logits, topk_config, layer_id, num_real, dispatch_info, step: Step):
        # Without SGLang's count of real rows (it gives one under expert parallelism), a decode graph's
        # padding rows are dropped by the count written before each replay.
        mask_padding = (self.capturing_decode_graphs and self.local_moe_input and num_real is None
                        and step.mode == "decode")
        if mask_padding:
            num_real = self.graph_rows
        return self.router.route(output, router_logits, topk_config, layer_id, num_real, dispatch_info, step,
                                 mask_padding)

    def policies_in_effect(self) -> list:
        """The running policy as the first MoE layer's routing builds it (its shape and router kind):
        one, or under a schedule one per band (the top-level setting then decides no step)."""
        info = self.settings.layers[0]
        settings = [self.settings] if self.settings.schedule is None else self.settings.schedule.children
        return [each.policy_for(info.num_experts, info.top_k, True, self.router_kind) for each in settings]

    def compute_experts(self, step: Step, layer, method, dispatch_output, sglang_compute):
        if self.caches.holds(layer):  # every forward of a cached layer reads its experts through the cache
            return self.caches.compute(step, layer, dispatch_output)
        routed = getattr(layer, "layer_id", None) in self.router.routed_layers
        return self.expert_compute.run(step, layer, method, dispatch_output, sglang_compute, routed)

    # ---- control requests (between steps) -----------------------------------------------------
    def handle(self, request: dict) -> dict:
        return control.handle(self, request)
