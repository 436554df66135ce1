"""Audio on the emulators' wires, shared by the Realtime (/v1/realtime) and Live
(/v1/live/sessions) emulators: G.711 A-law beside the shared mu-law, decoding and encoding a
:class:`~sim.realtime_rules.WireFormat`, resampling for an echo, and the energy VAD both use to
hear when the caller starts and stops talking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from shared.audio import (
    AudioFormatError,
    Int16Array,
    StreamResampler,
    mulaw_decode,
    mulaw_encode,
)
from sim.realtime_rules import WireFormat

VAD_WINDOW_MS = 20
VAD_THRESHOLD_DBFS = -40.0

# G.711 A-law as two lookup tables, bit-exact with CPython's audioop (alaw2lin / lin2alaw), as
# shared.audio does for mu-law: the emulator must hear (VAD) and speak the format it was given.

_ALAW_SEGMENT_ENDS = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def _alaw_decode_table() -> Int16Array:
    codes = np.arange(256, dtype=np.int32) ^ 0x55  # even bits are sent inverted
    mantissa = (codes & 0x0F) << 4
    segment = (codes & 0x70) >> 4
    magnitude = np.where(
        segment == 0, mantissa + 8, (mantissa + 0x108) << np.maximum(segment - 1, 0)
    )
    return np.where(codes & 0x80, magnitude, -magnitude).astype(np.int16)


def _alaw_encode_table() -> np.ndarray[Any, np.dtype[np.uint8]]:
    # Indexed by the uint16 view of a sample; A-law codes 13-bit samples (the 3 low bits go).
    value = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)
    value >>= 3
    mask = np.where(value >= 0, 0xD5, 0x55)
    value = np.where(value >= 0, value, -value - 1)
    segment = np.searchsorted(_ALAW_SEGMENT_ENDS, value)  # 8: beyond the last, saturate
    quantised = (value >> np.where(segment < 2, 1, segment)) & 0x0F
    code = np.where(segment >= 8, 0x7F, (np.minimum(segment, 7) << 4) | quantised) ^ mask
    return (code & 0xFF).astype(np.uint8)


_ALAW_DECODE = _alaw_decode_table()
_ALAW_ENCODE = _alaw_encode_table()


def alaw_decode(data: bytes | bytearray | memoryview) -> Int16Array:
    """A-law bytes -> int16 samples (one per byte), as ``audioop.alaw2lin(data, 2)``."""
    return _ALAW_DECODE.take(np.frombuffer(data, dtype=np.uint8))


def alaw_encode(samples: Int16Array) -> bytes:
    """int16 samples -> A-law bytes, as ``audioop.lin2alaw(pcm, 2)``."""
    return _ALAW_ENCODE.take(samples.view(np.uint16)).tobytes()


def decode(fmt: WireFormat, data: bytes | bytearray) -> Int16Array:
    """Wire bytes of ``fmt`` -> int16 samples at ``fmt.rate`` (a trailing odd PCM byte is
    dropped: half a sample is not audio)."""
    if fmt.encoding == "g711_ulaw":
        return mulaw_decode(data)
    if fmt.encoding == "g711_alaw":
        return alaw_decode(data)
    return np.frombuffer(bytes(data[: len(data) // 2 * 2]), dtype="<i2").astype(np.int16)


def encode(fmt: WireFormat, samples: Int16Array) -> bytes:
    """int16 samples at ``fmt.rate`` -> wire bytes of ``fmt``."""
    if fmt.encoding == "g711_ulaw":
        return mulaw_encode(samples)
    if fmt.encoding == "g711_alaw":
        return alaw_encode(samples)
    return samples.astype("<i2").tobytes()


def at_rate(samples: Int16Array, src: int, dst: int) -> Int16Array | None:
    """``samples`` resampled from ``src`` to ``dst`` Hz, or None when the shared resampler has
    no such pair (then the emulator answers with its own voice instead of an echo)."""
    if src == dst:
        return samples
    try:
        return StreamResampler(src, dst).process(samples)
    except AudioFormatError:
        return None


def dbfs(samples: Int16Array) -> float:
    rms = np.sqrt(np.mean(samples.astype(np.float64) ** 2)) if samples.size else 0.0
    return float(20 * np.log10(max(float(rms), 1e-9) / 32768))


@dataclass(frozen=True, slots=True)
class VadEvent:
    """The caller started or stopped talking, ``at_ms`` into the input (the stop: when the
    silence that ends the turn was complete)."""

    kind: Literal["started", "stopped"]
    at_ms: float


class EnergyVad:
    """Energy VAD over 20 ms windows of one input format: speech is a window above -40 dBFS;
    a turn ends after ``silence_ms`` of windows below it. Pure: bytes in, events out."""

    def __init__(self, fmt: WireFormat, silence_ms: float = 500.0) -> None:
        self.fmt = fmt
        self.silence_ms = silence_ms
        self.audio_ms = 0.0  # input heard so far
        self.speaking = False
        self.quiet_ms = 0.0  # silence since the last speech window, while speaking
        self._carry = bytearray()  # input not yet a whole window

    def feed(self, data: bytes) -> list[VadEvent]:
        self._carry += data
        window = self.fmt.nbytes(VAD_WINDOW_MS)
        events: list[VadEvent] = []
        while len(self._carry) >= window:
            level = dbfs(decode(self.fmt, self._carry[:window]))
            del self._carry[:window]
            self.audio_ms += VAD_WINDOW_MS
            if level > VAD_THRESHOLD_DBFS:
                self.quiet_ms = 0.0
                if not self.speaking:
                    self.speaking = True
                    events.append(VadEvent("started", self.audio_ms - VAD_WINDOW_MS))
            elif self.speaking:
                self.quiet_ms += VAD_WINDOW_MS
                if self.quiet_ms >= self.silence_ms:
                    self.speaking = False
                    events.append(VadEvent("stopped", self.audio_ms))
        return events
