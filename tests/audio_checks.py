"""Comparing audio that went through the pipeline with what was sent."""

from __future__ import annotations

import numpy as np

from shared.audio import StreamResampler, mulaw_decode


def pcm24_to_8k(pcm: bytes) -> np.ndarray:
    return StreamResampler(24000, 8000).process(np.frombuffer(pcm, dtype=np.int16))


def similarity(reference: np.ndarray, received: np.ndarray, max_lag: int = 800) -> float:
    """Peak normalised cross-correlation of ``reference`` found within ``received`` (8 kHz)."""
    ref = reference.astype(np.float64)
    got = received.astype(np.float64)
    n = min(ref.size, got.size)
    if n < 400:
        return 0.0
    best = 0.0
    # Search the offset of the reference inside the received signal (delays of a few frames).
    for lag in range(0, min(max_lag, max(got.size - 400, 0)) + 1, 1):
        seg = got[lag : lag + ref.size]
        m = min(seg.size, ref.size)
        a, b = ref[:m], seg[:m]
        denom = np.sqrt(np.dot(a, a) * np.dot(b, b))
        if denom > 0:
            best = max(best, float(np.dot(a, b) / denom))
    return best


def ulaw_to_pcm(data: bytes) -> np.ndarray:
    return mulaw_decode(data)
