"""What the edge sends Twilio for the model's reply, and what the caller has heard of it.

Two pure halves of one mechanism (barge-in needs both):

* :class:`OutboundPlayback` (edge side): turns reply chunks into Twilio ``media`` messages with a
  ``mark`` after every ``mark_every_ms`` of audio, named ``<item_id>:<end_ms>``; Twilio returns a
  mark once the caller has heard everything before it, so the mark names are the truth about
  playback. After a ``clear`` it drops what is still arriving of the interrupted response.
* :class:`HeardTracker` (worker side): from those returned marks, how many milliseconds of each
  reply item the caller has heard, and whether a reply is still playing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.streams import OutboundChunk
from shared.twilio_media import clear_message, mark_message, media_message

MARK_EVERY_MS = 100
_BYTES_PER_MS = 8  # mu-law at 8 kHz


def mark_name(item_id: str, end_ms: int) -> str:
    return f"{item_id}:{end_ms}"


def parse_mark_name(name: str) -> tuple[str, int] | None:
    """``(item_id, end_ms)`` of one of our marks, or None for anything else."""
    item_id, sep, end = name.rpartition(":")
    if not sep or not item_id or not end.isdigit():
        return None
    return item_id, int(end)


@dataclass
class OutboundPlayback:
    stream_sid: str
    mark_every_ms: int = MARK_EVERY_MS
    cleared: set[str] = field(default_factory=set)
    dropped_chunks: int = 0

    def chunk(self, chunk: OutboundChunk) -> list[str]:
        """Twilio messages for one reply chunk (mu-law), or none if its response was cleared."""
        if chunk.response_id in self.cleared:
            self.dropped_chunks += 1
            return []
        messages: list[str] = []
        audio = chunk.audio
        step = self.mark_every_ms * _BYTES_PER_MS
        start_us = chunk.offset_us
        for pos in range(0, len(audio), step):
            piece = audio[pos : pos + step]
            end_ms = (start_us + (pos + len(piece)) * 125) // 1000
            messages.append(media_message(self.stream_sid, piece))
            messages.append(mark_message(self.stream_sid, mark_name(chunk.item_id, end_ms)))
        return messages

    def clear(self, response_id: str) -> list[str]:
        """Barge-in: empty Twilio's buffer and refuse the rest of ``response_id``."""
        if response_id:
            self.cleared.add(response_id)
        return [clear_message(self.stream_sid)]


@dataclass
class HeardTracker:
    """Per reply item: milliseconds sent towards the caller, and heard (from returned marks)."""

    sent_ms: dict[str, float] = field(default_factory=dict)
    heard_ms: dict[str, int] = field(default_factory=dict)
    last_item: str | None = None

    def sent(self, item_id: str, end_ms: float) -> None:
        self.sent_ms[item_id] = max(self.sent_ms.get(item_id, 0.0), end_ms)
        self.last_item = item_id

    def mark(self, name: str) -> bool:
        """Record a returned mark; False when it is not one of ours."""
        parsed = parse_mark_name(name)
        if parsed is None:
            return False
        item_id, end_ms = parsed
        if end_ms > self.heard_ms.get(item_id, -1):
            self.heard_ms[item_id] = end_ms
        return True

    def heard(self, item_id: str) -> int:
        return self.heard_ms.get(item_id, 0)

    def cut(self, item_id: str) -> int:
        """A barge-in stopped ``item_id``: nothing more of it will play, so what was sent is now
        what was heard. Returns that, in ms."""
        heard_ms = self.heard(item_id)
        self.sent_ms[item_id] = float(heard_ms)
        return heard_ms

    def unheard_ms(self) -> float:
        """How much of the last reply item was sent but not yet heard (what is left to play)."""
        item = self.last_item
        return max(0.0, self.sent_ms.get(item, 0.0) - self.heard(item)) if item else 0.0

    def playing(self, tolerance_ms: float = 3.0) -> str | None:
        """The item the caller is still hearing (sent but not yet all heard), if any."""
        item = self.last_item
        if item is None:
            return None
        if self.sent_ms.get(item, 0.0) - self.heard(item) > tolerance_ms:
            return item
        return None
