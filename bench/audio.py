"""Audio core benchmark: 20 ms frames per second per core, beside audioop in the same run.

``python -m bench.audio`` runs it alone and writes ``bench/results/audio.json``.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shared.audio import GROUP_DELAY_MS, StreamResampler, mulaw_decode, mulaw_encode

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop
    except ImportError:
        audioop = None  # type: ignore[assignment]


def _rate(fn: Callable[[], object], seconds: float = 0.5) -> float:
    """Calls per CPU second (process time, so other load on the box does not count)."""
    n, t0 = 0, time.process_time()
    while True:
        for _ in range(200):
            fn()
        n += 200
        elapsed = time.process_time() - t0
        if elapsed >= seconds:
            return n / elapsed


def run() -> dict:  # type: ignore[type-arg]
    rng = np.random.default_rng(1)
    pcm8 = (rng.standard_normal(160) * 3000).astype(np.int16)
    pcm24 = (rng.standard_normal(480) * 3000).astype(np.int16)
    ulaw = mulaw_encode(pcm8)
    up, down = StreamResampler(8000, 24000), StreamResampler(24000, 8000)
    ours = {
        "mulaw_decode": _rate(lambda: mulaw_decode(ulaw)),
        "mulaw_encode": _rate(lambda: mulaw_encode(pcm8)),
        "upsample_8k_24k": _rate(lambda: up.process(pcm8)),
        "downsample_24k_8k": _rate(lambda: down.process(pcm24)),
    }
    ref: dict[str, float] = {}
    if audioop is not None:
        b8, b24 = pcm8.tobytes(), pcm24.tobytes()
        state: list[object] = [None, None]

        def ratecv_up() -> None:
            _, state[0] = audioop.ratecv(b8, 2, 1, 8000, 24000, state[0])

        def ratecv_down() -> None:
            _, state[1] = audioop.ratecv(b24, 2, 1, 24000, 8000, state[1])

        ref = {
            "mulaw_decode": _rate(lambda: audioop.ulaw2lin(ulaw, 2)),
            "mulaw_encode": _rate(lambda: audioop.lin2ulaw(b8, 2)),
            "upsample_8k_24k": _rate(ratecv_up),
            "downsample_24k_8k": _rate(ratecv_down),
        }
    print(f"{'operation':<20} {'ours frames/s':>14} {'audioop frames/s':>17}")
    for name, value in ours.items():
        other = f"{ref[name]:17,.0f}" if name in ref else f"{'n/a':>17}"
        print(f"{name:<20} {value:14,.0f} {other}")
    print(f"resampler group delay: {GROUP_DELAY_MS:.2f} ms each way (nothing held back)")
    return {
        "frames_per_cpu_second": ours,
        "audioop_frames_per_cpu_second": ref,
        "resampler_delay_ms": GROUP_DELAY_MS,
    }


if __name__ == "__main__":
    results = run()
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "audio.json").write_text(json.dumps({"audio": results}, indent=2))
