"""The measured choice between lynx's active-expert kernel and SGLang's fused MoE, per CUDA device.

`--lynx-kernel auto` reads `kernels/configs/expert_compute,device_name=<device>.json` (device as
`kernels.configs.device_name()` spells it) when it exists; scripts/expert-compute-table.py writes it
from a `lynx-sglang bench serve --kernels lynx,sglang --record FILE` record:

    {"E=8,H=4096,I=14336,top_k=2,dtype=bfloat16": {"1": "sglang", "16": "lynx", "64": "lynx"}}

A key is one MoE layer shape as a rank computes it: experts, hidden size, expert intermediate size
per tensor-parallel rank, top-k and the weights' dtype. Its value maps decode batch sizes (rows) to the
kernel measured faster there, "lynx" or "sglang"; a batch of T rows takes the entry of the smallest
size >= T, and batches larger than every size the entry of the largest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lynx_sglang.kernels.configs import config_path, device_name, load_device_config

KERNEL_KIND = "expert_compute"
KERNELS = ("lynx", "sglang")


@dataclass(frozen=True)
class LayerShape:
    num_experts: int
    hidden: int
    intermediate: int  # per tensor-parallel rank
    top_k: int
    dtype: str  # "bfloat16", "float16", "float32"

    @property
    def key(self) -> str:
        return f"E={self.num_experts},H={self.hidden},I={self.intermediate},top_k={self.top_k},dtype={self.dtype}"


class ComputeTable:
    """shape key -> [(rows, kernel)] by rows."""

    def __init__(self, by_shape: dict[str, list[tuple[int, str]]]):
        self.by_shape = {key: sorted(entries) for key, entries in by_shape.items()}

    @classmethod
    def for_device(cls, device: str | None) -> "ComputeTable | None":
        """The table measured on `device` (a `device_name()`), or None where there is none."""
        data = load_device_config(KERNEL_KIND, device)
        return None if data is None else cls.parse(data, str(config_path(KERNEL_KIND, device)))

    @classmethod
    def parse(cls, data, source: str) -> "ComputeTable":
        """Raises ValueError naming `source`, the entry and what is allowed."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: must be an object of layer shapes, got {type(data).__name__}")
        by_shape = {}
        for key, entries in data.items():
            parse_shape_key(key, source)
            if not isinstance(entries, dict) or not entries:
                raise ValueError(f"{source}: {key}: must be a non-empty object of batch sizes -> kernel")
            by_shape[key] = [_entry(key, rows, kernel, source) for rows, kernel in entries.items()]
        return cls(by_shape)

    def to_json(self) -> dict:
        return {key: {str(rows): kernel for rows, kernel in entries} for key, entries in sorted(self.by_shape.items())}

    def kernel_for(self, shape: LayerShape, rows: int) -> str | None:
        """"lynx" or "sglang" for a batch of `rows` rows; None for a shape not measured."""
        entries = self.by_shape.get(shape.key)
        if entries is None:
            return None
        return next((kernel for size, kernel in entries if size >= rows), entries[-1][1])


def table_for(kernel: str, device: torch.device) -> ComputeTable | None:
    """What `--lynx-kernel auto` follows on the model's device; None for the other kernels (they name
    their compute), on a CPU (tables are per CUDA device) and on a device without a file."""
    if kernel != "auto" or device.type != "cuda":
        return None
    return ComputeTable.for_device(device_name(device))


def parse_shape_key(key: str, source: str) -> LayerShape:
    example = "E=8,H=4096,I=14336,top_k=2,dtype=bfloat16"
    fields = dict(part.partition("=")[::2] for part in str(key).split(","))
    try:
        shape = LayerShape(int(fields["E"]), int(fields["H"]), int(fields["I"]), int(fields["top_k"]),
                           fields["dtype"])  # fmt: skip
    except (KeyError, ValueError):
        raise ValueError(f"{source}: {key!r} is not a layer shape such as {example!r}") from None
    if shape.key != key or min(shape.num_experts, shape.hidden, shape.intermediate, shape.top_k) < 1:
        raise ValueError(f"{source}: {key!r} is not a layer shape such as {example!r}")
    return shape


def _entry(key: str, rows, kernel, source: str) -> tuple[int, str]:
    if not (isinstance(rows, str) and rows.isdigit() and int(rows) >= 1):
        raise ValueError(f"{source}: {key}: {rows!r} is not a batch size (an integer >= 1)")
    if kernel not in KERNELS:
        raise ValueError(f"{source}: {key}: {rows}: {kernel!r} is not one of {', '.join(KERNELS)}")
    return int(rows), kernel
