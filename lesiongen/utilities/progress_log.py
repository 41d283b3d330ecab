"""Progress with an ETA through logging, for long steps that have no progress bar of their own.

tqdm draws on the terminal only; these lines also reach the training log (``training_log.txt``), so a user who
comes back to a run that seems stuck sees how far a calibration or a batch of synthetic cases has got and about
how long it still needs: ``WHAT: DONE/TOTAL UNIT (PCT), ELAPSED elapsed, about ETA left``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

LOG_INTERVAL_SECONDS = 30.0


def format_seconds(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h07m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressLog:
    """Counts work done and logs it with an ETA: after the first unit (the earliest useful estimate), then at most
    every ``interval`` seconds, and when everything is done."""

    def __init__(self, logger: logging.Logger, what: str, total: int = 0, unit: str = "",
                 interval: float = LOG_INTERVAL_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.what = what
        self.total = total
        self.unit = unit
        self.interval = interval
        self.clock = clock
        self.done = 0
        self.start = clock()
        self.last_logged: float | None = None

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n, self.total)

    def update(self, done: int, total: int) -> None:
        """``done`` of ``total`` units finished (a callback for code that counts its own work)."""
        self.done, self.total = done, total
        now = self.clock()
        finished = total > 0 and done >= total
        if finished or self.last_logged is None or now - self.last_logged >= self.interval:
            self.last_logged = now
            self.logger.info("%s", self.message(now))

    def message(self, now: float) -> str:
        elapsed = now - self.start
        unit = f" {self.unit}" if self.unit else ""
        text = f"{self.what}: {self.done}/{self.total}{unit}"
        if self.total > 0:
            text += f" ({100 * self.done / self.total:.0f}%)"
        text += f", {format_seconds(elapsed)} elapsed"
        if 0 < self.done < self.total:
            text += f", about {format_seconds(elapsed / self.done * (self.total - self.done))} left"
        return text
