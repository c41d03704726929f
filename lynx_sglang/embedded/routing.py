"""How many of the 8 experts a decode batch touches, per layer, on the embedded model.

    python -m lynx_sglang.embedded.routing [--model-path DIR] [--batches 16] [--batch-size 32]

Greedy decoding in transformers of batches of distinct held-out prompts, as a server would batch
them. Router logits are read from every layer's router during each decode step; a step's batch is
the requests still running (a request leaves once it has produced EOS), and the experts it touches
are the union of those rows' top-k. If that union is nearly always all 8, batch-level pruning has
nothing to skip; if it is 1 or 2 the routing has collapsed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lynx_sglang.arg_parser import OneLineParser
from lynx_sglang.embedded import EMBEDDED_MODEL_DIR
from lynx_sglang.embedded.task import DISTRIBUTIONS, heldout_problems

MAX_NEW_TOKENS = 8  # as `lynx-sglang eval` asks the server


@dataclass
class RouterRecorder:
    """Collects each router call's logits, in call order, per layer."""

    calls: dict[int, list] = field(default_factory=dict)

    def attach(self, model) -> list:
        handles = []
        for layer_index, layer in enumerate(model.model.layers):
            hook = self._hook(layer_index)
            handles.append(layer.mlp.gate.register_forward_hook(hook))
        return handles

    def _hook(self, layer_index: int):
        def record(module, inputs, outputs):
            self.calls.setdefault(layer_index, []).append(outputs[0].detach())

        return record


def first_eos(generated, eos_id: int) -> list[int]:
    """Per row, the index of the first generated EOS (MAX_NEW_TOKENS where there is none)."""
    return [row.index(eos_id) if eos_id in row else MAX_NEW_TOKENS for row in generated.tolist()]


def live_decode_choices(model, tokenizer, prompts: list[str]) -> dict[int, list[list[tuple[int, ...]]]]:
    """Per layer, per decode step, the top-k experts of every request still running at that step."""
    import torch

    recorder = RouterRecorder()
    handles = recorder.attach(model)
    try:
        enc = tokenizer(prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            gen = model.generate(
                **enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
    finally:
        for handle in handles:
            handle.remove()
    ends = first_eos(gen[:, enc["input_ids"].shape[1] :], tokenizer.eos_token_id)
    top_k = model.config.num_experts_per_tok
    choices: dict[int, list[list[tuple[int, ...]]]] = {}
    for layer, calls in recorder.calls.items():
        # Call 0 is the prefill. Decode call j consumes generated token j-1: a request is still in the
        # batch while its EOS lies at index j or later.
        steps = []
        for j, logits in enumerate(calls[1:], start=1):
            picks = logits.topk(top_k, dim=-1).indices.tolist()
            live = [tuple(sorted(picks[r])) for r, end in enumerate(ends) if end >= j]
            if live:
                steps.append(live)
        choices[layer] = steps
    return choices


def union_size(choices: list[tuple[int, ...]]) -> int:
    return len({expert for picks in choices for expert in picks})


def measure(model_path: Path, *, batches: int, batch_size: int, distribution: str, seed: int) -> dict:
    import torch
    from transformers import AutoTokenizer, MixtralForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    tokenizer.padding_side = "left"
    model = MixtralForCausalLM.from_pretrained(str(model_path), dtype=torch.float32).eval()
    prompts = [p.prompt for p in heldout_problems(batches * batch_size, seed=seed, distinct=True,
                                                  distribution=distribution)]
    first_steps: dict[int, list[int]] = {}
    stream: dict[int, list[tuple[int, ...]]] = {}
    for start in range(0, len(prompts), batch_size):
        for layer, steps in live_decode_choices(model, tokenizer, prompts[start : start + batch_size]).items():
            first_steps.setdefault(layer, []).append(union_size(steps[0]))
            stream.setdefault(layer, []).extend(picks for step in steps for picks in step)
    return summarise(first_steps, stream, batch_size, model.config.num_local_experts)


def summarise(first_steps, stream, batch_size: int, num_experts: int, seed: int = 0) -> dict:
    """Experts touched per layer: by each batch's first decode step, and by groups of `batch_size` live
    decode tokens drawn in a seeded random order. Routing is per token, so a group is exactly what a
    decode batch of that many running requests touches; random grouping mixes answer positions the way
    a continuously batched server does once requests finish and others take their place."""
    layers = {}
    for layer in sorted(stream):
        tokens = list(stream[layer])
        random.Random(seed).shuffle(tokens)
        groups = [union_size(tokens[i : i + batch_size]) for i in range(0, len(tokens) - batch_size + 1, batch_size)]
        layers[layer] = {
            "first_step": stats(first_steps[layer]),
            "decode_tokens": stats(groups),
            "histogram": {n: groups.count(n) for n in range(1, num_experts + 1)},
        }
    return {"batch_size": batch_size, "num_experts": num_experts, "layers": layers}


def stats(values: list[int]) -> dict:
    return {"batches": len(values), "mean": round(sum(values) / len(values), 2), "min": min(values),
            "max": max(values)}


def table(result: dict) -> str:
    n, b = result["num_experts"], result["batch_size"]
    header = (
        f"| layer | first decode step of {b} requests: mean (min-max) | {b} running requests: mean (min-max) | "
        + " | ".join(str(k) for k in range(1, n + 1))
        + " |"
    )
    lines = [header, "|" + "---|" * (3 + n)]
    for layer, row in result["layers"].items():
        first, tokens = row["first_step"], row["decode_tokens"]
        cells = [
            str(layer),
            f"{first['mean']:.2f} ({first['min']}-{first['max']}), {first['batches']} batches",
            f"{tokens['mean']:.2f} ({tokens['min']}-{tokens['max']}), {tokens['batches']} batches",
        ]
        cells += [str(row["histogram"][k]) for k in range(1, n + 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nColumns 1..{n}: how many {b}-token decode batches touched that many experts."


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


positive_int.__name__ = "integer of at least 1"  # argparse names the type in its error


def main(argv=None) -> int:
    ap = OneLineParser(prog="python -m lynx_sglang.embedded.routing", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", type=Path, default=EMBEDDED_MODEL_DIR)
    ap.add_argument("--batches", type=positive_int, default=16)
    ap.add_argument("--batch-size", type=positive_int, default=32)
    ap.add_argument("--distribution", choices=DISTRIBUTIONS, default="digits")
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:  # it runs the model in transformers' Mixtral class, as the embedded model and train-embedded's are
        model_type = json.loads((args.model_path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        ap.error(f"--model-path {args.model_path}: no readable config.json ({exc})")
    if model_type != "mixtral":
        ap.error(f"--model-path {args.model_path}: a {model_type} model; this measures Mixtral checkpoints "
                 "(the embedded model's kind)")
    import torch

    torch.set_num_threads(1)
    result = measure(args.model_path, batches=args.batches, batch_size=args.batch_size,
                     distribution=args.distribution, seed=args.seed)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
