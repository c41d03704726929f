"""The scheduler's expert caches (scheduler/expert_cache.py) on modules with real weights and SGLang's
own runner config and dispatch types: install, compute per step mode, statistics."""

import pytest
import torch

from lynx_sglang.config import LynxConfig
from lynx_sglang.kernels import fused_moe_active
from lynx_sglang.scheduler.expert_cache import ExpertCaches
from lynx_sglang.scheduler.log import NoteOnce
from lynx_sglang.scheduler.step import Step

E, K, H, I = 8, 2, 16, 24


class MoeLayer(torch.nn.Module):
    """The FusedMoE attributes the cache reads: layer id, expert weights, the runner config."""

    def __init__(self, layer_id: int, seed: int, bias: bool = False):
        super().__init__()
        from sglang.srt.layers.moe.moe_runner import MoeRunnerConfig

        gen = torch.Generator().manual_seed(seed)
        self.layer_id = layer_id
        self.w13_weight = torch.nn.Parameter(torch.randn(E, 2 * I, H, generator=gen) * 0.2, requires_grad=False)
        self.w2_weight = torch.nn.Parameter(torch.randn(E, H, I, generator=gen) * 0.2, requires_grad=False)
        self.w13_weight_bias = torch.nn.Parameter(torch.zeros(E, 2 * I)) if bias else None
        self.moe_runner_config = MoeRunnerConfig(activation="silu")


def dispatched(rows: int, seed: int):
    from sglang.srt.layers.moe.token_dispatcher.standard import StandardDispatchOutput
    from sglang.srt.layers.moe.topk import StandardTopKOutput

    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(rows)]).to(torch.int32)
    weights = torch.softmax(torch.randn(rows, K, generator=gen), -1)
    hidden = torch.randn(rows, H, generator=gen)
    return StandardDispatchOutput(hidden, None, StandardTopKOutput(weights, ids, None))


def installed(spec="25%", policy="lru", layers=None, prefetch=False):
    note = NoteOnce()
    caches = ExpertCaches(LynxConfig(expert_cache=spec, cache_policy=policy, cache_prefetch=prefetch), note)
    layers = layers or [MoeLayer(0, 1), MoeLayer(1, 2)]
    dense = [(layer.w13_weight.data.clone(), layer.w2_weight.data.clone()) for layer in layers]
    caches.install(layers)
    return caches, layers, dense, note


def test_install_leaves_n_experts_per_layer_on_the_device_and_all_on_the_host():
    caches, layers, dense, _ = installed("25%")
    for layer, (w13, w2) in zip(layers, dense):
        assert caches.holds(layer)
        assert layer.w13_weight.shape == (2, 2 * I, H) and layer.w2_weight.shape == (2, H, I)
        cache = caches.layers[id(layer)].cache
        assert torch.equal(cache.host_w13, w13) and torch.equal(cache.host_w2, w2)
        assert layer.w13_weight.data_ptr() == cache.slot_w13.data_ptr()  # the parameter is the slots


def test_every_step_mode_computes_exactly_the_dense_layer_and_only_decode_counts_tokens():
    caches, layers, dense, _ = installed("25%")
    layer, (w13, w2) = layers[0], dense[0]
    for mode, rows in (("extend", 9), ("decode", 1), ("decode", 4), ("mixed", 5)):
        output = dispatched(rows, seed=rows)
        topk = output.topk_output
        got = caches.compute(Step(mode, mode == "decode", rows), layer, output).hidden_states
        want = fused_moe_active(output.hidden_states, w13, w2, topk.topk_ids, topk.topk_weights, implementation="cpu")
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    figures = caches.snapshot()
    assert figures["expert_compute"] == "lynx-cpu" and figures["cached_layers"] == 2
    assert caches.describe() == {"0": "lynx-cpu through the expert cache", "1": "lynx-cpu through the expert cache"}
    first = figures["layers"][0]
    assert first["decode_tokens"] == 5 and first["layer"] == 0 and first["slots"] == 2
    assert first["cache_hits"] + first["cache_misses"] > 0
    assert figures["layers"][1]["cache_hits"] + figures["layers"][1]["cache_misses"] == 0  # layer 1 never ran
    expert_bytes = (2 * I * H + H * I) * 4
    assert first["cache_bytes_copied_per_decode_token"] == pytest.approx(first["decode_misses"] * expert_bytes / 5)
    caches.reset()
    assert caches.snapshot()["cache_misses"] == 0


