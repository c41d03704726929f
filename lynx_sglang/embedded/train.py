"""Train the embedded default model: a tiny Mixtral-architecture MoE on the synthetic task.

    python -m lynx_sglang.embedded.train --out lynx_sglang/embedded/checkpoint

Seeded and step-bounded (under two hours on one core of a 2-core CPU with the defaults). The model
is transformers' own `MixtralForCausalLM`, so the saved checkpoint is exactly what SGLang loads. The
loss covers only the answer and EOS: the operands are random and cannot be predicted. A small
load-balancing loss keeps all 8 experts in use, which is what makes batch-level expert pruning a real
question on this model. Half the training problems have value-uniform operands, half digit-count-first
ones, so both full-length and short operands are learnt (see task.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

from lynx_sglang.arg_parser import OneLineParser
from lynx_sglang.embedded.task import (
    DISTRIBUTIONS,
    TASK_KINDS,
    Problem,
    Score,
    heldout_problems,
    score,
    training_stream,
)
from lynx_sglang.embedded.tokenizer import BOS, EOS, PAD, vocabulary

# Multiplication and subtraction (negative answers) are the hardest kinds for a model this size;
# reversal is learnt early whatever its share, so it gets a small one.
TASK_WEIGHTS = {"add": 0.2, "sub": 0.3, "mul": 0.44, "rev": 0.06}

MODEL_CONFIG = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    num_local_experts=8,
    num_experts_per_tok=2,
    max_position_embeddings=64,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    router_aux_loss_coef=0.01,
    # Saved False: generate() and SGLang do not expect router logits in the outputs.
    output_router_logits=False,
)


def vocabulary_fields() -> dict:
    """The config fields every model of the embedded task takes from its tokenizer."""
    vocab = vocabulary()
    return {"vocab_size": len(vocab), "pad_token_id": vocab[PAD], "bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS]}


def build_model(seed: int, *, layers: int, hidden: int, intermediate: int, experts: int = 8, top_k: int = 2):
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    shape = dict(num_hidden_layers=layers, hidden_size=hidden, intermediate_size=intermediate,
                 num_local_experts=experts, num_experts_per_tok=top_k)
    config = MixtralConfig(**vocabulary_fields(), torch_dtype="float32", **{**MODEL_CONFIG, **shape})
    torch.manual_seed(seed)
    return MixtralForCausalLM(config)


def encode_batch(problems: list[Problem]):
    """Input ids, and labels that are -100 everywhere except the answer and EOS."""
    import torch

    vocab = vocabulary()
    max_len = 2 + max(len(p.text) for p in problems)  # BOS and EOS around the text
    ids = torch.full((len(problems), max_len), vocab[PAD], dtype=torch.long)
    labels = torch.full((len(problems), max_len), -100, dtype=torch.long)
    attention = torch.zeros((len(problems), max_len), dtype=torch.long)
    for row, p in enumerate(problems):
        seq = [vocab[BOS]] + [vocab[c] for c in p.text] + [vocab[EOS]]
        n = len(seq)
        ids[row, :n] = torch.tensor(seq)
        attention[row, :n] = 1
        answer_start = 1 + len(p.prompt)  # position of the first answer token
        # labels are shifted inside the model: position i predicts token i+1
        labels[row, answer_start:n] = ids[row, answer_start:n]
    return ids, labels, attention


def greedy_answers(model, tokenizer, prompts: list[str], batch_size: int = 250, max_new_tokens: int = 8):
    """Greedy completions in transformers (used during training; the bar is measured over HTTP)."""
    import torch

    tokenizer.padding_side = "left"
    out: list[str] = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i : i + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True)
            gen = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            out.extend(tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    model.train()
    return out


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model, args):
    import torch

    decay, no_decay = [], []
    for _, p in model.named_parameters():
        (no_decay if p.ndim < 2 else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )


def heldout_score(model, tokenizer, count: int, distribution: str, seed: int = 1234) -> Score:
    problems = heldout_problems(count, seed=seed, distinct=True, distribution=distribution)
    return score(problems, greedy_answers(model, tokenizer, [p.prompt for p in problems]))


def score_record(result: Score) -> dict:
    return {"accuracy": round(result.accuracy, 4), "count": result.total, "by_kind": result.by_kind}


def probe(model, tokenizer, args, step: int, elapsed: float, loss: float) -> dict:
    """A point of the learning curve: distinct held-out problems under both operand distributions."""
    point = {"step": step, "seconds": round(elapsed), "loss": round(loss, 4)}
    for distribution in DISTRIBUTIONS:
        result = heldout_score(model, tokenizer, args.probe_count, distribution, seed=99)
        point[distribution] = score_record(result)
        print(f"step {step:5d}  probe {distribution:<7} {result.summary()}", flush=True)
    return point


def save_checkpoint(model, args) -> Path:
    from lynx_sglang.embedded.tokenizer import save_tokenizer

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    implementation = model.config._experts_implementation
    model.config._experts_implementation = "eager"
    model.save_pretrained(out_dir, safe_serialization=True)
    model.config._experts_implementation = implementation
    save_tokenizer(out_dir)
    return out_dir


def train(args) -> dict:
    import torch

    from lynx_sglang.embedded.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    model = build_model(args.seed, layers=args.layers, hidden=args.hidden, intermediate=args.intermediate,
                        experts=args.experts, top_k=args.top_k)
    model.config._experts_implementation = args.experts_implementation
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters, {args.steps} steps of {args.batch_size}", flush=True)

    optimizer = make_optimizer(model, args)
    weights = [TASK_WEIGHTS[k] for k in TASK_KINDS]
    stream = training_stream(seed=args.seed, weights=weights, uniform_share=args.uniform_share)
    curve: list[dict] = []
    started = time.monotonic()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        ids, labels, attention = encode_batch([next(stream) for _ in range(args.batch_size)])
        out = model(input_ids=ids, attention_mask=attention, labels=labels, output_router_logits=True)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            print(
                f"step {step:5d}  loss {out.loss.item():.4f}  aux {out.aux_loss.item():.3f}  "
                f"lr {optimizer.param_groups[0]['lr']:.2e}  {time.monotonic() - started:6.0f} s",
                flush=True,
            )
        if args.eval_every and step and step % args.eval_every == 0:
            curve.append(probe(model, tokenizer, args, step, time.monotonic() - started, out.loss.item()))
            # A long run that dies still leaves its latest state to look at (overwritten at the end).
            save_checkpoint(model, args)
    train_seconds = time.monotonic() - started
    out_dir = save_checkpoint(model, args)

    report = {
        "parameters": n_params,
        "arguments": {k: v for k, v in vars(args).items() if k != "out"},
        "train_seconds": round(train_seconds, 1),
        "learning_curve": curve,
    }
    score_heldout(model, tokenizer, args.eval_count, report)
    (out_dir / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def score_heldout(model, tokenizer, count: int, report: dict) -> None:
    """The final scores on `count` distinct held-out problems of each distribution (transformers, greedy),
    printed and put into `report`."""
    for distribution in DISTRIBUTIONS:
        result = heldout_score(model, tokenizer, count, distribution)
        print(f"held-out {distribution} (transformers, greedy, distinct): {result.summary()}", flush=True)
        report[f"heldout_transformers_{distribution}"] = score_record(result)


def optimisation_arguments(ap, *, steps: int) -> None:
    """The flags every trainer of the embedded task takes before its model's shape."""
    ap.add_argument("--out", required=True, help="directory for the checkpoint and tokenizer")
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--uniform-share", type=float, default=0.5, help="share of value-uniform training problems")


