"""Caller speech for the simulators: espeak-ng when installed, else a speech-like synthetic voice.

The synthetic voice is a glottal pulse train (about 120 Hz, gently moving) through three formant
resonators that change every syllable (one per ~2.5 letters, about 5 a second), under a
syllable envelope with pauses between words: it has speech's spectrum and rhythm, so energy VADs
and correlation checks behave as with speech. Both voices come out at about -20 dBFS RMS, and
each is deterministic for a given text on a given machine; ``engine="synthetic"`` gives the same
samples on every machine (espeak-ng's voice depends on its version).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
import zlib
from pathlib import Path
from typing import Literal

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


_TARGET_RMS = 32768 * 10 ** (-20 / 20)  # -20 dBFS: well above any energy VAD's threshold


def silence(ms: int, rate: int = 8000) -> np.ndarray:
    """``ms`` milliseconds of digital silence (int16 zeros; mu-law 0xFF on the wire)."""
    return np.zeros(rate * ms // 1000, dtype=np.int16)


def resample(samples: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited resampling of a whole clip (FFT: spectrum cut or zero-padded), int16 out.

    Good enough for test audio, and unlike linear interpolation it does not alias espeak-ng's
    22 kHz output into the telephone band. Not for streams: it needs the whole clip.
    """
    if src_rate == dst_rate or samples.size == 0:
        return samples.astype(np.int16)
    n_out = int(round(samples.size * dst_rate / src_rate))
    spectrum = np.fft.rfft(samples.astype(np.float64))
    keep = n_out // 2 + 1
    if spectrum.size >= keep:
        spectrum = spectrum[:keep]
    else:
        spectrum = np.concatenate((spectrum, np.zeros(keep - spectrum.size, dtype=complex)))
    out = np.fft.irfft(spectrum, n_out) * (n_out / samples.size)
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def _normalise(signal: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(signal.astype(np.float64) ** 2))) or 1.0
    return np.clip(signal * (_TARGET_RMS / rms), -32768, 32767).astype(np.int16)


def _resonate(x: np.ndarray, freq: float, bw: float, rate: int) -> np.ndarray:
    # Two-pole resonator as an FIR approximation of its impulse response (vectorised).
    r = np.exp(-np.pi * bw / rate)
    n = np.arange(int(rate * 0.02))
    h = (r**n) * np.sin(2 * np.pi * freq / rate * (n + 1))
    return np.convolve(x, h)[: x.size]


def _synthetic(text: str, rate: int) -> np.ndarray:
    # Seeded by the text: the same words always give the same samples.
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
    return _normalise(np.concatenate(pieces))


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
        try:
            with wave.open(str(path)) as w:
                if w.getsampwidth() != 2:
                    return None
                src_rate = w.getframerate()
                data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
                data = data[:: w.getnchannels()]
        except (OSError, EOFError, wave.Error):
            return None
    if not np.any(data):
        return None
    return _normalise(resample(data, src_rate, rate))


def speech(
    text: str, rate: int = 8000, *, engine: Literal["auto", "espeak", "synthetic"] = "auto"
) -> np.ndarray:
    """``text`` spoken at ``rate`` Hz, int16 mono, about -20 dBFS RMS.

    ``auto`` uses espeak-ng when it is on PATH and falls back to the synthetic voice;
    ``espeak`` raises RuntimeError without it; ``synthetic`` never looks for it.
    """
    if engine != "synthetic":
        spoken = _espeak(text, rate)
        if spoken is not None and spoken.size:
            return spoken
        if engine == "espeak":
            raise RuntimeError("espeak-ng is not installed or produced no audio")
    return _synthetic(text, rate)
