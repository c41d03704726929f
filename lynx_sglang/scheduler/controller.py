"""The latency-budget controller: a target time per output token -> an expert cap for coming steps.

Cost model: a decode step takes `a + b * n` ms when each MoE layer computes n experts (decode is
memory-bound, so MoE time is linear in the experts read). `b` is calibrated at start by timing the
expert compute, `a` is unknown and drifts with the batch, so the controller never estimates it:
every `window` decode steps it compares the measured step time t with the target T and moves the cap
by the model's step `(T - t) / b`, damped by `gain` < 1. When the cap is not binding (the batch uses
fewer experts than allowed) a slower step pulls the cap down until it binds; a faster one gives
experts back up to E. A dead band around T keeps the integer cap from dithering. `b` is corrected
online from pairs of windows whose caps differed, within a factor of the calibrated value so a
non-binding cap (no time change) cannot blow up the gain.

Pure Python, no tensors: the scheduler feeds it host-side step intervals, and it returns the cap.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field


@dataclass
class TpotController:
    target_ms: float
    num_experts: int
    ms_per_expert: float  # calibrated slope b: step time per expert computed in every MoE layer
    min_experts: int = 1
    window: int = 8
    gain: float = 0.5
    dead_band: float = 0.05
    cap: int = field(init=False)
    measured_ms: float | None = field(init=False, default=None)
    _calibrated_slope: float = field(init=False)
    _samples: list = field(init=False, default_factory=list)
    _previous: tuple | None = field(init=False, default=None)  # (cap, measured_ms) of the last window

    def __post_init__(self):
        if self.target_ms <= 0 or self.ms_per_expert <= 0:
            raise ValueError("target_ms and ms_per_expert must be positive")
        self.cap = self.num_experts
        self._calibrated_slope = self.ms_per_expert

    @property
    def experts(self) -> int:
        return self.cap

    def observe(self, step_ms: float) -> int | None:
        """Record one decode step interval; returns the new cap when it changed, else None."""
        self._samples.append(step_ms)
        if len(self._samples) < self.window:
            return None
        measured = statistics.median(self._samples)
        self._samples.clear()
        self.measured_ms = measured
        self._correct_slope(measured)
        self._previous = (self.experts, measured)
        before = self.experts
        self.cap = min(self.num_experts, max(self.min_experts, before + self._move(measured)))
        return self.experts if self.experts != before else None

    def _move(self, measured: float) -> int:
        """Whole experts to add (+) or remove (-). Slower than the band: cut at least one. Faster:
        add only the experts that still fit under the target, so an integer cap that cannot hit the
        target exactly settles on the largest one that meets it instead of dithering around it."""
        error = self.target_ms - measured
        if abs(error) <= self.dead_band * self.target_ms:
            return 0
        experts = error / self.ms_per_expert
        if error < 0:
            return -max(1, round(-self.gain * experts))
        return max(1 if experts >= 1 else 0, math.floor(self.gain * experts))

    def _correct_slope(self, measured: float) -> None:
        if self._previous is None:
            return
        previous_cap, previous_ms = self._previous
        delta_cap = self.experts - previous_cap
        if delta_cap == 0:
            return
        observed = (measured - previous_ms) / delta_cap
        low, high = 0.25 * self._calibrated_slope, 4.0 * self._calibrated_slope
        if low <= observed <= high:
            self.ms_per_expert = 0.7 * self.ms_per_expert + 0.3 * observed

    def state(self) -> dict:
        return {
            "target_tpot_ms": self.target_ms,
            "experts": self.experts,
            "measured_tpot_ms": self.measured_ms,
            "ms_per_expert": self.ms_per_expert,
        }
