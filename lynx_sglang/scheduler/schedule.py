"""Settings that follow the decode batch size (LynxConfig.schedule): each step's band, looked up on the
device from its real row count, chooses which band's routing the layer keeps.

A captured CUDA graph serves a range of real row counts (SGLang pads the batch to the graph's size and
passes the real count as a device tensor), so the band cannot be a Python branch: every band's policy
proposes its routing for the layer call, and the band's proposal is selected by an index computed on
the device. The cost is one policy call per band (two for a typical schedule); the expert compute,
which dominates a decode step, runs once on the selected routing.
"""

from __future__ import annotations

import torch


def band_index(band_starts: torch.Tensor, num_real, rows: int) -> torch.Tensor:
    """0-dim int64 tensor: the last band whose first row count is at most this call's real rows.
    num_real: SGLang's real-row count (a 0-dim tensor) or None when all `rows` are real."""
    if num_real is None:
        real = torch.full((), rows, dtype=band_starts.dtype, device=band_starts.device)
    else:
        real = num_real.to(device=band_starts.device, dtype=band_starts.dtype)
    return ((band_starts <= real).sum() - 1).clamp(min=0)


def select_band(band: torch.Tensor, proposals: list[tuple[torch.Tensor, torch.Tensor]]):
    """The (ids, weights) of band `band` among the bands' proposals, all of the same shape."""
    index = band.view(1)
    ids = torch.stack([p[0] for p in proposals]).index_select(0, index).squeeze(0)
    weights = torch.stack([p[1] for p in proposals]).index_select(0, index).squeeze(0)
    return ids, weights


def count_step(band_steps: torch.Tensor, band: torch.Tensor) -> None:
    """One step more in band `band` (in place, on the device: no host read)."""
    band_steps.index_add_(0, band.view(1), torch.ones(1, dtype=band_steps.dtype, device=band_steps.device))


class BandSchedule:
    """A schedule's bands in the running server: one child settings per band (`children`, built by the
    parent PolicySettings), their first row counts on the device, and the decode steps each served."""

    def __init__(self, children: list, starts: list[int], device):
        self.children = children
        self.starts = torch.tensor(starts, dtype=torch.int64, device=device)
        self.steps = torch.zeros(len(starts), dtype=torch.float64, device=device)

    def refill(self, bands: list[tuple[int, object]]) -> bool:
        """Apply a new schedule of as many bands in place (the tensors a captured graph reads stay the
        same objects); False where the count differs and a new schedule must be built."""
        if len(bands) != len(self.children):
            return False
        for child, (_, band) in zip(self.children, bands):
            child.apply(band)
        self.starts.copy_(torch.tensor([start for start, _ in bands], dtype=torch.int64))
        return True

    @property
    def lone_row_kept(self) -> bool:
        return all(child.lone_row_kept for child in self.children)

    def signature(self) -> tuple:
        return tuple(child.signature() for child in self.children)

    # ---- per layer call (tensor code, graph-safe) -------------------------------------------------
    def band_of(self, num_real, rows: int) -> torch.Tensor:
        return band_index(self.starts, num_real, rows)

    def count(self, band: torch.Tensor) -> None:
        count_step(self.steps, band)

    def count_lone_row(self) -> None:
        self.steps[0] += 1  # one row is always the first band's

    # ---- control path (host reads) -----------------------------------------------------------------
    def steps_by_band(self, schedule: list[dict]) -> list[dict]:
        steps = self.steps.cpu().tolist()
        return [{"from_rows": band["from_rows"], "params": band["params"], "budget": band["budget"],
                 "steps": int(count)} for band, count in zip(schedule, steps)]  # fmt: skip

    def reset(self) -> None:
        self.steps.zero_()
