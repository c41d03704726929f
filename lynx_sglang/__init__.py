"""lynx-sglang: batch-aware expert pruning for MoE decode, served through SGLang."""
__version__ = "0.1.0"
