"""`--lynx-expert-cache`: each MoE layer's experts in host memory, N of them resident on the device.

At load, each unquantized MoE layer's expert weights are made in host memory (`create_on_host`,
pinned where CUDA is available), so the device never holds every expert: a model larger than the
device can start, `--load-format dummy` included (on CUDA its random values are made on the
device and copied over: `fill_dummy_weights`). At bind, every MoE layer lynx's kernel can compute
gets an `ExpertCache` (kernels/cache/) whose host store is those weights (no copy), and the layer's
`w13_weight` / `w2_weight` become the N slots on the device. From then on every forward of the
layer (prefill, decode, mixed, any policy) computes through the cache: fetch the missing experts,
then the active-expert kernel through the expert->slot map; more experts than slots stream through in
rounds. Layers the kernel cannot compute keep every expert resident (said once in the log).

With `--lynx-cache-prefetch`, each cached layer's call first prefetches the next one's likely
experts (cache_prefetch.py).

Statistics per layer, in a [layers, 7] float64 table on the device, added with tensor ops only (graph
safe): hits and misses (distinct experts per layer call resident at its start, or copied), experts
prefetched for the call and how many it used, and for decode steps the misses, prefetched experts and
real rows, from which bytes copied per decode token follow.
"""

from __future__ import annotations

import torch

from lynx_sglang.config import LynxConfig
from lynx_sglang.kernels.cache import ExpertCache, moe_through_cache
from lynx_sglang.scheduler.cache_prefetch import CachePrefetch
from lynx_sglang.scheduler.introspection import active_kernel_unsupported, moe_output_scale
from lynx_sglang.scheduler.log import NoteOnce, logger
from lynx_sglang.scheduler.step import Step
from lynx_sglang.setting_values import expert_cache_slots

FIELDS = ("hits", "misses", "prefetched", "prefetch_used", "decode_misses", "decode_prefetched", "decode_tokens")


class CachedLayer:
    def __init__(self, layer, cache: ExpertCache, row: int):
        self.layer_id = layer.layer_id
        self.cache = cache
        self.row = row
        self.scale = moe_output_scale(layer, cache.slot_w13.is_cuda)  # as SGLang's compute scales its output
        self.activation = layer.moe_runner_config.activation
        self.tp_size = getattr(layer, "moe_tp_size", 1)  # bytes are reported for the whole expert


