"""Host-side counts and times of the steps SGLang runs, kept around every forward (no tensor is read)."""

from __future__ import annotations

import time
from collections import deque

from lynx_sglang.scheduler.log import Throttle, logger
from lynx_sglang.scheduler.step import Step


class StepCounts:
    def __init__(self):
        self.decode_steps = 0  # steps the policy handled
        self.passthrough_steps = 0
        self.steps_by_policy: dict[str, int] = {}
        self.steps_by_mode: dict[str, int] = {}

    def begin(self, step: Step, policy: str) -> None:
        self.steps_by_mode[step.mode] = self.steps_by_mode.get(step.mode, 0) + 1
        if not step.prune:
            self.passthrough_steps += 1
            return
        self.decode_steps += 1
        self.steps_by_policy[policy] = self.steps_by_policy.get(policy, 0) + 1

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


class DecodeStepTimer:
    """How long pruned steps take, for the latency controller, from host clocks alone (reading the
    device's time would sync it). The only host times are forward starts, so a sample is the interval
    between two starts, and which step it measures depends on how SGLang runs them:

    - lag 0: each step's result is read before the next starts (a CPU, or --disable-overlap-schedule):
      the interval from step i's start to step i+1's is step i, whatever step i+1 is, so a decode step
      followed by a prefill is still measured;
    - lag 1: SGLang's overlap schedule on a GPU launches step i+1 once step i-1's result is read, so the
      interval from step i's start to step i+1's is step i-1 on the device. It is kept only when steps
      i-1 and i were both pruned (step i's host work is then a graph launch, not an eager prefill).

    An idle scheduler breaks the chain: an interval that spans idle time measures no step."""

    def __init__(self, lag: int, clock=time.perf_counter):
        if lag not in (0, 1):
            raise ValueError(f"lag must be 0 or 1, not {lag}")
        self.lag = lag
        self._clock = clock
        self._last_start: float | None = None
        self._pruned = deque(maxlen=2)  # whether each of the last forwards was pruned, newest last

    def begin(self, pruned: bool) -> float | None:
        """A forward starts; returns the duration (ms) of the pruned step this interval measures, or None."""
        now = self._clock()
        measured = list(self._pruned)[-1 - self.lag:]  # the step the interval measures, and with lag 1 the next
        interval = None
        if self._last_start is not None and len(measured) == self.lag + 1 and all(measured):
            interval = (now - self._last_start) * 1000.0
        self._last_start = now
        self._pruned.append(pruned)
        return interval

    def idle(self) -> None:
        self._last_start = None
        self._pruned.clear()


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
