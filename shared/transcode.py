"""The transcoder's per-call core: entries in, entries out, resampler state kept per direction.

Pure: takes decoded stream entries and returns the entries to write (under the same IDs, see
:mod:`shared.streams`). One :class:`CallTranscoder` per call, so each direction's filter history
runs continuously across 20 ms frames and across the model's variably sized deltas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shared.audio import StreamResampler, mulaw_decode, mulaw_encode
from shared.streams import (
    Fields,
    InboundFrame,
    OutboundChunk,
    StreamEnd,
    StreamEntryError,
    decode_inbound,
    decode_outbound,
)

# A Twilio frame is 160 bytes; allow generous but bounded frames so garbage cannot balloon memory.
MAX_INBOUND_BYTES = 1600
MAX_OUTBOUND_BYTES = 24000 * 2 * 10  # ten seconds of PCM16 at 24 kHz in one delta


@dataclass
class CallTranscoder:
    """``rate`` is the PCM16 rate the worker and OpenAI use (``Settings.pcm_rate``)."""

    rate: int = 24000
    ended_in: bool = False
    ended_out: bool = False
    up: StreamResampler = field(init=False)
    down: StreamResampler = field(init=False)
    max_outbound_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.up = StreamResampler(8000, self.rate)
        self.down = StreamResampler(self.rate, 8000)
        # Ten seconds of PCM16 in one delta at most, so garbage cannot balloon memory.
        self.max_outbound_bytes = MAX_OUTBOUND_BYTES * self.rate // 24000

    def inbound(self, fields: Fields) -> dict[bytes, bytes | int]:
        """A caller frame (mu-law 8 kHz) as the worker wants it (PCM16 at ``rate``)."""
        entry = decode_inbound(fields)
        if isinstance(entry, StreamEnd):
            self.ended_in = True
            return entry.encode()
        if not entry.audio or len(entry.audio) > MAX_INBOUND_BYTES:
            raise StreamEntryError("bad_audio_size", str(len(entry.audio)))
        pcm = self.up.process(mulaw_decode(entry.audio))
        return entry.with_audio(pcm.tobytes())

    def outbound(self, fields: Fields) -> dict[bytes, bytes | int]:
        """A reply chunk (PCM16 at ``rate``) as Twilio wants it (mu-law 8 kHz)."""
        entry = decode_outbound(fields)
        if isinstance(entry, StreamEnd):
            self.ended_out = True
            return entry.encode()
        size = len(entry.audio)
        if size == 0 or size % 2 or size > self.max_outbound_bytes:
            raise StreamEntryError("bad_audio_size", str(size))
        pcm8k = self.down.process(np.frombuffer(entry.audio, dtype=np.int16))
        return OutboundChunk(
            mulaw_encode(pcm8k), entry.response_id, entry.item_id, entry.offset_us, entry.stamp_us
        ).encode()


__all__ = ["CallTranscoder", "InboundFrame", "OutboundChunk"]
