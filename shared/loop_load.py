"""How busy a stage's event loop is, from how late a periodic timer fires: the arithmetic alone.

A stage serves every call on one event loop. When the loop has more work than it can do, every
callback waits, and a timer set to fire every ``interval_s`` fires late by about as long as the
work queued ahead of it. That lateness is the loop's lag: cheap to measure (one timer, a few
times a second) and the figure that matters for audio, which must leave every 20 ms.

The formula (documented in docs/deploy.md, "Load metrics"):

* each tick: ``late = max(0, fired_at - due_at)``;
* smoothed: ``lag += alpha * (late - lag)``, an exponentially weighted mean whose time constant
  is ``tau_s``: ``alpha = 1 - exp(-interval_s / tau_s)``;
* ``saturation = min(1, lag / budget_s)``, with ``budget_s`` one audio frame (20 ms): 1 means the
  loop answers a timer a whole frame late on average, the point where callers hear it.

Pure: no clock is read here; the runtime passes each lateness in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FRAME_S = 0.020  # one Twilio frame: the lag at which a stage counts as saturated


@dataclass(slots=True)
class LoopLag:
    """The smoothed lag of one event loop and the saturation it implies."""

    interval_s: float = 0.1  # how often the timer fires
    tau_s: float = 2.0  # the smoothing's time constant
    budget_s: float = FRAME_S
    lag_s: float = 0.0  # the smoothed lateness

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.tau_s <= 0 or self.budget_s <= 0:
            raise ValueError(
                f"interval_s, tau_s and budget_s must be positive: "
                f"{self.interval_s!r}, {self.tau_s!r}, {self.budget_s!r}"
            )

    @property
    def alpha(self) -> float:
        return 1.0 - math.exp(-self.interval_s / self.tau_s)

    def observe(self, lateness_s: float) -> None:
        """One tick fired ``lateness_s`` after it was due (a negative figure, a timer that fired
        early by the clock's resolution, counts as on time)."""
        late = max(0.0, lateness_s)
        self.lag_s += self.alpha * (late - self.lag_s)

    @property
    def saturation(self) -> float:
        """0 (idle) to 1 (a frame late on average, or worse)."""
        return min(1.0, self.lag_s / self.budget_s)
