"""What the results of an experiment record about where they come from: package versions, the machine,
the checkpoint's identity (the sha256 of its weights); and the one way results files are written."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
from pathlib import Path

from lynx_sglang.embedded import EMBEDDED_MODEL_DIR


def write_json(path: Path, data: dict) -> None:
    staging = path.with_suffix(".json.tmp")
    staging.write_text(json.dumps(data, indent=1, default=float) + "\n")
    os.replace(staging, path)  # never a half-written results file


def versions(experiment) -> dict:
    packages = {}
    for name in ("lynx-sglang", "sglang", "torch", "transformers", "scipy", "numpy", "matplotlib"):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {"packages": packages, "python": platform.python_version(), "machine": machine_description(),
            "model": model_identity(experiment)}


def machine_description() -> str:
    processor = platform.processor() or platform.machine()
    return f"{os.cpu_count()}-core CPU ({processor}, {platform.system()})"


def model_identity(experiment) -> dict:
    """Which weights were measured: the checkpoint's name and the sha256 of its safetensors files."""
    args = experiment.args
    if args.url:
        return {"url": args.url}
    return checkpoint_identity(args.model_path)


def checkpoint_identity(model_path: str | None) -> dict:
    """The checkpoint's name ("embedded" without a path) and the sha256 of its safetensors files."""
    directory = Path(model_path) if model_path else EMBEDDED_MODEL_DIR
    digest = hashlib.sha256()
    for weights in sorted(directory.glob("*.safetensors")):
        with open(weights, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return {"name": "embedded" if not model_path else directory.name, "weights_sha256": digest.hexdigest()}