class ExpertCaches:
    """The MoE layers' expert caches, their compute and their statistics."""

    def __init__(self, config: LynxConfig, note: NoteOnce):
        self.spec = config.expert_cache
        self.policy = config.cache_policy
        self.prefetch_on = config.cache_prefetch
        self.prefetch: CachePrefetch | None = None
        self.implementation = "triton" if config.kernel == "triton" else "auto"
        self.note = note
        self.layers: dict[int, CachedLayer] = {}  # by id of the FusedMoE module
        self.by_layer_id: dict[int, CachedLayer] = {}
        self.table: torch.Tensor | None = None
        self.compute_name: str | None = None  # lynx-triton or lynx-cpu, known once installed

    @property
    def enabled(self) -> bool:
        return self.spec is not None

    def create_on_host(self, create, method, layer, *args, **kwargs):
        """UnquantizedFusedMoEMethod.create_weights with the cache on: the layer's parameters are made in
        host memory, pinned where CUDA is available (a layer the cache cannot hold moves to the device
        at bind). Layers with biases or expert parallelism, which it never holds, are made as usual."""
        if not self.enabled or kwargs.get("with_bias") or getattr(layer, "moe_ep_size", 1) > 1:
            return create(method, layer, *args, **kwargs)
        before = {name for name, _ in layer.named_parameters(recurse=False)}
        with torch.device("cpu"):
            result = create(method, layer, *args, **kwargs)
        for name, param in layer.named_parameters(recurse=False):
            if name not in before and torch.cuda.is_available():
                param.data = param.data.pin_memory()
        layer.lynx_experts_on_host = True
        return result

    def fill_dummy_weights(self, fill, model, *args, **kwargs) -> None:
        """SGLang's `initialize_dummy_weights` (`--load-format dummy`) with experts made on the host of a CUDA
        machine: their random values are made on the device (fill_host_experts_on), since a CPU
        generator fills serially: minutes for a large model's experts."""
        if not self.enabled or not torch.cuda.is_available():
            return fill(model, *args, **kwargs)
        return fill_host_experts_on(torch.device("cuda", torch.cuda.current_device()), fill, model, *args, **kwargs)

    def install(self, moe_layers: list, device=None) -> None:
        """Give each computable layer an expert cache, its N slots on `device` (default: where its
        weights are); a layer made on the host that the cache cannot hold moves to the device."""
        if not self.enabled:
            return
        cached, resident, placed = [], {}, 0
        for layer in moe_layers:
            on_host = getattr(layer, "lynx_experts_on_host", False)
            target = torch.device(device) if device is not None else layer.w13_weight.device
            reason = cache_unsupported(layer, target.type == "cuda")
            if reason:
                resident.setdefault(reason, []).append(str(layer.layer_id))
                if on_host:
                    for param in layer.parameters(recurse=False):
                        param.data = param.data.to(target)
                continue
            placed += on_host
            num_slots = expert_cache_slots(self.spec, layer.w13_weight.shape[0])
            with torch.no_grad():
                cache = ExpertCache(layer.w13_weight.data, layer.w2_weight.data, num_slots, self.policy, device=target)
                # The layer's parameters become the slots: the device now holds N experts of the layer.
                layer.w13_weight.data = cache.slot_w13
                layer.w2_weight.data = cache.slot_w2
            self.layers[id(layer)] = self.by_layer_id[layer.layer_id] = CachedLayer(layer, cache, len(cached))
            cached.append(cache)
        for reason, layer_ids in resident.items():
            self.note(f"MoE layers with {reason} keep every expert resident, the expert cache needs lynx's kernel "
                      f"(layers {', '.join(layer_ids)})")
        if not cached:
            self.note("--lynx-expert-cache: no MoE layer of this model can be cached; every expert stays resident "
                      "and nothing is offloaded (/lynx/stats: cached_layers 0)")
            return
        self.table = torch.zeros(len(cached), len(FIELDS), dtype=torch.float64, device=cached[0].slot_w13.device)
        first = cached[0]
        if self.prefetch_on:
            self.prefetch = CachePrefetch(cached, self.implementation)
        if first.slot_w13.is_cuda:  # hand the freed expert memory back, so that SGLang's KV pool sizing sees it
            torch.cuda.empty_cache()
        on_triton = self.implementation == "triton" or first.slot_w13.is_cuda
        self.compute_name = "lynx-triton" if on_triton else "lynx-cpu"
        host_mb = sum(c.num_experts * c.expert_bytes for c in cached) / 1e6
        logger.info("lynx-sglang: expert cache: %d of %d experts resident per MoE layer on %d layers (policy %s); "
                    "%.1f MB of experts in %shost memory (%d layers made there at load), %.1f MB in device slots; "
                    "computed by %s", first.num_slots, first.num_experts, len(cached), self.policy, host_mb,
                    "pinned " if first.host_w13.is_pinned() else "", placed,
                    sum(c.num_slots * c.expert_bytes for c in cached) / 1e6, self.compute_name)  # fmt: skip

    def holds(self, layer) -> bool:
        return id(layer) in self.layers

    def resident_for(self, layer_id: int) -> torch.Tensor | None:
        """[E] bool on the device: the experts layer `layer_id` holds now, for a policy with
        prefer_resident (None: the layer is not cached). Called by the routing, before the layer's call:
        the layer's prefetch is joined first, so the mask includes what it brought in."""
        cached = self.by_layer_id.get(layer_id)
        if cached is None:
            return None
        if self.prefetch is not None:
            self.prefetch.join(cached.row)
        return cached.cache.resident

    def compute(self, step: Step | None, layer, dispatch_output):
        """The layer's output through its cache, as SGLang's combine input."""
        from sglang.srt.layers.moe.token_dispatcher import StandardCombineInput

        cached = self.layers[id(layer)]
        topk = dispatch_output.topk_output
        if self.prefetch is not None:
            self.prefetch.before_call(cached.row, topk.topk_ids)
        result = moe_through_cache(cached.cache, dispatch_output.hidden_states, topk.topk_ids, topk.topk_weights,
                                   cached.activation, implementation=self.implementation)  # fmt: skip
        row = self.table[cached.row]
        hits = result.hits.to(torch.float64)
        misses = result.needed.to(torch.float64) - hits
        prefetched = result.prefetched.to(torch.float64)
        figures = [hits, misses, prefetched, result.prefetch_used.to(torch.float64)]
        if step is not None and step.mode == "decode":  # static per step: a captured graph adds the same way
            figures += [misses, prefetched, (topk.topk_ids >= 0).any(dim=1).sum().to(torch.float64)]
        row[: len(figures)].add_(torch.stack(figures))
        return StandardCombineInput(hidden_states=result.out if cached.scale == 1.0 else result.out.mul_(cached.scale))

    def describe(self) -> dict[str, str]:
        """What computes each cached layer (every forward), as GET /lynx/policy shows it."""
        return {str(c.layer_id): f"{self.compute_name} through the expert cache" for c in self.layers.values()}

    def reset(self) -> None:
        if self.table is not None:
            self.table.zero_()

    def snapshot(self) -> dict | None:
        """Overall and per-layer figures (a host read: readers only); None when the cache is off."""
        if not self.enabled:
            return None
        rows = self.table.cpu().tolist() if self.table is not None else []
        layers = []
        for cached in sorted(self.layers.values(), key=lambda c: c.layer_id):
            raw = dict(zip(FIELDS, rows[cached.row]))
            copies = raw["decode_misses"] + raw["decode_prefetched"]
            tokens = raw["decode_tokens"]
            layers.append({
                "layer": cached.layer_id, "slots": cached.cache.num_slots, "num_experts": cached.cache.num_experts,
                "cache_hits": int(raw["hits"]), "cache_misses": int(raw["misses"]),
                "prefetched": int(raw["prefetched"]), "prefetch_used": int(raw["prefetch_used"]),
                "decode_misses": int(raw["decode_misses"]), "decode_prefetched": int(raw["decode_prefetched"]),
                "decode_tokens": int(tokens),
                "cache_bytes_copied_per_decode_token": copies * cached.cache.expert_bytes * cached.tp_size / tokens
                if tokens else 0.0,
                "prefetch_accuracy": prefetch_accuracy(self.prefetch_on, raw["prefetch_used"], raw["prefetched"]),
            })  # fmt: skip
        return {"spec": self.spec, "policy": self.policy, "expert_compute": self.compute_name,
                **cache_totals(layers, self.prefetch_on)}  # fmt: skip


