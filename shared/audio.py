"""The audio core: G.711 mu-law and streaming 8 kHz <-> 24 kHz resampling, for every 20 ms frame.

Why a hand-made FIR rather than a library resampler: a phone conversation has a few hundred
milliseconds of delay budget in all, and the pipeline resamples twice per round trip. soxr's
streaming mode holds back about 21 ms per stage (HQ) and 37 ms (VHQ); ``audioop.ratecv`` has no
delay but no real anti-aliasing filter either (images and aliases at about -10 dB). One
windowed-sinc low-pass of 96 taps at 24 kHz (Kaiser, beta 7, cut-off 4 kHz) gives a passband
flat within a fraction of a dB up to 3.4 kHz, more than 60 dB of rejection from 4.6 kHz, and a
group delay of 47.5 samples, about 2 ms, with nothing held back: every 8 kHz frame of N samples
yields exactly 3N samples at once.

Both directions run polyphase (the filter's taps split in three): upsampling computes each of the
three output phases from the 32 most recent input samples; downsampling computes only the outputs
it keeps. Each is one strided view and one matrix-vector product per frame; no Python loop runs
over samples. The codec is two lookup tables, bit-exact with CPython's ``audioop``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Int16Array = NDArray[np.int16]

# --- G.711 mu-law -----------------------------------------------------------------------------

_BIAS = 0x84
_CLIP = 32635


def _build_decode_table() -> NDArray[np.int16]:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def _build_encode_table() -> NDArray[np.uint8]:
    # Indexed by the uint16 view of a sample; same arithmetic as audioop.lin2ulaw (which first
    # drops the two low bits of a 16-bit sample, i.e. works on 14-bit magnitudes).
    samples = np.arange(65536, dtype=np.int32).astype(np.uint16).view(np.int16).astype(np.int32)
    value = samples >> 2
    mask = np.where(value < 0, 0x7F, 0xFF)
    value = np.where(value < 0, -value, value)
    value = np.minimum(value, 8159) + (_BIAS >> 2)
    # segment: position of the highest set bit above bit 5 (seg_uend = 0x3F, 0x7F, ... 0x1FFF)
    seg = np.searchsorted(np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), value)
    uval = (seg << 4) | ((value >> (seg + 1)) & 0x0F)
    code = np.where(seg >= 8, 0x7F ^ mask, uval ^ mask)
    return (code & 0xFF).astype(np.uint8)


_DECODE = _build_decode_table()
_ENCODE = _build_encode_table()


def mulaw_decode(data: bytes | bytearray | memoryview) -> Int16Array:
    """mu-law bytes -> int16 samples (one per byte)."""
    return _DECODE[np.frombuffer(data, dtype=np.uint8)]


def mulaw_encode(samples: Int16Array | bytes | bytearray | memoryview) -> bytes:
    """int16 samples (an array, or native-endian PCM16 bytes) -> mu-law bytes."""
    if not isinstance(samples, np.ndarray):
        if len(samples) % 2:
            raise ValueError(f"PCM16 bytes must have an even length, got {len(samples)}")
        samples = np.frombuffer(samples, dtype=np.int16)
    elif samples.dtype != np.int16:
        raise ValueError(f"samples must be int16, got {samples.dtype}")
    return _ENCODE[samples.view(np.uint16)].tobytes()


# --- resampling -------------------------------------------------------------------------------

RATIO = 3
TAPS = 96
_PHASE_TAPS = TAPS // RATIO


def _design_lowpass() -> NDArray[np.float64]:
    """Kaiser-windowed sinc at 24 kHz, cut-off 4 kHz, unity DC gain."""
    n = np.arange(TAPS) - (TAPS - 1) / 2
    cutoff = 4000.0 / 24000.0  # cycles per sample
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(TAPS, 7.0)
    return h / h.sum()


_LOWPASS = _design_lowpass()
# Upsampling: output phase p (0..2) at input position m uses taps h[p + 3k] on x[m - k].
_UP_PHASES = np.stack([_LOWPASS[p::RATIO][::-1] * RATIO for p in range(RATIO)])  # (3, 32)
_DOWN_TAPS = _LOWPASS[::-1].copy()
GROUP_DELAY_MS = (TAPS - 1) / 2 / 24000 * 1000


class StreamResampler:
    """Resamples one continuous stream (a call's direction) frame by frame, 8k <-> 24k.

    The filter history runs across calls to :meth:`process`, so frames join without clicks and
    any chunking gives the same output. Nothing is held back: the delay is the filter's alone.
    """

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        if (src_rate, dst_rate) not in ((8000, 24000), (24000, 8000)):
            raise ValueError(f"unsupported rates {src_rate}->{dst_rate}: only 8000<->24000")
        self.src_rate = src_rate
        self.dst_rate = dst_rate
        self._up = dst_rate > src_rate
        self._history_len = _PHASE_TAPS - 1 if self._up else TAPS - 1
        self.reset()

    def reset(self) -> None:
        self._history = np.zeros(self._history_len, dtype=np.float64)
        self._phase = 0  # downsampling: input samples to skip before the next kept output

    def process(self, samples: Int16Array) -> Int16Array:
        if samples.dtype != np.int16:
            raise ValueError(f"samples must be int16, got {samples.dtype}")
        if samples.size == 0:
            return np.zeros(0, dtype=np.int16)
        x = np.concatenate((self._history, samples.astype(np.float64)))
        if self._up:
            windows = np.lib.stride_tricks.sliding_window_view(x, _PHASE_TAPS)  # (N, 32)
            y = (windows @ _UP_PHASES.T).reshape(-1)  # interleave the three phases
        else:
            # Output j (kept) is centred on input index phase + 3j of the new samples.
            start = self._phase
            windows = np.lib.stride_tricks.sliding_window_view(x, TAPS)[start::RATIO]
            y = windows @ _DOWN_TAPS
            consumed = samples.size - start
            self._phase = (-consumed) % RATIO
        self._history = x[-self._history_len :].copy()
        return np.clip(np.rint(y), -32768, 32767).astype(np.int16)
