"""Models SGLang starts on a CPU and then cannot run: refused before they start (docs/routers.md says
where each stops)."""

from __future__ import annotations

from pathlib import Path

# Architectures (config.json's `architectures`) whose first forward fails on SGLang's CPU path.
CPU_UNSUPPORTED = {
    ("Llama4ForCausalLM", "Llama4ForConditionalGeneration"): "Llama-4's experts take the router weight on "
    "their input, which SGLang's CPU expert compute does not implement",
}


def why_not_on_cpu(model_path: Path, revision: str | None) -> str | None:
    """Why the model cannot be served on a CPU, as one line; None when nothing is known against it."""
    from lynx_sglang.config import ConfigError
    from lynx_sglang.model_config import read_model_config

    try:
        architectures = set(read_model_config(model_path, revision).get("architectures") or ())
    except ConfigError:
        return None  # the checkpoint checks say what is wrong with the folder, or SGLang will
    for names, why in CPU_UNSUPPORTED.items():
        if architectures & set(names):
            return (f"{model_path} ({', '.join(sorted(architectures))}) cannot be served on a CPU: {why} "
                    "(docs/routers.md); serve it on a GPU")
    return None
