"""What one smoke run sends and what it found: the caller's speech and :class:`RunResult`.

A leaf shared by the Realtime smoke test (:mod:`tools.smoke`) and the GPT-Live one
(:mod:`tools.smoke_live`), which the former calls: neither imports the other back.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from shared.audio import StreamResampler


def caller_speech(ms: int, rate: int) -> bytes:
    """Speech-like PCM16 at ``rate`` (the simulator's voice when present)."""
    try:
        from sim.speech import speech

        audio8k = speech("Hello, can you hear me? I would like to check my order status.")
    except ImportError:
        t = np.arange(8000 * 3) / 8000
        audio8k = (
            6000 * np.sin(2 * np.pi * 140 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
        ).astype(np.int16)
    need = ms * 8
    audio8k = np.resize(audio8k, need) if audio8k.size < need else audio8k[:need]
    if rate == 8000:
        return audio8k.tobytes()
    return StreamResampler(8000, rate).process(audio8k).tobytes()


@dataclass
class RunResult:
    ok: bool
    combo: str
    session_ms: float | None = None
    first_delta_ms: float | None = None
    errors: Counter[str] = field(default_factory=Counter)
    failure: str = ""
    # The API refused the beta shape as retired (its own words), for a configured combo B.
    retired: str = ""
