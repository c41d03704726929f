"""Dummy weights route by the tokens: the correction bias SGLang's TopK ranks experts by is zeroed,
once per tensor, and nothing else is touched (bench serve's real GLM shape: test_bench_serve.py)."""

import torch
from sglang.srt.layers.moe.topk import TopKConfig

from lynx_sglang.scheduler.dummy_routing import zero_correction_biases


class Gate(torch.nn.Module):
    def __init__(self, experts: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(experts, 8))
        self.e_score_correction_bias = torch.nn.Parameter(torch.rand(experts) + 0.5)


class TopK(torch.nn.Module):  # holds the gate's tensor, as SGLang's TopK does
    def __init__(self, bias):
        super().__init__()
        self.topk_config = TopKConfig(top_k=2, use_grouped_topk=True, topk_group=1, num_expert_group=1,
                                      correction_bias=bias)


class Layer(torch.nn.Module):
    def __init__(self, experts: int, biased: bool):
        super().__init__()
        self.gate = Gate(experts)
        self.topk = TopK(self.gate.e_score_correction_bias if biased else None)
        self.alias = TopK(self.gate.e_score_correction_bias if biased else None)  # the same tensor twice


def test_every_router_bias_is_zeroed_once_and_the_rest_is_left_alone():
    model = torch.nn.Sequential(Layer(6, biased=True), Layer(4, biased=False), Layer(5, biased=True))
    weights = [layer.gate.weight.detach().clone() for layer in model]
    assert zero_correction_biases(model) == 2
    assert torch.count_nonzero(model[0].gate.e_score_correction_bias) == 0
    assert torch.count_nonzero(model[2].topk.topk_config.correction_bias) == 0
    assert torch.count_nonzero(model[1].gate.e_score_correction_bias) == 4  # no router reads it
    assert all(torch.equal(layer.gate.weight, before) for layer, before in zip(model, weights))


def test_a_model_without_biased_routers_is_untouched():
    assert zero_correction_biases(torch.nn.Sequential(Layer(4, biased=False), torch.nn.Linear(3, 3))) == 0
