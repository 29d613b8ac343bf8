"""Rate-limited logging: a flood of bad frames must not become a flood of log lines."""

from __future__ import annotations

import logging
import time
from typing import Callable


class LogThrottle:
    """Logs each key at most once per ``interval_s``, then says how many were suppressed."""

    def __init__(self, logger: logging.Logger, interval_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless ``key`` was logged within the interval; True if logged."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            self.logger.log(level, msg + " (%d similar suppressed)", *args, suppressed)
        else:
            self.logger.log(level, msg, *args)
        return True
