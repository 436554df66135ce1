"""Twilio's outbound buffer: what the gateway sends, played to the caller in real time (pure).

Audio plays at 8000 bytes a second in 20 ms windows on a clock the caller of :meth:`Playback.tick`
passes in; a ``mark`` comes back once the audio before it has played, and ``clear`` drops what has
not played and returns the pending marks at once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from sim.twilio_wire import BYTES_PER_S, FRAME_BYTES


@dataclass(slots=True)
class ReplyChunk:
    """One ``media`` message from the gateway, in seconds since the stream started.

    ``received_at`` is read off the monotonic clock; ``played_at`` and ``finished_at`` are on the
    playback clock (frame k's window starts at k x 20 ms). The two agree while pacing keeps time.
    """

    size: int  # bytes of mu-law = samples = size / 8 ms
    received_at: float
    played_at: float | None = None  # when its first sample played
    finished_at: float | None = None  # when its last sample played
    cleared_bytes: int = 0  # dropped unplayed by a clear


@dataclass(slots=True)
class _Queued:
    data: bytes
    chunk: ReplyChunk
    pos: int = 0


class Playback:
    """Twilio's playback of what the gateway sends: audio and marks in order, 8000 bytes a second.

    Pure: :meth:`tick` is handed the playback clock. Each tick plays the next 20 ms window; a
    mark comes back at the first tick after all audio before it has finished playing (never
    early, at most one window late), or at once from :meth:`clear`.
    """

    def __init__(self) -> None:
        self._queue: deque[_Queued | str] = deque()  # str: a mark's name
        self._due: list[str] = []  # marks whose audio finished inside the last window
        self.chunks: list[ReplyChunk] = []
        self.heard = bytearray()  # what the caller heard, window by window (0xFF: nothing)
        self.played_bytes = 0

    def add_audio(self, payload: bytes, now: float) -> ReplyChunk:
        chunk = ReplyChunk(len(payload), now)
        self.chunks.append(chunk)
        self._queue.append(_Queued(payload, chunk))
        return chunk

    def add_mark(self, name: str) -> None:
        self._queue.append(name)

    @property
    def idle(self) -> bool:
        """Nothing left to play and no mark left to return."""
        return not self._queue and not self._due

    def pending_bytes(self) -> int:
        return sum(len(q.data) - q.pos for q in self._queue if isinstance(q, _Queued))

    def tick(self, at: float, nbytes: int = FRAME_BYTES) -> tuple[bytes, list[str]]:
        """Play the window [at, at + nbytes/8000): the audio played, and the marks now due."""
        marks, self._due = self._due, []
        queue = self._queue
        while queue and isinstance(queue[0], str):
            marks.append(queue.popleft())  # type: ignore[arg-type]
        out = bytearray()
        while queue and len(out) < nbytes:
            head = queue[0]
            if isinstance(head, str):
                self._due.append(queue.popleft())  # type: ignore[arg-type]
                continue
            if head.chunk.played_at is None:
                head.chunk.played_at = at + len(out) / BYTES_PER_S
            take = min(nbytes - len(out), len(head.data) - head.pos)
            out += head.data[head.pos : head.pos + take]
            head.pos += take
            if head.pos == len(head.data):
                queue.popleft()
                head.chunk.finished_at = at + len(out) / BYTES_PER_S
        self.played_bytes += len(out)
        self.heard += out
        self.heard += b"\xff" * (nbytes - len(out))
        return bytes(out), marks

    def clear(self) -> list[str]:
        """Drop everything unplayed; every pending mark comes back at once, in order."""
        marks = self._due
        for item in self._queue:
            if isinstance(item, str):
                marks.append(item)
            else:
                item.chunk.cleared_bytes += len(item.data) - item.pos
        self._queue.clear()
        self._due = []
        return marks