def test_a_layer_the_kernel_cannot_compute_keeps_every_expert_and_says_so_once(caplog):
    layers = [MoeLayer(0, 1, bias=True), MoeLayer(1, 2, bias=True), MoeLayer(2, 3)]
    with caplog.at_level("INFO", logger="lynx_sglang"):
        caches, layers, _, _ = installed("2", layers=layers)
    assert not caches.holds(layers[0]) and layers[0].w13_weight.shape[0] == E
    assert caches.holds(layers[2])
    notes = [r.getMessage() for r in caplog.records if "keep every expert resident" in r.getMessage()]
    assert len(notes) == 1 and "expert biases" in notes[0] and "(layers 0, 1)" in notes[0]


def test_cache_off_installs_nothing():
    caches = ExpertCaches(LynxConfig(), NoteOnce())
    layer = MoeLayer(0, 1)
    caches.install([layer])
    assert not caches.enabled and not caches.holds(layer) and caches.snapshot() is None
    assert layer.w13_weight.shape[0] == E


def routed(output, ids):
    topk = output.topk_output
    return output._replace(topk_output=topk._replace(topk_ids=torch.tensor(ids, dtype=torch.int32)))


def test_prefetch_learns_which_experts_follow_and_changes_no_output():
    """Layer 0's experts {0, 1} are always followed by layer 1's {6, 7}, {2, 3} by {4, 5}: once seen,
    layer 1's experts are prefetched during layer 0 and every one is used."""
    caches, layers, dense, _ = installed("2", prefetch=True)
    step = Step("decode", True, 1)
    for repeat in range(4):
        for first, second in (([[0, 1]], [[6, 7]]), ([[2, 3]], [[4, 5]])):
            for layer, ids, (w13, w2) in zip(layers, (first, second), dense):
                output = routed(dispatched(1, seed=repeat), ids)
                topk = output.topk_output
                got = caches.compute(step, layer, output).hidden_states
                want = fused_moe_active(output.hidden_states, w13, w2, topk.topk_ids, topk.topk_weights,
                                        implementation="cpu")  # fmt: skip
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        if repeat == 0:
            caches.reset()  # the first round learns (nothing to predict yet); count from here
    figures = caches.snapshot()
    second = figures["layers"][1]
    assert figures["prefetch"] is True and second["prefetched"] == 12 and second["prefetch_used"] == 12
    assert second["prefetch_accuracy"] == 1.0 and figures["prefetch_accuracy"] == 1.0
    assert second["cache_misses"] == 0 and second["cache_hits"] == 12  # every expert was there in time
    assert figures["layers"][0]["prefetched"] == 0 and figures["layers"][0]["prefetch_accuracy"] is None
    expert_bytes = (2 * I * H + H * I) * 4
    assert second["cache_bytes_copied_per_decode_token"] == pytest.approx(12 * expert_bytes / 6)


def test_prefetch_off_reports_no_accuracy():
    caches, layers, _, _ = installed("2")
    caches.compute(Step("decode", True, 1), layers[0], dispatched(1, seed=0))
    figures = caches.snapshot()
    assert figures["prefetch"] is False and figures["prefetch_accuracy"] is None
    assert figures["layers"][0]["prefetch_accuracy"] is None and caches.prefetch is None


def test_the_resident_mask_a_cache_aware_policy_reads_follows_the_cache():
    caches, layers, _, _ = installed("2")
    assert caches.resident_for(7) is None  # not a cached layer
    assert caches.resident_for(0).tolist() == [True, True] + [False] * (E - 2)  # the slots start with 0..N-1
    output = dispatched(1, 5)
    caches.compute(Step("decode", True, 1), layers[0], output)  # its two experts now fill the two slots
    assert torch.nonzero(caches.resident_for(0)).flatten().tolist() == sorted(output.topk_output.topk_ids[0].tolist())