def cache_totals(layers: list[dict], prefetch_on: bool) -> dict:
    """The model-wide cache figures of per-layer ones."""
    return {
        "cached_layers": len(layers),
        "cache_hits": sum(layer["cache_hits"] for layer in layers),
        "cache_misses": sum(layer["cache_misses"] for layer in layers),
        "cache_bytes_copied_per_decode_token": float(sum(layer["cache_bytes_copied_per_decode_token"] for layer in layers)),
        "prefetch": prefetch_on,
        "prefetch_accuracy": prefetch_accuracy(prefetch_on, sum(layer["prefetch_used"] for layer in layers),
                                               sum(layer["prefetched"] for layer in layers)),  # fmt: skip
        "layers": layers,
    }


def prefetch_accuracy(prefetch_on: bool, used: float, prefetched: float) -> float | None:
    """The share of prefetched experts the calls used; None without prefetch, or before any."""
    return used / prefetched if prefetch_on and prefetched else None


def cache_unsupported(layer, on_cuda: bool | None = None) -> str | None:
    """Why a layer keeps every expert resident (None: the cache can hold it)."""
    reason = active_kernel_unsupported(layer, getattr(layer, "quant_method", None), on_cuda)
    if reason:
        return reason
    if getattr(layer, "num_fused_shared_experts", 0):
        return "fused shared experts (serve with --disable-shared-experts-fusion to cache the routed ones)"
    return None


class _TensorsAsModel:
    """A set of named tensors that SGLang's dummy fill takes for a model (it reads only state_dict())."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.tensors


def fill_host_experts_on(device: torch.device, fill, model, *args, **kwargs) -> None:
    """Run SGLang's dummy fill over `model`, making the values of the experts made in host memory on
    `device`, one tensor at a time, then copying them to the host. The fill seeds each tensor alike,
    so a host tensor gets the values the same tensor gets on the device without the cache."""
    on_host: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules():
        if getattr(module, "lynx_experts_on_host", False):
            for name, param in module.named_parameters(recurse=False):
                on_host[f"{prefix}.{name}" if prefix else name] = param.data
    fill(_TensorsAsModel({name: t for name, t in model.state_dict().items() if name not in on_host}), *args, **kwargs)
    for name, host in on_host.items():
        scratch = torch.empty_like(host, device=device)
        fill(_TensorsAsModel({name: scratch}), *args, **kwargs)
        host.copy_(scratch)
        del scratch  # before the next is made: one scratch tensor on the device at a time
