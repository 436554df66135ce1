"""Comparing audio that went through the pipeline with what was sent."""

from __future__ import annotations

import numpy as np

from shared.audio import StreamResampler, mulaw_decode


def pcm24_to_8k(pcm: bytes, rate: int = 24000) -> np.ndarray:
    """PCM16 the model heard or said (24 kHz unless ``rate`` says otherwise) at 8 kHz."""
    return StreamResampler(rate, 8000).process(np.frombuffer(pcm, dtype=np.int16))


def similarity(reference: np.ndarray, received: np.ndarray, max_lag: int | None = None) -> float:
    """Peak normalised cross-correlation of ``reference`` anywhere inside ``received`` (8 kHz).

    FFT-based over every offset (``max_lag`` bounds the offsets searched when given). 1.0 means
    the reference appears unchanged, up to gain, somewhere in what was received.
    """
    ref = reference.astype(np.float64)
    got = received.astype(np.float64)
    if got.size < ref.size:
        got = np.concatenate([got, np.zeros(ref.size - got.size)])
    if ref.size < 400 or not np.any(ref):
        return 0.0
    n = got.size + ref.size - 1
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(got, size) * np.conj(np.fft.rfft(ref, size)), size)[
        : got.size - ref.size + 1
    ]
    energy = np.concatenate([[0.0], np.cumsum(got**2)])
    window = energy[ref.size :] - energy[: got.size - ref.size + 1]
    denom = np.sqrt(np.maximum(window, 1e-9) * np.dot(ref, ref))
    ncc = corr / denom
    ncc[window < 1e-6 * np.dot(ref, ref)] = 0.0  # silence is not a match
    if max_lag is not None:
        ncc = ncc[: max_lag + 1]
    return float(ncc.max()) if ncc.size else 0.0


def ulaw_to_pcm(data: bytes) -> np.ndarray:
    return mulaw_decode(data)
