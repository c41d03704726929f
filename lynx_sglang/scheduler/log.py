"""The scheduler's log: one logger, notes said once, warnings at most once a minute."""

from __future__ import annotations

import logging
import time

logger = logging.getLogger("lynx_sglang")

WARNING_INTERVAL_S = 60.0


class NoteOnce:
    """Logs each distinct message once (per runtime: a layer's pass-through reason is the same every step)."""

    def __init__(self):
        self._said: set[str] = set()

    def __call__(self, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            logger.info("lynx-sglang: %s", message)


class Throttle:
    """Whether a once-a-minute warning may be logged now."""

    def __init__(self, interval_s: float = WARNING_INTERVAL_S):
        self.interval_s = interval_s
        self._last = -interval_s

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return False
        self._last = now
        return True
