"""Tuned launch settings kept as data: one JSON file per kind and device, named the way SGLang names its
fused-MoE configurations (`<kind>,device_name=<device name, spaces as _>.json`), read at launch. A
device without a file gets the built-in heuristic of whoever asks."""

from __future__ import annotations

import functools
import json
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent


def device_name(device=None) -> str | None:
    """The CUDA device's name as SGLang spells it in file names (`NVIDIA_H100_80GB_HBM3`), or None
    without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(device).replace(" ", "_")


def config_path(kind: str, device: str) -> Path:
    return CONFIG_DIR / f"{kind},device_name={device}.json"


@functools.cache
def load_device_config(kind: str, device: str | None) -> dict | None:
    """The `kind` settings measured on `device` (a name from `device_name()`), or None where there is no
    file. A file that does not parse is an error naming it: a silent fallback would hide a bad table."""
    if device is None:
        return None
    path = config_path(kind, device)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
