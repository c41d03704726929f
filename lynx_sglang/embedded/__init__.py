"""The embedded default model: its task, tokenizer, training scripts and committed checkpoint."""

from pathlib import Path

# The committed checkpoint: what `serve`, the engine and the experiments load without --model-path,
# and where its calibrated setting (lynx-config.yaml) ships.
EMBEDDED_MODEL_DIR = Path(__file__).resolve().parent / "checkpoint"
