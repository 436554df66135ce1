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
    up: StreamResampler = field(default_factory=lambda: StreamResampler(8000, 24000))
    down: StreamResampler = field(default_factory=lambda: StreamResampler(24000, 8000))
    ended_in: bool = False
    ended_out: bool = False

    def inbound(self, fields: Fields) -> dict[bytes, bytes | int]:
        """A caller frame (mu-law 8 kHz) as the worker wants it (PCM16 24 kHz)."""
        entry = decode_inbound(fields)
        if isinstance(entry, StreamEnd):
            self.ended_in = True
            return entry.encode()
        if not entry.audio or len(entry.audio) > MAX_INBOUND_BYTES:
            raise StreamEntryError("bad_audio_size", str(len(entry.audio)))
        pcm = self.up.process(mulaw_decode(entry.audio))
        return entry.with_audio(pcm.tobytes())

    def outbound(self, fields: Fields) -> dict[bytes, bytes | int]:
        """A reply chunk (PCM16 24 kHz) as Twilio wants it (mu-law 8 kHz)."""
        entry = decode_outbound(fields)
        if isinstance(entry, StreamEnd):
            self.ended_out = True
            return entry.encode()
        size = len(entry.audio)
        if size == 0 or size % 2 or size > MAX_OUTBOUND_BYTES:
            raise StreamEntryError("bad_audio_size", str(size))
        pcm8k = self.down.process(np.frombuffer(entry.audio, dtype=np.int16))
        return OutboundChunk(
            mulaw_encode(pcm8k), entry.response_id, entry.item_id, entry.offset_us, entry.stamp_us
        ).encode()


__all__ = ["CallTranscoder", "InboundFrame", "OutboundChunk"]
