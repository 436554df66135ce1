"""Caller speech for the simulators: espeak-ng when installed, else a speech-like synthetic voice.

The synthetic voice is a glottal pulse train (about 120 Hz, gently moving) through three formant
resonators that change every syllable, under a syllable-rate envelope with pauses between words:
it has speech's spectrum and rhythm, so energy VADs and correlation checks behave as with speech,
and it is deterministic for a given text.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
import zlib
from pathlib import Path

import numpy as np

_VOWELS = [
    (730, 1090, 2440),
    (270, 2290, 3010),
    (300, 870, 2240),
    (530, 1840, 2480),
    (570, 840, 2410),
    (440, 1020, 2240),
    (660, 1720, 2410),
    (490, 1350, 1690),
]


def silence(ms: int, rate: int = 8000) -> np.ndarray:
    return np.zeros(rate * ms // 1000, dtype=np.int16)


def _resonate(x: np.ndarray, freq: float, bw: float, rate: int) -> np.ndarray:
    # Two-pole resonator as an FIR approximation of its impulse response (vectorised).
    r = np.exp(-np.pi * bw / rate)
    n = np.arange(int(rate * 0.02))
    h = (r**n) * np.sin(2 * np.pi * freq / rate * (n + 1))
    return np.convolve(x, h)[: x.size]


def _synthetic(text: str, rate: int) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(text.encode()))
    pieces: list[np.ndarray] = []
    for word in text.split() or ["ah"]:
        syllables = max(1, round(len(word.strip(".,!?;:")) / 2.5))
        for _ in range(syllables):
            dur = int(rate * rng.uniform(0.16, 0.24))
            f0 = 120 * (1 + 0.08 * np.sin(np.linspace(0, np.pi, dur)) + rng.uniform(-0.05, 0.05))
            phase = np.cumsum(f0 / rate)
            pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)
            pulses += 0.02 * rng.standard_normal(dur)
            f1, f2, f3 = _VOWELS[int(rng.integers(len(_VOWELS)))]
            voiced = sum(
                _resonate(pulses, f, 60 + f / 20, rate) * g
                for f, g in ((f1, 1.0), (f2, 0.6), (f3, 0.3))
                if f < rate / 2
            )
            envelope = np.sin(np.linspace(0, np.pi, dur)) ** 0.6
            pieces.append(voiced * envelope)
        pieces.append(np.zeros(int(rate * (0.15 if word[-1] in ".,!?;:" else 0.06))))
    signal = np.concatenate(pieces)
    rms = np.sqrt(np.mean(signal**2)) or 1.0
    target = 32768 * 10 ** (-20 / 20)  # -20 dBFS
    return np.clip(signal * target / rms, -32768, 32767).astype(np.int16)


def _espeak(text: str, rate: int) -> np.ndarray | None:
    binary = shutil.which("espeak-ng")
    if binary is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "say.wav"
        try:
            subprocess.run(
                [binary, "-w", str(path), text], check=True, capture_output=True, timeout=30
            )
        except (subprocess.SubprocessError, OSError):
            return None
        with wave.open(str(path)) as w:
            src_rate = w.getframerate()
            data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    t_src = np.arange(data.size) / src_rate
    t_dst = np.arange(int(data.size * rate / src_rate)) / rate
    return np.interp(t_dst, t_src, data.astype(np.float64)).astype(np.int16)


def speech(text: str, rate: int = 8000) -> np.ndarray:
    """``text`` spoken at ``rate`` Hz, int16 mono."""
    spoken = _espeak(text, rate)
    return spoken if spoken is not None and spoken.size else _synthetic(text, rate)
