"""Train the embedded default model: a tiny Mixtral-architecture MoE on the synthetic task.

    python -m lynx_sglang.embedded.train --out lynx_sglang/embedded/checkpoint

Seeded and step-bounded (about 15 minutes on a 2-core CPU with the defaults). The model is
transformers' own `MixtralForCausalLM`, so the saved checkpoint is exactly what SGLang loads. The
loss covers only the answer and EOS: the operands are random and cannot be predicted. A small
load-balancing loss keeps all 8 experts in use, which is what makes batch-level expert pruning a real
question on this model.
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

from lynx_sglang.embedded.task import TASK_KINDS, Problem, heldout_problems, score, training_stream
from lynx_sglang.embedded.tokenizer import BOS, EOS, PAD, vocabulary

# Multiplication and subtraction are the hardest kinds for a model this size; reversal is learnt
# early (100 % held-out by step 500 with an 18 % share), so it needs only a small one.
TASK_WEIGHTS = {"add": 0.22, "sub": 0.28, "mul": 0.42, "rev": 0.08}

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


def build_model(seed: int):
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    vocab = vocabulary()
    config = MixtralConfig(
        vocab_size=len(vocab),
        pad_token_id=vocab[PAD],
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        torch_dtype="float32",
        **MODEL_CONFIG,
    )
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


def train(args) -> dict:
    import torch

    from lynx_sglang.embedded.tokenizer import build_tokenizer, save_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    model = build_model(args.seed)
    model.config._experts_implementation = args.experts_implementation
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters, {args.steps} steps of {args.batch_size}", flush=True)

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    stream = training_stream(seed=args.seed, weights=[TASK_WEIGHTS[k] for k in TASK_KINDS])

    started = time.monotonic()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        batch = [next(stream) for _ in range(args.batch_size)]
        ids, labels, attention = encode_batch(batch)
        out = model(input_ids=ids, attention_mask=attention, labels=labels, output_router_logits=True)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            elapsed = time.monotonic() - started
            print(
                f"step {step:5d}  loss {out.loss.item():.4f}  aux {out.aux_loss.item():.3f}  "
                f"lr {optimizer.param_groups[0]['lr']:.2e}  {elapsed:6.0f} s",
                flush=True,
            )
        if args.eval_every and step and step % args.eval_every == 0:
            probe = heldout_problems(200, seed=99)
            probe_score = score(probe, greedy_answers(model, tokenizer, [p.prompt for p in probe]))
            print(f"step {step:5d}  held-out probe: {probe_score.summary()}", flush=True)
    train_seconds = time.monotonic() - started

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config._experts_implementation = "eager"
    model.save_pretrained(out_dir, safe_serialization=True)
    save_tokenizer(out_dir)

    problems = heldout_problems(args.eval_count)
    completions = greedy_answers(model, tokenizer, [p.prompt for p in problems])
    result = score(problems, completions)
    print(f"held-out (transformers, greedy): {result.summary()}", flush=True)
    report = {
        "parameters": n_params,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "train_seconds": round(train_seconds, 1),
        "heldout_transformers": {"accuracy": result.accuracy, "by_kind": result.by_kind, "count": result.total},
    }
    (out_dir / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory for the checkpoint and tokenizer")
    ap.add_argument("--steps", type=int, default=1800)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-count", type=int, default=2000)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=0, help="probe 200 held-out problems every N steps")
    ap.add_argument("--threads", type=int, default=2)
    # transformers' batched_mm experts take ~44 s a step on CPU; grouped_mm and eager are fast.
    ap.add_argument("--experts-implementation", default="eager", choices=["eager", "grouped_mm"])
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    # Two threads spinning on two shared cores made steps 8x slower: let idle threads sleep.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(args.threads)
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
