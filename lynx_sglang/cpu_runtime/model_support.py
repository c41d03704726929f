"""Models whose first forward fails on SGLang's CPU defaults (docs/routers.md says where each stops):
refused before they start, or given the attention they need.

Multi-head latent attention (DeepSeek's MLA) and gpt-oss's attention (sinks, a sliding window) do not
run on `torch_native`, the CPU default: MLA fails on its first prefill (or answers wrongly where the
latent and head widths coincide), and SGLang refuses gpt-oss at start. Both serve with SGLang's Triton attention, whose
kernels run in Triton's interpreter on a CPU: slow, for tests on tiny checkpoints.
"""

from __future__ import annotations

from pathlib import Path

# Architectures (config.json's `architectures`) whose first forward fails on SGLang's CPU path.
CPU_UNSUPPORTED = {
    ("Llama4ForCausalLM", "Llama4ForConditionalGeneration"): "Llama-4's experts take the router weight on "
    "their input, which SGLang's CPU expert compute does not implement",
}
# Served with the Triton attention backend under Triton's interpreter: models with multi-head latent
# attention (config.json has kv_lora_rank: DeepSeek-V2/V3, Kimi-K2, GLM-4.7-Flash, ...), whose prefill
# fails on torch_native, and these architectures.
TRITON_ATTENTION = {("GptOssForCausalLM",): "gpt-oss's attention sinks need it"}
MLA_REASON = "multi-head latent attention (MLA) fails on torch_native at the first prefill"
# One KV split, not SGLang's 8: the interpreter runs every program of a launch one after the other.
TRITON_ATTENTION_SETTINGS = {"attention_backend": "triton", "triton_attention_num_kv_splits": 1}
ATTENTION_FLAGS = ("attention_backend", "decode_attention_backend", "prefill_attention_backend")
# The latent cache rows SGLang's Triton MLA decode kernel takes (kv_lora_rank + qk_rope_head_dim).
MLA_ROWS = (576, 288)


class CpuModelError(ValueError):
    """A model this CPU cannot serve as set; the message is the one line printed."""


def cpu_model_settings(model_path: Path, revision: str | None, given) -> tuple[dict, dict[str, str]]:
    """The SGLang settings (those not `given`) and environment the model needs on a CPU; raises
    CpuModelError where it cannot be served there, or not with the attention backend given."""
    from lynx_sglang.config import ConfigError
    from lynx_sglang.model_config import read_model_config

    try:
        config = read_model_config(model_path, revision)
    except ConfigError:
        return {}, {}  # the checkpoint checks say what is wrong with the folder, or SGLang will
    architectures = set(config.get("architectures") or ())
    named = f"{model_path} ({', '.join(sorted(architectures))})"
    if why := cpu_unsupported_reason(architectures):
        raise CpuModelError(f"{named} cannot be served on a CPU: {why} (docs/routers.md); serve it on a GPU")
    text_config = config.get("text_config") or config
    why = triton_attention_reason(text_config, architectures)
    if why is None:
        return {}, {}
    for flag in ATTENTION_FLAGS:
        backend = given.value(flag)
        if backend not in (None, "triton"):
            raise CpuModelError(f"{named} on a CPU needs the triton attention backend ({why}), "
                                f"not --{flag.replace('_', '-')} {backend}")
    check_mla_row(text_config, named)
    settings = {name: value for name, value in TRITON_ATTENTION_SETTINGS.items() if not given.given(name)}
    return settings, {"TRITON_INTERPRET": "1"}


def cpu_unsupported_reason(architectures) -> str | None:
    """Why a model of these architectures (config.json's) cannot be served on a CPU; None: it can."""
    return next((why for names, why in CPU_UNSUPPORTED.items() if set(architectures) & set(names)), None)


def triton_attention_reason(text_config: dict, architectures: set[str]) -> str | None:
    """Why the model needs SGLang's Triton attention on a CPU; None where torch_native serves it."""
    if isinstance(text_config.get("kv_lora_rank"), int):
        return MLA_REASON
    return next((why for names, why in TRITON_ATTENTION.items() if architectures & set(names)), None)


def check_mla_row(config: dict, named: str) -> None:
    rank, rope = config.get("kv_lora_rank"), config.get("qk_rope_head_dim")
    if isinstance(rank, int) and isinstance(rope, int) and rank + rope not in MLA_ROWS:
        raise CpuModelError(f"{named}: its latent cache row is {rank + rope} wide (kv_lora_rank {rank} + "
                            f"qk_rope_head_dim {rope}); SGLang's Triton MLA decode kernel takes "
                            f"{' or '.join(map(str, MLA_ROWS))}, so it cannot be served on a CPU")
