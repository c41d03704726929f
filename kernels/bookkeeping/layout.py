"""The statistics table's columns: one [layers, len(FIELDS)] float64 row per MoE layer, to which every
pruned layer call adds its figures. The one definition: the Triton launch takes the columns as
constexprs, the C++ op as macros LYNX_STAT_<NAME>, the torch reference and the scheduler by name."""

import torch

FIELDS = ("steps", "tokens", "distinct_before", "distinct_after", "rerouted", "mass_dropped", "fallbacks")


def column(name: str) -> int:
    """The column of figure `name` (read when a consumer is imported or built, never per call)."""
    return FIELDS.index(name)


def check_table_row(table_row: torch.Tensor, step_fell_back: torch.Tensor | None) -> None:
    """A layer's row of the table, where a fused path adds its figures, and the step's fallback flag."""
    if (table_row.dtype != torch.float64 or tuple(table_row.shape) != (len(FIELDS),) or not table_row.is_contiguous()
            or step_fell_back is None or step_fell_back.dtype != torch.float64 or step_fell_back.dim() != 0):
        raise ValueError(f"table_row must be a contiguous float64 [{len(FIELDS)}] row of the statistics table, with "
                         "step_fell_back a 0-dim float64 tensor")
