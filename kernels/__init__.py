"""Active-expert fused MoE compute (pure compute; knows nothing of SGLang or policies)."""
