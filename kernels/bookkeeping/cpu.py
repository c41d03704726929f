"""The serving runtime's bookkeeping after a policy's decision, for one MoE layer call on a CPU: one call
into a small C++ library (cpu.cpp, built on first use by kernels/cpu_library.py) instead of dozens of
torch ops, which cost more than the decision itself on a CPU (`lynx-sglang bench bookkeeping`). The
work and signatures are the torch reference's (reference.py). Counts are exact; the dropped router mass
is summed in float64 (torch sums fp32).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from ..cpu_library import c_struct, header, load_function
from ..routing.cpu import rows_of as _rows
from ..routing.rules import MAX_TOP_K
from . import layout

SOURCE = Path(__file__).with_name("cpu.cpp")

# Ids are int32 or int64 (ids_are_int64), as new_ids and out_ids. A null pointer: not wanted (out_ids,
# out_weights: a routing already final; fell_back_out, mask_out; table_row and step_fell_back: no
# statistics). check: decide the fallback from the proposed routing; without it,
# given_fell says whether the layer fell back.
LayerArgs = c_struct("LayerArgs", """
    const float* logits;
    const void* original_ids; const float* original_weights;
    const void* new_ids; const float* new_weights;
    void* out_ids; float* out_weights; uint8_t* fell_back_out; uint8_t* mask_out;
    double* table_row; double* step_fell_back;
    int64_t logits_stride, original_ids_stride, original_weights_stride, new_ids_stride, new_weights_stride;
    int64_t num_rows, num_experts, top_k, num_real;
    int32_t ids_are_int64, check, given_fell;
""")


def generated_header() -> str:
    """The header cpu.cpp includes: LayerArgs, the table's columns, LYNX_MAX_TOP_K."""
    columns = {f"LYNX_STAT_{name.upper()}": index for index, name in enumerate(layout.FIELDS)}
    return header({**columns, "LYNX_MAX_TOP_K": MAX_TOP_K}, LayerArgs)


def load_layer_op():
    """The C function, or None when the library cannot be built here (then the runtime uses torch ops)."""
    return load_function(SOURCE, generated_header(), "lynx_layer_cpu", LayerArgs)


def _call(logits, original_ids, original_weights, new_ids, new_weights, num_real, *, check: bool, given_fell: bool,
          out_ids=None, out_weights=None, fell_back=None, mask=None, table_row=None,
          step_fell_back=None) -> None:  # fmt: skip
    function = load_layer_op()
    if function is None:
        raise RuntimeError("the CPU bookkeeping op could not be built (see the log)")
    num_rows, num_experts = logits.shape
    if table_row is not None:
        layout.check_table_row(table_row, step_fell_back)
    args = LayerArgs(logits=logits.data_ptr(), original_ids=original_ids.data_ptr(),
                     original_weights=original_weights.data_ptr(), new_ids=new_ids.data_ptr(),
                     new_weights=new_weights.data_ptr(),
                     logits_stride=logits.stride(0), original_ids_stride=original_ids.stride(0),
                     original_weights_stride=original_weights.stride(0), new_ids_stride=new_ids.stride(0),
                     new_weights_stride=new_weights.stride(0), num_rows=num_rows, num_experts=num_experts,
                     top_k=original_ids.shape[1], num_real=num_rows if num_real is None else int(num_real),
                     ids_are_int64=original_ids.dtype == torch.int64, check=check, given_fell=given_fell)
    for field, tensor in (("out_ids", out_ids), ("out_weights", out_weights), ("fell_back_out", fell_back),
                          ("mask_out", mask), ("table_row", table_row), ("step_fell_back", step_fell_back)):
        if tensor is not None:
            setattr(args, field, tensor.data_ptr())
    if function(ctypes.byref(args)) != 0:
        raise ValueError(f"CPU bookkeeping op rejected the call (top_k {original_ids.shape[1]}, E {num_experts})")


def record_cpu(table_row: torch.Tensor | None, step_fell_back: torch.Tensor | None, num_real,
               router_logits: torch.Tensor, original_ids: torch.Tensor, final_ids: torch.Tensor,
               fell_back: torch.Tensor | None = None, *, mask: bool = False) -> torch.Tensor | None:
    """reference.record_torch in one C++ call."""
    logits = _rows(router_logits, torch.float32)
    original_ids = _rows(original_ids, original_ids.dtype)
    final_ids = _rows(final_ids, original_ids.dtype)
    active = torch.empty(logits.shape[1], dtype=torch.bool) if mask else None
    unused_weights = logits  # read only with check, which this call does not ask for
    _call(logits, original_ids, unused_weights, final_ids, unused_weights, num_real, check=False,
          given_fell=fell_back is not None and bool(fell_back), mask=active, table_row=table_row,
          step_fell_back=step_fell_back)  # fmt: skip
    return active


def finalize_cpu(router_logits, ids, weights, new_ids, new_weights, num_real, *, mask: bool, table_row=None,
                 step_fell_back=None):  # fmt: skip
    """reference.finalize_torch in one C++ call."""
    num_rows, top_k = ids.shape
    logits = _rows(router_logits, torch.float32)
    ids = _rows(ids, ids.dtype)
    new_ids = _rows(new_ids, ids.dtype)
    original_weights = _rows(weights, torch.float32)
    new_weights = _rows(new_weights.to(weights.dtype), torch.float32)
    out_ids = torch.empty(num_rows, top_k, dtype=ids.dtype)
    out_weights = torch.empty(num_rows, top_k, dtype=torch.float32)
    fell_back = torch.empty((), dtype=torch.bool)
    active = torch.empty(logits.shape[1], dtype=torch.bool) if mask else None
    _call(logits, ids, original_weights, new_ids, new_weights, num_real, check=True, given_fell=False,
          out_ids=out_ids, out_weights=out_weights, fell_back=fell_back, mask=active, table_row=table_row,
          step_fell_back=step_fell_back)  # fmt: skip
    if weights.dtype != torch.float32:
        out_weights = out_weights.to(weights.dtype)
    return out_ids, out_weights, fell_back, active
