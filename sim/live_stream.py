"""The Live model's output as one continuous stream: what each delta carries (pure, no clock).

The Live API sends its audio as one stream for the whole session, in real time, silence
included as zero samples; when the caller talks over the model, the speech stops and the stream
goes on with silence, and no event says so. Transcripts of what was spoken come as deltas on the
session timeline, on 200 ms boundaries, as the audio they describe is sent, with no done event.
:class:`OutputStream` decides, chunk by chunk, what that stream carries; the session's pump
sends one chunk every ``chunk_ms`` of wall time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from sim.realtime_rules import WireFormat
from sim.wire_audio import encode

TRANSCRIPT_WINDOW_MS = 200


@dataclass
class Utterance:
    """Something the model says: its audio in the session's format and its transcript."""

    audio: bytes
    text: str
    kind: str  # "echo", "greeting", "commentary", "tool_result"
    turn: int = 0  # the caller's turn it answers (0: none)
    started_ms: int | None = None  # session timeline, once it began to play
    sent: int = 0  # bytes of ``audio`` sent
    interrupted_ms: int | None = None  # when the caller cut it off
    # transcript windows not yet sent: (start_ms, end_ms, text)
    windows: deque[tuple[int, int, str]] = field(default_factory=deque)

    @property
    def finished(self) -> bool:
        return self.interrupted_ms is not None or self.sent >= len(self.audio)


@dataclass(frozen=True, slots=True)
class Chunk:
    audio: bytes  # exactly chunk_ms of the session's format
    transcripts: list[tuple[int, int, str]]  # output transcript deltas due now
    speech: bool  # whether any of it is the model speaking


class OutputStream:
    """The stream's position on the session timeline and the utterances queued to play."""

    def __init__(self, fmt: WireFormat, chunk_ms: int) -> None:
        self.fmt = fmt
        self.chunk_ms = chunk_ms
        self.chunk_bytes = fmt.nbytes(chunk_ms)
        self.position_ms = 0
        self.queue: deque[Utterance] = deque()
        self.spoken: list[Utterance] = []  # every utterance that began to play
        # zero samples in the session's format (G.711 codes zero as 0xFF / 0xD5, not 0x00)
        self._silence = encode(fmt, np.zeros(fmt.rate * chunk_ms // 1000, dtype=np.int16))
        self._transcribing: list[Utterance] = []  # utterances with transcript windows due

    @property
    def speaking(self) -> bool:
        """Whether the model is saying something now or has something queued to say."""
        return bool(self.queue)

    def say(self, utterance: Utterance) -> None:
        self.queue.append(utterance)

    def interrupt(self) -> Utterance | None:
        """The caller talked over the model: what it was saying stops here, and what it had
        queued is dropped. Returns the utterance cut off, if one was playing."""
        current = self.queue[0] if self.queue and self.queue[0].started_ms is not None else None
        if current is not None:
            current.interrupted_ms = self.position_ms
            current.windows.clear()
        self.queue.clear()
        return current

    def next_chunk(self) -> Chunk:
        """The next ``chunk_ms`` of the stream: speech where there is some, silence after."""
        out = bytearray()
        transcripts: list[tuple[int, int, str]] = []
        speech = False
        while len(out) < self.chunk_bytes and self.queue:
            utterance = self.queue[0]
            if utterance.started_ms is None:
                at = self.position_ms + int(self.fmt.ms(len(out)))
                self._begin(utterance, at)
            take = utterance.audio[utterance.sent : utterance.sent + self.chunk_bytes - len(out)]
            utterance.sent += len(take)
            out += take
            speech = speech or bool(take)
            if utterance.finished:
                self.queue.popleft()
        self.position_ms += self.chunk_ms
        for utterance in self._transcribing:
            while utterance.windows and (
                utterance.windows[0][1] <= self.position_ms or utterance.finished
            ):
                transcripts.append(utterance.windows.popleft())
        self._transcribing = [u for u in self._transcribing if u.windows]
        if len(out) < self.chunk_bytes:
            out += self._silence[: self.chunk_bytes - len(out)]
        return Chunk(bytes(out), transcripts, speech)

    def _begin(self, utterance: Utterance, at_ms: int) -> None:
        utterance.started_ms = at_ms
        self.spoken.append(utterance)
        duration = self.fmt.ms(len(utterance.audio))
        utterance.windows.extend(transcript_windows(at_ms, duration, utterance.text))
        self._transcribing.append(utterance)


def transcript_windows(
    start_ms: float, duration_ms: float, text: str
) -> list[tuple[int, int, str]]:
    """``text`` spread over the 200 ms windows of the session timeline that ``duration_ms``
    of audio from ``start_ms`` covers, each window's words with their leading space (the
    deltas concatenate into the text)."""
    words = text.split()
    first = int(start_ms) // TRANSCRIPT_WINDOW_MS
    last = max(first + 1, -(-int(start_ms + duration_ms) // TRANSCRIPT_WINDOW_MS))
    n = last - first
    out = []
    for k in range(n):
        part = words[k * len(words) // n : (k + 1) * len(words) // n]
        if part:
            begin = (first + k) * TRANSCRIPT_WINDOW_MS
            out.append((begin, begin + TRANSCRIPT_WINDOW_MS, " " + " ".join(part)))
    return out
