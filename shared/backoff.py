"""Capped exponential backoff with equal jitter, as a pure value (the caller sleeps).

Used for every reconnect in the gateway (Redis, OpenAI). Equal jitter (a delay drawn between half
the ceiling and the ceiling) spreads the reconnects of many calls that lost the same server at the
same moment, like full jitter, but never retries at once: a server that just failed is not
hammered by the lucky draws. The cap keeps recovery prompt.
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
        """The delay before the next attempt, in [ceiling/2, ceiling] with the ceiling doubling
        from ``base_s`` up to ``cap_s``; each call counts one failed attempt."""
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """After a success: the next failure starts again from ``base_s``."""
        self.attempt = 0
