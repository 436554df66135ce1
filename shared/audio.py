"""The audio core: G.711 mu-law and streaming 8 kHz <-> 24 kHz resampling, for every 20 ms frame.

Why a hand-made FIR rather than a library resampler: a phone conversation has a few hundred
milliseconds of delay budget in all, and the pipeline resamples twice per round trip. soxr's
streaming mode holds back about 21 ms per stage. ``audioop.ratecv`` adds no delay but filters
nothing: it interpolates linearly up (images only ~5 dB down, 5 dB droop at 3.4 kHz) and drops
samples down (aliases at full level), as ``python -m bench.audio`` measures; and ``audioop`` is
gone from Python 3.13. One Kaiser-windowed sinc of 96 taps at 24 kHz (beta 8,
cut-off 3.95 kHz) is flat within 0.03 dB from DC to 3.4 kHz and at least 80 dB down from 4.6 kHz;
its group delay is 47.5 samples at 24 kHz, about 2 ms, and that is the whole delay: nothing is
held back. Every 8 kHz frame of N samples yields exactly 3N samples at once, and every 24 kHz
chunk yields each 8 kHz sample as soon as the input it is centred on has arrived.

Both directions run polyphase (the 96 taps split in three): upsampling computes each of the three
output phases from the 32 most recent input samples; downsampling computes only the outputs it
keeps. Each is written as a block-Toeplitz product, so a frame costs two small BLAS matrix
products on contiguous blocks of a preallocated buffer, and no Python loop runs over samples.

The taps are rounded to multiples of 2**-24, so with int16 input every product and partial sum is
an integer times 2**-24 well inside float64's 53 bits: the arithmetic is exact whatever order BLAS
sums in, and any chunking of a stream gives bit-identical output. The codec is two lookup
tables, bit-exact with CPython's ``audioop``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Int16Array = NDArray[np.int16]
FloatArray = NDArray[np.float64]


class AudioFormatError(ValueError):
    """Audio the core cannot take: not 1-D int16, PCM16 bytes of odd length, unsupported rates."""


# --- G.711 mu-law -----------------------------------------------------------------------------

_BIAS = 0x84


def _build_decode_table() -> Int16Array:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF  # codes are sent bit-inverted
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(codes & 0x80, -magnitude, magnitude).astype(np.int16)


def _build_encode_table() -> NDArray[np.uint8]:
    # Indexed by the uint16 view of a sample; the arithmetic of audioop.lin2ulaw, which drops the
    # two low bits of a 16-bit sample (14-bit magnitudes) before segmenting.
    value = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)
    value >>= 2
    mask = np.where(value < 0, 0x7F, 0xFF)
    value = np.minimum(np.abs(value), 8159) + (_BIAS >> 2)
    # Segment: how many of the ends 0x3F, 0x7F, ..., 0x1FFF lie below the value; 8 means beyond
    # the last segment (only 8159 + 33 = 0x2000), which encodes as the largest magnitude.
    seg = np.searchsorted(np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), value)
    code = np.where(seg >= 8, 0x7F, (seg << 4) | ((value >> (seg + 1)) & 0x0F)) ^ mask
    return (code & 0xFF).astype(np.uint8)


_DECODE = _build_decode_table()
_ENCODE = _build_encode_table()


def mulaw_decode(data: bytes | bytearray | memoryview) -> Int16Array:
    """mu-law bytes -> int16 samples (one per byte), as ``audioop.ulaw2lin(data, 2)``."""
    return _DECODE.take(np.frombuffer(data, dtype=np.uint8))


def mulaw_encode(samples: Int16Array | bytes | bytearray | memoryview) -> bytes:
    """int16 samples (an array, or native-endian PCM16 bytes) -> mu-law bytes.

    Bit-exact with ``audioop.lin2ulaw(pcm, 2)``. Raises :class:`AudioFormatError` for PCM16 bytes
    of odd length or an array that is not one-dimensional int16.
    """
    if not isinstance(samples, np.ndarray):
        size = memoryview(samples).nbytes
        if size % 2:
            raise AudioFormatError(f"PCM16 bytes must have an even length, got {size}")
        samples = np.frombuffer(samples, dtype=np.int16)
    _check_samples(samples)
    return _ENCODE.take(samples.view(np.uint16)).tobytes()


def _check_samples(samples: object) -> None:
    if not isinstance(samples, np.ndarray) or samples.dtype != np.int16 or samples.ndim != 1:
        what = f"{samples.dtype}{list(samples.shape)}" if isinstance(samples, np.ndarray) else None
        raise AudioFormatError(f"samples must be a 1-D int16 array, got {what or type(samples)}")


# --- resampling -------------------------------------------------------------------------------

RATIO = 3
TAPS = 96
_PHASE_TAPS = TAPS // RATIO  # 32: taps per phase, the same at every supported rate
# Taps are multiples of 2**-24 and their absolute values sum to under 2.4 per output (the
# upsampling gain spread over the phases), so with int16 input every product and partial sum is a
# multiple of 2**-24 below 2**17: 41 bits, which float64 (53) holds exactly, in any order of
# summation or chunking.
_TAP_GRID = 2.0**24
TELEPHONE_RATE = 8000


def _design_lowpass(ratio: int = RATIO) -> FloatArray:
    """Kaiser-windowed sinc at ``ratio`` x 8 kHz, cut-off 3.95 kHz, unity DC gain, taps on a
    2**-24 grid (96 taps at 24 kHz; the same 12 ms span, 32 taps a phase, at higher rates)."""
    taps_n = _PHASE_TAPS * ratio
    n = np.arange(taps_n) - (taps_n - 1) / 2
    cutoff = 3950.0 / (TELEPHONE_RATE * ratio)  # cycles per sample
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps_n, 8.0)
    taps: FloatArray = np.round(h / h.sum() * _TAP_GRID) / _TAP_GRID
    return taps


FILTER_TAPS = _design_lowpass()  # the 24 kHz low-pass both directions apply
FILTER_TAPS.flags.writeable = False


def _block_matrices(
    kernel: FloatArray, rows: int, cols: int, step_in: int, step_out: int
) -> tuple[FloatArray, FloatArray]:
    """The two halves of a block-Toeplitz filter: ``out = cur @ now + prev @ before``.

    ``kernel[p, d]`` weighs, for outputs of phase ``p``, the input ``d`` samples before the
    output's centre. Output column ``c`` of a block has phase ``c % step_out`` and is centred on
    input ``c // step_out * step_in`` of the current block (``rows`` samples); the taps that
    reach back past the block's start apply to the previous block.
    """
    j = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    phase, centre = c % step_out, c // step_out * step_in
    lag_now, lag_before = centre - j, centre - j + rows  # in [0, len) where the tap applies
    taps = kernel.shape[1]

    def pick(lag: NDArray[np.int64]) -> FloatArray:
        valid = (lag >= 0) & (lag < taps)
        return np.where(valid, kernel[phase, np.clip(lag, 0, taps - 1)], 0.0)

    return pick(lag_now), pick(lag_before)


_MATRICES: dict[tuple[int, bool], tuple[FloatArray, FloatArray]] = {}


def _matrices(ratio: int, up: bool) -> tuple[FloatArray, FloatArray]:
    """The block matrices for one rate and direction, built once per process and shared."""
    key = (ratio, up)
    if key not in _MATRICES:
        taps = FILTER_TAPS if ratio == RATIO else _design_lowpass(ratio)
        size = taps.size
        if up:  # a block of 32 inputs -> 32*ratio outputs; y[Rm+p] = sum_k R h[p+Rk] x[m-k]
            pair = _block_matrices(
                (ratio * taps).reshape(_PHASE_TAPS, ratio).T, _PHASE_TAPS, size, 1, ratio
            )
        else:  # a block of 32*ratio inputs -> 32 outputs; y[q] = sum_k h[k] x[Rq-k]
            pair = _block_matrices(taps[None, :], size, _PHASE_TAPS, ratio, 1)
        for m in pair:
            m.flags.writeable = False
        _MATRICES[key] = pair
    return _MATRICES[key]


def resampling_ratio(rate: int) -> int:
    """How many PCM samples one 8 kHz sample becomes at ``rate``: a whole multiple of 8000 from
    16000 (GPT-Live's lower rate; the Realtime API takes none below 24000, which the settings
    check), else :class:`AudioFormatError`."""
    if rate < 2 * TELEPHONE_RATE or rate % TELEPHONE_RATE or rate > 48 * TELEPHONE_RATE:
        raise AudioFormatError(
            f"unsupported PCM rate {rate!r}: a multiple of 8000 from 16000 to 384000"
        )
    return rate // TELEPHONE_RATE


class StreamResampler:
    """Resamples one continuous stream (one call's direction) chunk by chunk, 8 kHz <-> 24 kHz
    (or another whole multiple of 8 kHz, see :func:`resampling_ratio`).

    The filter history carries over between calls to :meth:`process`, so frames join without
    clicks and any chunking gives bit-identical output. Nothing is held back: 8000 -> 24000 turns
    N samples into 3N; 24000 -> 8000 emits each output as soon as its centre sample arrives (a
    running phase makes chunks of any length work). Not thread-safe; one instance per stream.
    """

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        if TELEPHONE_RATE not in (src_rate, dst_rate) or src_rate == dst_rate:
            raise AudioFormatError(
                f"unsupported rates {src_rate!r} -> {dst_rate!r}: one side must be 8000"
            )
        self.src_rate = src_rate
        self.dst_rate = dst_rate
        self._up = dst_rate > src_rate
        self._ratio = resampling_ratio(dst_rate if self._up else src_rate)
        taps = _PHASE_TAPS * self._ratio
        # Block geometry: input samples per block and outputs per block.
        self._block_in, self._block_out = (_PHASE_TAPS, taps) if self._up else (taps, _PHASE_TAPS)
        self._now, self._before = _matrices(self._ratio, self._up)
        self._buffer: FloatArray = np.zeros(self._block_in)
        self._scratch: FloatArray = np.zeros(0)
        self._scratch_before: FloatArray = np.zeros(0)
        self._grow(20 * src_rate // 1000)  # 20 ms frames allocate nothing but their output
        self.reset()

    def reset(self) -> None:
        """Forget the stream: silence as history, as if newly created."""
        self._buffer[:] = 0.0
        # Downsampling: how many input samples pass before the next kept output's centre.
        self._phase = 0

    def _grow(self, samples: int) -> None:
        """Make room for a chunk of ``samples``: history, the chunk and its last partial block,
        shifted by up to ratio - 1 samples of phase. Only a chunk larger than any before
        allocates."""
        chunk_blocks = -(-samples // self._block_in)
        if self._buffer.size >= (chunk_blocks + 2) * self._block_in:
            return
        buffer = np.zeros((chunk_blocks + 2) * self._block_in)  # zeros: padding must be finite
        buffer[: self._block_in] = self._buffer[: self._block_in]
        self._buffer = buffer
        self._scratch = np.zeros(chunk_blocks * self._block_out)
        self._scratch_before = np.zeros(chunk_blocks * self._block_out)

    def process(self, samples: Int16Array) -> Int16Array:
        """The output for this chunk of the stream (a new int16 array, saturated, never wrapped).

        Raises :class:`AudioFormatError` unless ``samples`` is a 1-D int16 array.
        """
        _check_samples(samples)
        n, block, phase = samples.size, self._block_in, self._phase
        self._grow(n)
        buf = self._buffer
        # buf[:block] is the history (the input just before this chunk), the chunk follows it.
        buf[block : block + n] = samples
        ratio = self._ratio
        outputs = ratio * n if self._up else max(0, -(-(n - phase) // ratio))
        blocks = -(-outputs // self._block_out)
        # Rows of `block` samples starting `phase` in, so that row r + 1 holds the centres of
        # its outputs at its samples 0, 1, 2, ... (up) or 0, 3, 6, ... (down) and row r the
        # history they reach back into. Samples past the chunk only feed outputs cut off below.
        rows = buf[phase : phase + (blocks + 1) * block].reshape(blocks + 1, block)
        shape, size = (blocks, self._block_out), blocks * self._block_out
        out, before = (
            self._scratch[:size].reshape(shape),
            self._scratch_before[:size].reshape(shape),
        )
        np.matmul(rows[1:], self._now, out=out)
        np.matmul(rows[:-1], self._before, out=before)
        np.add(out, before, out=out)
        y = out.reshape(-1)[:outputs]
        np.rint(y, out=y)
        np.maximum(y, -32768.0, out=y)
        np.minimum(y, 32767.0, out=y)
        # The last `block` samples of input become the history (numpy copies overlaps safely).
        buf[:block] = buf[n : n + block]
        if not self._up:
            self._phase = (phase - n) % ratio
        return y.astype(np.int16)