def test_experts_made_in_host_memory_at_load_become_the_host_store_without_a_copy():
    """The create_weights hook (scheduler/hooks.py) makes a layer's parameters under the host device; at
    bind the cache takes them as its host store, so no second copy of every expert exists."""
    caches = ExpertCaches(LynxConfig(expert_cache="2"), NoteOnce())

    def create_weights(method, layer, **kwargs):  # what UnquantizedFusedMoEMethod.create_weights registers
        layer.register_parameter("w13_weight", torch.nn.Parameter(torch.randn(E, 2 * I, H), requires_grad=False))
        layer.register_parameter("w2_weight", torch.nn.Parameter(torch.randn(E, H, I), requires_grad=False))

    layer = MoeLayer(0, 1)
    del layer.w13_weight, layer.w2_weight
    caches.create_on_host(create_weights, None, layer, with_bias=False)
    assert layer.lynx_experts_on_host and layer.w13_weight.device.type == "cpu"
    host_pointer = layer.w13_weight.data_ptr()
    caches.install([layer], "cpu")
    cache = caches.layers[id(layer)].cache
    assert cache.host_w13.data_ptr() == host_pointer and layer.w13_weight.shape[0] == 2
    biased = MoeLayer(1, 2)
    caches.create_on_host(lambda method, layer, **kwargs: None, None, biased, with_bias=True)
    assert not getattr(biased, "lynx_experts_on_host", False)  # the cache never holds a layer with biases


def test_the_routed_scaling_factor_is_applied_where_sglangs_own_compute_applies_it():
    """On CUDA SGLang's Triton runner multiplies a layer's expert sum by the routed scaling factor
    (DeepSeek-V3, GLM-4.5); on a CPU the model multiplies after the layer; fused into the top-k weights,
    neither. lynx's kernel, with or without the cache, follows the same rule."""
    from sglang.srt.layers.moe.moe_runner import MoeRunnerConfig

    from lynx_sglang.scheduler.introspection import moe_output_scale

    layer = MoeLayer(0, 1)
    layer.moe_runner_config = MoeRunnerConfig(activation="silu", routed_scaling_factor=2.5)
    assert moe_output_scale(layer, on_cuda=True) == 2.5 and moe_output_scale(layer, on_cuda=False) == 1.0
    layer.should_fuse_routed_scaling_factor_in_topk = True
    assert moe_output_scale(layer, on_cuda=True) == 1.0
    layer.moe_runner_config = MoeRunnerConfig(activation="silu")
    assert moe_output_scale(MoeLayer(1, 2), on_cuda=True) == 1.0

    caches, layers, dense, _ = installed("2")
    output = dispatched(3, 4)
    cached = caches.layers[id(layers[0])]
    assert cached.scale == 1.0  # a CPU layer: the model scales
    plain = caches.compute(Step("decode", True, 3), layers[0], output).hidden_states.clone()
    cached.scale = 2.5  # as a CUDA layer with GLM-4.5's factor would have it
    scaled = caches.compute(Step("decode", True, 3), layers[0], output).hidden_states
    torch.testing.assert_close(scaled, 2.5 * plain)


def test_dummy_weights_of_host_experts_are_made_on_the_device_with_sglangs_values():
    """`--load-format dummy` with the cache: SGLang's own fill runs once over the other tensors and
    once per host expert tensor on a scratch tensor of the device (here a CPU "device"), whose values
    are copied to the host; each tensor gets the values SGLang's fill gives it without the cache."""
    import copy

    from sglang.srt.model_loader.weight_utils import initialize_dummy_weights

    from lynx_sglang.scheduler.expert_cache import fill_host_experts_on

    model = torch.nn.Module()
    model.attention = torch.nn.Linear(H, H)
    model.experts = MoeLayer(0, 1)
    model.experts.lynx_experts_on_host = True
    expected = copy.deepcopy(model)
    initialize_dummy_weights(expected)
    calls = []

    def counted_fill(tensors, *args, **kwargs):
        calls.append(sorted(tensors.state_dict()))
        return initialize_dummy_weights(tensors, *args, **kwargs)

    fill_host_experts_on(torch.device("cpu"), counted_fill, model)
    assert calls == [["attention.bias", "attention.weight"], ["experts.w13_weight"], ["experts.w2_weight"]]
    for name, tensor in expected.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    assert model.experts.w13_weight.abs().max() <= 1e-3  # SGLang's dummy range, not the layer's init

    plain = ExpertCaches(LynxConfig(), NoteOnce())  # no cache: SGLang's fill, untouched
    plain.fill_dummy_weights(counted_fill, model)
    assert len(calls[-1]) == 4
