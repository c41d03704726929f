"""Host-side counts of the steps SGLang runs, kept around every forward (no tensor is read)."""

from __future__ import annotations

import time

from lynx_sglang.scheduler.log import Throttle, logger
from lynx_sglang.scheduler.step import Step


class StepCounts:
    def __init__(self):
        self.decode_steps = 0  # steps the policy handled
        self.passthrough_steps = 0
        self.steps_by_policy: dict[str, int] = {}
        self.steps_by_mode: dict[str, int] = {}
        self._last_decode_start: float | None = None

    def begin(self, step: Step, policy: str) -> float | None:
        """Count `step`; returns the interval since the previous decode step began (ms), or None when
        there is none (the first, or a prefill in between: not part of a decode interval)."""
        self.steps_by_mode[step.mode] = self.steps_by_mode.get(step.mode, 0) + 1
        if not step.prune:
            self.passthrough_steps += 1
            self._last_decode_start = None
            return None
        self.decode_steps += 1
        self.steps_by_policy[policy] = self.steps_by_policy.get(policy, 0) + 1
        now = time.perf_counter()
        interval = None if self._last_decode_start is None else (now - self._last_decode_start) * 1000.0
        self._last_decode_start = now
        return interval

    def not_routed(self, policy: str) -> None:
        """The decode step `begin` counted had no MoE layer the policy routes (every router passed
        through): it was not the policy's step, so it counts as passed through."""
        self.decode_steps -= 1
        self.passthrough_steps += 1
        self.steps_by_policy[policy] -= 1
        if not self.steps_by_policy[policy]:
            del self.steps_by_policy[policy]

    def reset(self) -> None:
        self.decode_steps = self.passthrough_steps = 0
        self.steps_by_policy.clear()
        self.steps_by_mode.clear()


class SilentFallbackReport:
    """Fallbacks decided by tensor ops (out-of-range ids, non-finite weights) are only counted on the
    device; once a minute, one host read of the count tells the log whether there were any."""

    def __init__(self):
        self._throttle = Throttle()
        self._reported = 0

    def after_step(self, stats) -> None:
        if not self._throttle.ready():
            return
        total = int(stats.fallback_steps.item())
        if total > self._reported:
            logger.warning(
                "lynx-sglang: %d decode step(s) fell back to the model's routing in some layer since the last report "
                "(invalid policy output: ids out of range or non-finite weights); see fallback_steps in /lynx/stats",
                total - self._reported,
            )  # fmt: skip
        self._reported = total

    def reset(self) -> None:
        self._reported = 0
