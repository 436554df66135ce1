"""A stopping worker's drain: when each call it holds moves to another worker.

On SIGTERM the worker takes no new calls and moves each call it holds to a peer the way a
rollover moves it to a new session: at a quiet moment (the session core's ``quiet``: no caller
speech in progress, no reply being made or still playing, no tool running), so the seam falls
where nobody is talking. :class:`WorkerDrain` decides, for one call at one moment, whether it
moves now; the worker's shell asks it between two batches of the call's entries (a frame
boundary, where the call's cursors say exactly which frames the model has had).

* A quiet call moves at once, if a peer is alive to take it.
* With no peer alive the calls are kept (they may end on their own; a peer may start).
* Once ``WORKER_DRAIN_SECONDS`` have passed, whatever is left moves anyway (a peer or the next
  worker to start takes it over), and the shell logs that it was not quiet.

Pure: no clock is read here (the times are passed in), no Redis; :func:`peers_alive` reads the
workers' heartbeats the shell fetched (``XINFO CONSUMERS`` cannot tell: Redis 7.0 lists a
consumer only once it was given an entry, and its ``idle`` is not renewed by an empty read).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum


class Move(Enum):
    """What to do with one call now."""

    KEEP = "keep"  # not draining, or waiting for a quiet moment (or for a peer)
    QUIET = "quiet"  # hand it over now: a quiet moment, a peer alive
    BOUND = "bound"  # hand it over now: WORKER_DRAIN_SECONDS passed, quiet or not


@dataclass
class WorkerDrain:
    """One worker's drain, from SIGTERM (:meth:`begin`) to the bound."""

    bound_us: int
    started_us: int | None = None
    # Calls already told to move: each is moved once (the shell logs each decision once).
    moved: dict[str, Move] = field(default_factory=dict)

    @property
    def draining(self) -> bool:
        return self.started_us is not None

    def begin(self, now_us: int) -> None:
        """SIGTERM: the drain starts (a second SIGTERM does not restart the bound)."""
        if self.started_us is None:
            self.started_us = now_us

    def deadline_us(self) -> int | None:
        return None if self.started_us is None else self.started_us + self.bound_us

    def bound_passed(self, now_us: int) -> bool:
        deadline = self.deadline_us()
        return deadline is not None and now_us >= deadline

    def decide(self, call_sid: str, now_us: int, quiet: bool, peers: bool) -> Move:
        """Whether ``call_sid`` moves now. ``quiet``: the session core's predicate at this
        frame boundary; ``peers``: another worker is alive to take it. A call is told to move
        once; asked again after that, the answer is :attr:`Move.KEEP`."""
        if not self.draining or call_sid in self.moved:
            return Move.KEEP
        if self.bound_passed(now_us):
            move = Move.BOUND
        elif quiet and peers:
            move = Move.QUIET
        else:
            return Move.KEEP
        self.moved[call_sid] = move
        return move


def peers_alive(
    beats: Iterable[tuple[bytes | str, float]], me: str, now_ms: int, lease_ms: int
) -> bool:
    """Whether another worker is alive: a heartbeat (name, wall-clock ms) other than ``me``'s
    within ``lease_ms`` of ``now_ms`` (a live worker beats every ``lease_ms / 4``; a draining
    one has taken its own out, so two workers stopping together do not count on each other)."""
    for name, beat_ms in beats:
        if isinstance(name, bytes):
            name = name.decode(errors="replace")
        if name != me and now_ms - beat_ms < lease_ms:
            return True
    return False
