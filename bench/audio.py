"""Audio core benchmark: 20 ms frames per CPU second, beside audioop in the same run, and the
resampler's measured delay and response (ours and ``audioop.ratecv``'s, for comparison).

``python -m bench.audio`` runs it alone and writes ``bench/results/audio.json``; ``make bench``
calls :func:`run` first. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import json
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from shared.audio import StreamResampler, mulaw_decode, mulaw_encode

audioop: ModuleType | None
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop
    except ImportError:  # Python 3.13+: only our figures
        audioop = None

Rates = tuple[int, int]
Chunker = Callable[[np.ndarray], np.ndarray]  # one stream: a chunk in, its output out
DIRECTIONS: dict[str, Rates] = {
    "upsample_8k_24k": (8000, 24000),
    "downsample_24k_8k": (24000, 8000),
}
RESULTS = Path(__file__).resolve().parent / "results"


def _frames_per_cpu_second(fn: Callable[[], object], seconds: float = 0.4) -> float:
    """Calls of ``fn`` per second of this process's CPU time (other load on the box is ignored)."""
    for _ in range(100):
        fn()  # warm caches and allocator
    n, t0 = 0, time.process_time()
    while (elapsed := time.process_time() - t0) < seconds:
        for _ in range(500):
            fn()
        n += 500
    return n / elapsed


def _ours(rates: Rates) -> Chunker:
    return StreamResampler(*rates).process


def _ratecv(rates: Rates) -> Chunker:
    assert audioop is not None
    state: list[Any] = [None]

    def process(chunk: np.ndarray) -> np.ndarray:
        out, state[0] = audioop.ratecv(chunk.tobytes(), 2, 1, *rates, state[0])
        return np.frombuffer(out, dtype=np.int16)

    return process


def speed() -> tuple[dict[str, float], dict[str, float]]:
    """Frames per CPU second for each operation on 20 ms frames: ours, and audioop's.

    audioop works on bytes throughout, so its rows take and give bytes; the two transcoder rows
    (a frame's whole trip in each direction, bytes to bytes) compare like with like.
    """
    rng = np.random.default_rng(1)
    pcm8 = (rng.standard_normal(160) * 3000).astype(np.int16)
    pcm24 = (rng.standard_normal(480) * 3000).astype(np.int16)
    ulaw, pcm8_bytes, pcm24_bytes = mulaw_encode(pcm8), pcm8.tobytes(), pcm24.tobytes()
    up, down = StreamResampler(8000, 24000), StreamResampler(24000, 8000)
    rate = _frames_per_cpu_second
    ours = {
        "mulaw_decode": rate(lambda: mulaw_decode(ulaw)),
        "mulaw_encode": rate(lambda: mulaw_encode(pcm8)),
        "upsample_8k_24k": rate(lambda: up.process(pcm8)),
        "downsample_24k_8k": rate(lambda: down.process(pcm24)),
        "transcode_inbound": rate(lambda: up.process(mulaw_decode(ulaw)).tobytes()),
        "transcode_outbound": rate(
            lambda: mulaw_encode(down.process(np.frombuffer(pcm24_bytes, dtype=np.int16)))
        ),
    }
    if audioop is None:
        return ours, {}
    a, state = audioop, [None, None]

    def ratecv_up(pcm: bytes) -> bytes:
        out, state[0] = a.ratecv(pcm, 2, 1, 8000, 24000, state[0])
        return out  # type: ignore[no-any-return]

    def ratecv_down(pcm: bytes) -> bytes:
        out, state[1] = a.ratecv(pcm, 2, 1, 24000, 8000, state[1])
        return out  # type: ignore[no-any-return]

    ref = {
        "mulaw_decode": rate(lambda: a.ulaw2lin(ulaw, 2)),
        "mulaw_encode": rate(lambda: a.lin2ulaw(pcm8_bytes, 2)),
        "upsample_8k_24k": rate(lambda: ratecv_up(pcm8_bytes)),
        "downsample_24k_8k": rate(lambda: ratecv_down(pcm24_bytes)),
        "transcode_inbound": rate(lambda: ratecv_up(a.ulaw2lin(ulaw, 2))),
        "transcode_outbound": rate(lambda: a.lin2ulaw(ratecv_down(pcm24_bytes), 2)),
    }
    return ours, ref


