"""Capped exponential backoff with full jitter, as a pure value (the caller sleeps).

Used for every reconnect in the gateway (Redis, OpenAI): full jitter spreads the reconnects of
many calls that lost the same server at the same moment, and the cap keeps recovery prompt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    base_s: float = 0.1
    cap_s: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one failed attempt."""
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """After a success: the next failure starts again from ``base_s``."""
        self.attempt = 0
