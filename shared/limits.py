"""Small pure limiters for untrusted peers (time is passed in, never read)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K")


@dataclass
class TokenBucket:
    """Allows ``rate`` events a second on average, bursts up to ``burst``."""

    rate: float
    burst: float
    tokens: float = -1.0
    last: float = 0.0

    def allow(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.last = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class PendingSockets(Generic[K]):
    """Sockets that opened but have not sent a valid ``start`` yet, oldest first, held apart
    from the started streams so that they can never take a call's place.

    ``limit``: how many may wait at once; opening one more gives back the oldest to close.
    ``timeout_s``: how long one may wait; :meth:`overdue` gives back those past it.
    """

    limit: int
    timeout_s: float
    _opened: dict[K, float] = field(default_factory=dict)  # insertion order: oldest first

    def __len__(self) -> int:
        return len(self._opened)

    def __contains__(self, key: object) -> bool:
        return key in self._opened

    def open(self, key: K, now: float) -> list[K]:
        """A socket opened at ``now``; returns the oldest pending ones to close to make room."""
        evicted: list[K] = []
        while self._opened and len(self._opened) >= self.limit:
            oldest = next(iter(self._opened))
            del self._opened[oldest]
            evicted.append(oldest)
        self._opened[key] = now
        return evicted

    def started(self, key: K) -> bool:
        """The socket sent its start: it leaves the pending ones. ``False`` when it was not
        pending (evicted, or timed out, meanwhile)."""
        return self._opened.pop(key, None) is not None

    def closed(self, key: K) -> None:
        self._opened.pop(key, None)

    def overdue(self, now: float) -> list[K]:
        """The sockets that have waited longer than ``timeout_s`` (no longer pending)."""
        late = [k for k, at in self._opened.items() if now - at >= self.timeout_s]
        for key in late:
            del self._opened[key]
        return late