def _stream(make: Callable[[Rates], Chunker], rates: Rates, x: np.ndarray) -> np.ndarray:
    """``x`` through one stream in 20 ms frames."""
    step = rates[0] // 50
    process = make(rates)
    return np.concatenate([process(x[i : i + step]) for i in range(0, x.size, step)])


def _tone(freq: float, rate: int, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    tone: np.ndarray = np.rint(16000 * np.sin(2 * np.pi * freq * t))
    return tone


def _amplitude(y: np.ndarray, freq: float, rate: int) -> float:
    w = 2 * np.pi * freq * np.arange(y.size) / rate
    basis = np.column_stack([np.sin(w), np.cos(w), np.ones_like(w)])
    coef = np.linalg.lstsq(basis, y.astype(np.float64), rcond=None)[0]
    return float(np.hypot(coef[0], coef[1]))


def quality(make: Callable[[Rates], Chunker]) -> dict[str, float]:
    """Delay, passband deviation, image and alias levels, measured on 20 ms frames."""
    out: dict[str, float] = {}
    for name, (src, dst) in DIRECTIONS.items():
        # Delay: where an impulse peaks, plus the most output ever owed but not yet given.
        impulse = np.zeros(src // 10, dtype=np.int16)
        impulse[0] = 30000
        process, given, owed = make((src, dst)), 0, 0
        for i in range(0, impulse.size, src // 50):
            given += process(impulse[i : i + src // 50]).size
            due = (i + src // 50) * dst // src if dst > src else -(-(i + src // 50) // 3)
            owed = max(owed, due - given)
        peak = int(np.argmax(np.abs(_stream(make, (src, dst), impulse))))
        out[f"{name}_delay_ms"] = 1000 * (peak + owed) / dst
        # Passband: gain of steady tones (after 10 ms) from 300 to 3400 Hz.
        gains = []
        for freq in range(300, 3401, 100):
            x = _tone(freq, src)
            y = _stream(make, (src, dst), x.astype(np.int16))
            ratio = _amplitude(y[dst // 100 :], freq, dst) / _amplitude(x[src // 100 :], freq, src)
            gains.append(abs(20 * np.log10(ratio)))
        out[f"{name}_passband_worst_db"] = max(gains)
    images = []
    for freq in [*range(300, 3400, 100), 3400]:
        y = _stream(make, (8000, 24000), _tone(freq, 8000).astype(np.int16))[240:]
        power = np.abs(np.fft.rfft(y * np.hanning(y.size))) ** 2
        f = np.fft.rfftfreq(y.size, 1 / 24000)
        images.append(power[(f >= 4600) & (f <= 12000)].sum() / power[np.abs(f - freq) <= 20].sum())
    out["image_worst_db"] = float(10 * np.log10(max(images)))
    aliases = []
    for freq in range(4700, 11001, 100):
        x = _tone(freq, 24000)
        y = _stream(make, (24000, 8000), x.astype(np.int16))[80:].astype(np.float64)
        aliases.append(max(float(np.mean(y**2)), 1 / 12) / np.mean(x[240:] ** 2))
    out["alias_worst_db"] = float(10 * np.log10(max(aliases)))
    return out


def run() -> dict[str, Any]:
    """Measure everything, print a table, and return ``{"audio": {...}}``."""
    ours, ref = speed()
    print(f"{'20 ms frames':<20} {'ours frames/s':>14} {'us/frame':>9} {'audioop frames/s':>17}")
    for name, value in ours.items():
        other = f"{ref[name]:17,.0f}" if name in ref else f"{'n/a':>17}"
        print(f"{name:<20} {value:14,.0f} {1e6 / value:9.2f} {other}")
    response = {"ours": quality(_ours)}
    if audioop is not None:
        response["audioop_ratecv"] = quality(_ratecv)
    print(f"{'resampler (20 ms frames)':<36} " + " ".join(f"{k:>15}" for k in response))
    for key in response["ours"]:
        print(f"{key:<36} " + " ".join(f"{v[key]:15.2f}" for v in response.values()))
    return {
        "audio": {
            "frames_per_cpu_second": ours,
            "audioop_frames_per_cpu_second": ref,
            "resampler": response,
            "python": platform.python_version(),
            "numpy": np.__version__,
        }
    }


if __name__ == "__main__":
    results = run()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "audio.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS / 'audio.json'}")
