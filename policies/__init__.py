"""Batch-aware active-expert policies for MoE decode (pure torch; knows nothing of SGLang)."""