def run_arguments(ap) -> None:
    """The flags every trainer of the embedded task takes after its model's shape."""
    ap.add_argument("--eval-count", type=int, default=2000, help="distinct held-out problems scored at the end")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=1000, help="probe held-out problems every N steps (0: never)")
    ap.add_argument("--probe-count", type=int, default=400, help="distinct problems per distribution per probe")
    # One thread: the step is matrix-bound and the machine's other core is someone else's.
    ap.add_argument("--threads", type=int, default=1)
    # transformers' batched_mm experts take ~44 s a step on CPU; grouped_mm and eager are fast.
    ap.add_argument("--experts-implementation", default="eager", choices=["eager", "grouped_mm"])


def shape_arguments(ap, *, intermediate_flag: str, intermediate: int, layers: int, hidden: int, experts: int,
                    top_k: int) -> None:  # fmt: skip
    """The model's shape, between the optimisation and the run flags."""
    ap.add_argument("--layers", type=int, default=layers)
    ap.add_argument("--hidden", type=int, default=hidden)
    ap.add_argument(intermediate_flag, type=int, default=intermediate)
    ap.add_argument("--experts", type=int, default=experts)
    ap.add_argument("--top-k", type=int, default=top_k)


AT_LEAST_ONE = ("steps", "batch_size", "layers", "hidden", "intermediate", "moe_intermediate", "eval_count",
                "log_every", "probe_count", "threads", "balance_window")
NOT_NEGATIVE = ("warmup", "weight_decay", "eval_every", "bias_update_rate")


def checked_args(ap: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """The trainer's flags, refused before any training when one cannot make a model worth writing."""
    args = ap.parse_args(argv)
    given = vars(args)
    for name in AT_LEAST_ONE:
        if name in given and given[name] < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, got {given[name]}")
    for name in NOT_NEGATIVE:
        if name in given and given[name] < 0:
            ap.error(f"--{name.replace('_', '-')} must not be negative, got {given[name]}")
    if not args.lr > 0:
        ap.error(f"--lr must be positive, got {args.lr}")
    if not 0 <= args.uniform_share <= 1:
        ap.error(f"--uniform-share must be in [0, 1], got {args.uniform_share}")
    if args.experts < 2 or not 1 <= args.top_k <= args.experts:
        ap.error(f"--experts {args.experts} --top-k {args.top_k}: a mixture needs 2 or more experts and "
                 "1 <= top-k <= experts")
    return args


def parse_args(argv=None):
    ap = OneLineParser(prog="lynx-sglang train-embedded", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    optimisation_arguments(ap, steps=8000)
    shape_arguments(ap, intermediate_flag="--intermediate", intermediate=MODEL_CONFIG["intermediate_size"],
                    layers=MODEL_CONFIG["num_hidden_layers"], hidden=MODEL_CONFIG["hidden_size"],
                    experts=MODEL_CONFIG["num_local_experts"], top_k=MODEL_CONFIG["num_experts_per_tok"])
    run_arguments(ap)
    return checked_args(ap, argv)


def run(train_function, args) -> int:
    """Train with `args.threads` threads that sleep when idle."""
    # With --threads 2 on two shared cores, spinning OpenMP threads made steps 8x slower.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(args.threads)
    train_function(args)
    return 0


def main(argv=None) -> int:
    return run(train, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
