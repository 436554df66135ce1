"""One call's stereo recording, placed in time from what the pipeline's streams carry.

Pure: the recorder reads a call's ``in.pcmu`` (the caller, as Twilio sent it), ``out.pcmu`` (the
reply, as the edge sends it to Twilio) and ``cmd`` (its ``clear``s) and hands each entry here;
this module says which samples go where in the two channels. No files, no clock.

* Left, the caller: each 20 ms frame at its Twilio ``timestamp`` (milliseconds since the stream
  started), so frames lost upstream leave silence in their place and nothing shifts.
* Right, what the caller heard: Twilio plays what it is sent in order, in real time, on its 20 ms
  frame clock. A reply chunk starts playing at the first frame boundary after it was written to
  the stream (its entry ID, Redis's clock) or when the audio before it has played, whichever is
  later. A ``clear`` (barge-in) stops playback at its own time: what was queued after that moment
  is taken back out (it was never heard), and the rest of the cleared response is dropped, as the
  edge drops it. Both channels share one origin: the call's start as the edge registered it
  (``started_us``); the hosts' clocks are assumed in step, as the hop-latency metrics assume.

The state (:meth:`CallRecording.to_json`) is small and saved with the audio, so a recorder that
restarts goes on exactly where the file is, and an entry handled twice writes the same samples
in the same place again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from shared.audio import mulaw_decode
from shared.streams import InboundFrame, OutboundChunk

RATE = 8000
FRAME_MS = 20
_SAMPLES_PER_MS = RATE // 1000
KEEP_SEGMENTS_MS = 120_000  # queued audio a clear may still take back (Twilio's buffer)


@dataclass(frozen=True, slots=True)
class Write:
    """Samples for one channel (0 left, 1 right) from ``offset`` (a sample index)."""

    channel: int
    offset: int
    samples: np.ndarray  # int16


def _entry_ms(entry_id: bytes | str) -> int:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(raw.partition("-")[0] or 0)


def id_key(entry_id: bytes | str) -> tuple[int, int]:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = raw.partition("-")
    return int(ms or 0), int(seq or 0)


@dataclass
class CallRecording:
    """The playout model and the cursors of one call's recording."""

    origin_ms: int  # the call's start (started_us // 1000): sample 0 of both channels
    cursors: dict[str, str] = field(default_factory=dict)  # stream name -> last entry applied
    playing_until_ms: float = 0.0  # when Twilio's buffer, as modelled, runs dry (call time)
    cleared: list[str] = field(default_factory=list)  # responses a clear has cut
    last_clear_ms: float = -1.0
    # Reply audio placed but possibly not yet heard: [start_ms, end_ms] (a clear takes it back).
    segments: list[list[float]] = field(default_factory=list)
    caller_done: bool = False
    reply_done: bool = False
    length: list[int] = field(default_factory=lambda: [0, 0])  # samples written per channel

    # --- cursors ---------------------------------------------------------------------------
    def applied(self, stream: str, entry_id: bytes) -> bool:
        """Whether this entry is already in the recording (re-read after a restart)."""
        done = self.cursors.get(stream)
        return done is not None and id_key(entry_id) <= id_key(done)

    def _advance(self, stream: str, entry_id: bytes) -> None:
        self.cursors[stream] = entry_id.decode()

    def _write(self, channel: int, offset: int, samples: np.ndarray) -> Write:
        self.length[channel] = max(self.length[channel], offset + samples.size)
        return Write(channel, offset, samples)

    # --- the caller ------------------------------------------------------------------------
    def caller(self, stream: str, entry_id: bytes, frame: InboundFrame) -> list[Write]:
        self._advance(stream, entry_id)
        if not frame.audio or frame.timestamp_ms < 0:
            return []
        return [self._write(0, frame.timestamp_ms * _SAMPLES_PER_MS, mulaw_decode(frame.audio))]

    def caller_ended(self, stream: str, entry_id: bytes) -> None:
        self._advance(stream, entry_id)
        self.caller_done = True

    # --- what the caller heard ---------------------------------------------------------------
    def reply(self, stream: str, entry_id: bytes, chunk: OutboundChunk) -> list[Write]:
        self._advance(stream, entry_id)
        if chunk.response_id in self.cleared or not chunk.audio:
            return []
        arrived = _entry_ms(entry_id) - self.origin_ms
        frame_start = -(-arrived // FRAME_MS) * FRAME_MS  # Twilio's next 20 ms frame
        start = max(float(frame_start), self.playing_until_ms)
        samples = mulaw_decode(chunk.audio)
        end = start + samples.size / _SAMPLES_PER_MS
        if arrived < self.last_clear_ms:  # queued before a clear already applied: cut by it
            end = min(end, max(start, self.last_clear_ms))
            samples = samples[: int((end - start) * _SAMPLES_PER_MS)]
        self.playing_until_ms = end
        if samples.size == 0:
            return []
        self.segments.append([start, end])
        self.segments = [s for s in self.segments if s[1] > end - KEEP_SEGMENTS_MS]
        return [self._write(1, int(start * _SAMPLES_PER_MS), samples)]

    def clear(self, stream: str, entry_id: bytes, response_id: str) -> list[Write]:
        """A barge-in at the entry's time: what would have played after it never did."""
        self._advance(stream, entry_id)
        at = float(_entry_ms(entry_id) - self.origin_ms)
        if response_id and response_id not in self.cleared:
            self.cleared.append(response_id)
        self.last_clear_ms = max(self.last_clear_ms, at)
        writes: list[Write] = []
        for start, end in self.segments:
            cut = max(start, at)
            if end > cut:
                silence = np.zeros(int((end - cut) * _SAMPLES_PER_MS), dtype=np.int16)
                writes.append(self._write(1, int(cut * _SAMPLES_PER_MS), silence))
        self.segments = [[s, min(e, at)] for s, e in self.segments if min(e, at) > s]
        self.playing_until_ms = min(self.playing_until_ms, max(at, 0.0))
        return writes

    def reply_ended(self, stream: str, entry_id: bytes) -> None:
        self._advance(stream, entry_id)
        self.reply_done = True

    def other(self, stream: str, entry_id: bytes) -> None:
        """An entry with nothing for the recording (a hang-up command): only the cursor moves."""
        self._advance(stream, entry_id)

    # --- persistence -----------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> CallRecording:
        data = json.loads(text)
        return cls(**data)


def interleave(left: np.ndarray, right: np.ndarray) -> bytes:
    """Two int16 channels as stereo frames (the shorter padded with silence)."""
    n = max(left.size, right.size)
    stereo = np.zeros((n, 2), dtype="<i2")
    stereo[: left.size, 0] = left
    stereo[: right.size, 1] = right
    return stereo.tobytes()
