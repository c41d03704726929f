"""Dummy weights (`--load-format dummy`) whose routers route by the tokens.

SGLang's dummy fill draws every tensor uniformly from [-1e-3, 1e-3], a biased router's correction bias
included. A dummy router's own scores differ between tokens by far less (the sigmoid of logits of
about 1e-5), so that bias alone ranks the experts: every token of every batch goes to the same top-k,
a decode batch touches k experts whatever its size, and no policy has anything to choose. A trained
bias only balances load; zeroed, it leaves the choice to the tokens, near-uniform as in the dummy
softmax routers. Every server of a benchmark gets the same routers, baseline included."""

from __future__ import annotations

import torch


def zero_correction_biases(model: torch.nn.Module) -> int:
    """Zero, in place, the correction bias every router of `model` ranks its experts by (SGLang's TopK
    modules hold the tensor the model's gate owns); returns how many were zeroed."""
    biases = {}
    for module in model.modules():
        bias = getattr(getattr(module, "topk_config", None), "correction_bias", None)
        if isinstance(bias, torch.Tensor) and bias.is_floating_point():
            biases[id(bias)] = bias
    with torch.no_grad():
        for bias in biases.values():
            bias.zero_()
    return len(biases)
