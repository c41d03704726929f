"""The step context: what kind of forward is running, published for the routing and compute hooks.

SGLang's forward context carries the real-row count (`moe_num_token_non_padded`, which reaches
`select_experts` as an argument) but not the forward mode, and MoE blocks never see the batch. Every
forward that runs a model, eager or being captured into a CUDA graph, enters SGLang's
`forward_context(ctx, forward_batch=...)`; an AROUND hook there pushes a `Step` for the duration of
that forward. (`ModelRunner._forward_raw` alone would miss CUDA-graph capture, which calls
`model.forward` directly.) Forwards nest (the model runner and its eager runner both enter the
context), hence a stack.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    mode: str  # "decode", "mixed", "extend", "idle", "verify" or "other"
    prune: bool  # whether the routing hook applies the policy in this forward
    # The rows the policy routes, as the host knows them: a decode batch's requests; a mixed batch's
    # decode rows, which follow its prefill rows.
    decode_rows: int = 0

    @property
    def pure_decode(self) -> bool:
        return self.mode == "decode" and self.prune


_stack: list[Step] = []


def current_step() -> Step | None:
    return _stack[-1] if _stack else None


def mode_name(forward_mode) -> str:
    if forward_mode.is_decode():
        return "decode"
    if forward_mode.is_mixed():
        return "mixed"
    if forward_mode.is_idle():
        return "idle"
    if forward_mode.is_target_verify():
        return "verify"
    if forward_mode.is_extend():
        return "extend"
    return "other"


def step_for_batch(forward_batch, prune_mixed: bool) -> Step:
    mode = mode_name(forward_batch.forward_mode)
    if mode == "mixed" and prune_mixed:
        decode_rows = getattr(forward_batch, "lynx_decode_rows", 0)
        return Step(mode, decode_rows > 0, decode_rows)
    if mode == "decode":
        return Step(mode, True, forward_batch.batch_size)
    return Step(mode, False)


class StepScope:
    """Wraps SGLang's forward-context manager: enters it, then publishes `step` until exit."""

    def __init__(self, inner, step: Step):
        self.inner = inner
        self.step = step

    def __enter__(self):
        value = self.inner.__enter__()
        _stack.append(self.step)
        return value

    def __exit__(self, *exc_info):
        _stack.pop()
        return self.inner.__exit__(*exc_info)
