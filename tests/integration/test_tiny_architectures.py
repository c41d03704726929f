"""SGLang serves random tiny checkpoints of each supported MoE architecture, token for token like
transformers' greedy decoding in float32 (plugin and CPU glue loaded, as in production)."""

import pytest
import torch

from lynx_sglang.tiny_checkpoints import ARCHITECTURES, build_tiny_checkpoint

pytestmark = pytest.mark.slow

PROMPTS = ["123+45=", "r4821=", "Hello, MoE!", "7*8="]
NEW_TOKENS = 12


def transformers_greedy(model_dir, prompt_ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    outputs = []
    with torch.no_grad():
        for ids in prompt_ids:
            seq = torch.tensor([ids])
            for _ in range(NEW_TOKENS):  # no KV cache, no generate(): obviously-correct greedy
                next_id = model(seq).logits[0, -1].argmax()
                seq = torch.cat([seq, next_id.view(1, 1)], dim=1)
            outputs.append(seq[0, len(ids) :].tolist())
    return outputs


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sglang_matches_transformers_greedy(arch, tmp_path, monkeypatch):
    import sglang
    from transformers import AutoTokenizer

    model_dir = build_tiny_checkpoint(arch, tmp_path / arch, seed=1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt_ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    expected = transformers_greedy(model_dir, prompt_ids)

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # never let a test-only setting reach SGLang
    engine = sglang.Engine(
        model_path=str(model_dir),
        device="cpu",
        attention_backend="torch_native",
        disable_cuda_graph=True,
        max_total_tokens=1024,
        dtype="float32",
        log_level="error",
    )
    try:
        results = engine.generate(
            input_ids=prompt_ids,
            sampling_params={"temperature": 0, "max_new_tokens": NEW_TOKENS, "ignore_eos": True},
        )
    finally:
        engine.shutdown()
    got = [r["output_ids"] for r in results]
    assert got == expected, f"{arch}: SGLang {got} != transformers {expected}"
