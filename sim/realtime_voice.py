"""The emulator's own voice for replies with nothing to echo (a greeting, an answer to a key).

Deterministic speech-like audio at any rate: voiced pulses through formant resonators under a
syllable envelope, about -20 dBFS. Separate from the caller's voice (``sim.speech``) so the two
stand-ins share nothing.
"""

from __future__ import annotations

import zlib

import numpy as np

_FORMANTS = [(700, 1200), (300, 2200), (500, 900), (600, 1700)]


def synthetic_voice(text: str, rate: int = 24000, seconds: float = 1.5) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(text.encode()))
    n = int(rate * seconds)
    t = np.arange(n) / rate
    f0 = 180 + 15 * np.sin(2 * np.pi * 0.7 * t)
    phase = np.cumsum(f0 / rate)
    pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)
    out = np.zeros(n)
    syl = int(rate * 0.2)
    for start in range(0, n, syl):
        f1, f2 = _FORMANTS[int(rng.integers(len(_FORMANTS)))]
        seg = pulses[start : start + syl]
        k = np.arange(int(rate * 0.015))
        for f, g in ((f1, 1.0), (f2, 0.5)):
            h = np.exp(-np.pi * 80 * k / rate) * np.sin(2 * np.pi * f * (k + 1) / rate)
            out[start : start + seg.size] += g * np.convolve(seg, h)[: seg.size]
        out[start : start + seg.size] *= np.sin(np.linspace(0, np.pi, seg.size)) ** 0.7
    rms = np.sqrt(np.mean(out**2)) or 1.0
    return np.clip(out * (3277 / rms), -32768, 32767).astype(np.int16)
