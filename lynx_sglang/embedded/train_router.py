"""Train a tiny GLM-4.5-architecture MoE with a biased sigmoid router on the embedded model's task.

    python -m lynx_sglang.embedded.train_router --out DIR

The model is transformers' own `Glm4MoeForCausalLM` (so the checkpoint is what SGLang's `glm4_moe.py`
loads): 16 routed experts, top-4, one shared expert, every layer MoE. Its router ranks experts by
sigmoid(logits) + `e_score_correction_bias` but weights them by the renormalised sigmoid scores alone,
times the routed scaling factor. No gradient reaches the bias: as in DeepSeek-V3 and GLM-4.5
(auxiliary-loss-free load balancing), after each optimizer step every layer's bias moves by a fixed
rate towards balance, `bias_e += rate * sign(mean_load - load_e)`, where `load_e` counts the real
(non-padding) tokens of the step that chose expert e. A trained bias is what makes this router
different from softmax top-k for pruning: it changes which experts are chosen, not their weights.

The task, tokenizer, batches, schedule, optimizer, probes and checkpoint layout are train.py's.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

from lynx_sglang.embedded.task import TASK_KINDS, training_stream
from lynx_sglang.embedded.train import (
    TASK_WEIGHTS,
    checked_args,
    encode_batch,
    learning_rate,
    make_optimizer,
    optimisation_arguments,
    probe,
    run,
    run_arguments,
    save_checkpoint,
    score_heldout,
    shape_arguments,
    vocabulary_fields,
)

MODEL_CONFIG = dict(
    hidden_size=128,
    intermediate_size=256,  # the shared dense MLP size of a first_k_dense layer (none here)
    moe_intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    head_dim=32,
    n_routed_experts=16,
    num_experts_per_tok=4,
    n_shared_experts=1,
    # One group: the group limit is GLM-4.5's own setting, so only the bias changes choices.
    n_group=1,
    topk_group=1,
    first_k_dense_replace=0,
    # GLM-4.5's public value; 1.0 would hide a scaling mistake in a serving path.
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    max_position_embeddings=64,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    # As GLM-4.5, and as the tiny glm4_moe checkpoint SGLang's CPU path is tested to serve.
    use_qk_norm=True,
    attention_bias=True,
    # Neither library reads these for GLM (its router is sigmoid noaux_tc regardless); they name the
    # router in config.json the way DeepSeek-V3's config does, for readers and tools.
    scoring_func="sigmoid",
    topk_method="noaux_tc",
)

# The shape fields the command line can override.
SHAPE_FIELDS = {
    "layers": "num_hidden_layers",
    "hidden": "hidden_size",
    "moe_intermediate": "moe_intermediate_size",
    "experts": "n_routed_experts",
    "top_k": "num_experts_per_tok",
}


def build_model(seed: int, **shape):
    """A float32 `Glm4MoeForCausalLM` over the project tokenizer; `shape` keys are SHAPE_FIELDS'."""
    import torch
    from transformers import Glm4MoeConfig, Glm4MoeForCausalLM

    overrides = {SHAPE_FIELDS[k]: v for k, v in shape.items() if v is not None}
    config = Glm4MoeConfig(**vocabulary_fields(), dtype="float32", **{**MODEL_CONFIG, **overrides})
    torch.manual_seed(seed)
    return Glm4MoeForCausalLM(config)


def routers(model) -> list:
    from transformers.models.glm4_moe.modeling_glm4_moe import Glm4MoeTopkRouter

    return [m for m in model.modules() if isinstance(m, Glm4MoeTopkRouter)]


class ExpertLoad:
    """Counts, per router, how many real tokens chose each expert while a token mask is set.

    The router returns the experts it chose (after the bias), so a forward hook sees exactly the
    choice the expert compute makes. Generation (probes) runs with no mask and is not counted.
    """

    def __init__(self, model):
        import torch

        self.routers = routers(model)
        self.mask = None
        self.step = [torch.zeros(r.num_experts, dtype=torch.long) for r in self.routers]
        self.window = [torch.zeros(r.num_experts, dtype=torch.long) for r in self.routers]
        self.handles = [r.register_forward_hook(self._hook(i)) for i, r in enumerate(self.routers)]

    def _hook(self, layer: int):
        import torch

        def hook(module, inputs, output):
            if self.mask is None:
                return
            chosen = output[2][self.mask.reshape(-1).bool()]
            self.step[layer] += torch.bincount(chosen.reshape(-1), minlength=module.num_experts)

        return hook

    def start_step(self, attention) -> None:
        self.mask = attention
        for counts in self.step:
            counts.zero_()

    def end_step(self, into_window: bool) -> None:
        self.mask = None
        if into_window:
            for total, counts in zip(self.window, self.step):
                total += counts

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def update_correction_bias(bias, load, rate: float) -> None:
    """Auxiliary-loss-free balancing: an expert chosen more than the mean loses `rate` of bias, one
    chosen less gains it, one at the mean keeps it."""
    import torch

    with torch.no_grad():
        mean = load.float().mean()
        bias += rate * torch.sign(mean - load.float())


def balance_record(model, window_loads) -> list[dict]:
    """Per MoE layer: the correction bias and the expert load over the last steps of training."""
    records = []
    for layer, (router, load) in enumerate(zip(routers(model), window_loads)):
        bias = router.e_score_correction_bias.detach()
        share = load.float() / max(1, int(load.sum()))
        mean = share.mean()
        records.append({
            "layer": layer,
            "bias_min": round(bias.min().item(), 4), "bias_max": round(bias.max().item(), 4),
            "bias_mean": round(bias.mean().item(), 4), "bias_std": round(bias.std().item(), 4),
            "bias": [round(b, 4) for b in bias.tolist()],
            "load": load.tolist(),
            "load_share": [round(s, 4) for s in share.tolist()],
            "load_max_over_mean": round((share.max() / mean).item(), 3),
            "load_min_over_mean": round((share.min() / mean).item(), 3),
            "load_cv": round((share.std() / mean).item(), 3),
        })  # fmt: skip
    return records


def train(args) -> dict:
    import torch

    from lynx_sglang.embedded.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    shape = {k: getattr(args, k) for k in SHAPE_FIELDS}
    model = build_model(args.seed, **shape)
    model.config._experts_implementation = args.experts_implementation
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters, {args.steps} steps of {args.batch_size}", flush=True)

    optimizer = make_optimizer(model, args)
    stream = training_stream(seed=args.seed, weights=[TASK_WEIGHTS[k] for k in TASK_KINDS],
                             uniform_share=args.uniform_share)  # fmt: skip
    load = ExpertLoad(model)
    window_start = max(0, args.steps - args.balance_window)
    curve: list[dict] = []
    started = time.monotonic()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        ids, labels, attention = encode_batch([next(stream) for _ in range(args.batch_size)])
        load.start_step(attention)
        out = model(input_ids=ids, attention_mask=attention, labels=labels)
        load.end_step(into_window=step >= window_start)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        for router, counts in zip(load.routers, load.step):
            update_correction_bias(router.e_score_correction_bias, counts, args.bias_update_rate)
        if step % args.log_every == 0 or step == args.steps - 1:
            spread = max(float(r.e_score_correction_bias.abs().max()) for r in load.routers)
            print(
                f"step {step:5d}  loss {out.loss.item():.4f}  |bias| max {spread:.3f}  "
                f"lr {optimizer.param_groups[0]['lr']:.2e}  {time.monotonic() - started:6.0f} s",
                flush=True,
            )
        if args.eval_every and step and step % args.eval_every == 0:
            curve.append(probe(model, tokenizer, args, step, time.monotonic() - started, out.loss.item()))
            save_checkpoint(model, args)  # a run that dies still leaves its latest state
    train_seconds = time.monotonic() - started
    load.close()
    out_dir = save_checkpoint(model, args)

    report = {
        "model": "Glm4MoeForCausalLM",
        "parameters": n_params,
        "arguments": {k: v for k, v in vars(args).items() if k != "out"},
        "train_seconds": round(train_seconds, 1),
        "learning_curve": curve,
        "balance_window_steps": args.steps - window_start,
        "layers": balance_record(model, load.window),
    }
    score_heldout(model, tokenizer, args.eval_count, report)
    for layer in report["layers"]:
        print(f"layer {layer['layer']}: bias [{layer['bias_min']}, {layer['bias_max']}] std {layer['bias_std']}, "
              f"load max/mean {layer['load_max_over_mean']} min/mean {layer['load_min_over_mean']}", flush=True)
    (out_dir / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    optimisation_arguments(ap, steps=3000)
    shape_arguments(ap, intermediate_flag="--moe-intermediate", intermediate=MODEL_CONFIG["moe_intermediate_size"],
                    layers=MODEL_CONFIG["num_hidden_layers"], hidden=MODEL_CONFIG["hidden_size"],
                    experts=MODEL_CONFIG["n_routed_experts"], top_k=MODEL_CONFIG["num_experts_per_tok"])
    # DeepSeek-V3's rate; sigmoid scores lie in (0, 1), so a few hundred steps can move a choice.
    ap.add_argument("--bias-update-rate", type=float, default=1e-3, help="correction bias step per optimizer step")
    ap.add_argument("--balance-window", type=int, default=100, help="last N steps whose expert load is reported")
    run_arguments(ap)
    return checked_args(ap, argv)


def main(argv=None) -> int:
    return run(train, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
