"""Memory over many calls: 500 calls (``SOAK_CALLS``), in waves of concurrent short calls
(``SOAK_WAVE``), through the real processes; RSS of each service after a warm-up, every 250 calls
and at the end (``python -m bench.soak``).

Writes ``bench/results/soak.json``. A service whose RSS grows by more than a few MB between
call 50 and call 500 keeps something per call that it should not.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from bench.pipeline import stack
from sim.speech import speech
from sim.twilio_call import place_call

RESULTS = Path(__file__).resolve().parent / "results"
SERIES_EVERY = 250  # calls between RSS samples


async def wave(url: str, n: int) -> int:
    audio = speech("Hi there.")
    results = await asyncio.gather(
        *(place_call(url, audio, hold_after_s=0.2, max_duration_s=15) for _ in range(n)),
        return_exceptions=True,
    )
    return sum(1 for r in results if not isinstance(r, BaseException) and r.frames_received > 0)


def main() -> None:
    total = int(os.environ.get("SOAK_CALLS", "500"))
    per_wave = int(os.environ.get("SOAK_WAVE", "25"))
    out: dict = {"calls": total, "wave": per_wave}  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp, stack("pipeline", Path(tmp)) as st:
        procs = st["procs"]
        done = answered = 0
        t0 = time.monotonic()
        while done < total:
            n = min(per_wave, total - done)
            answered += asyncio.run(wave(st["media_url"], n))
            done += n
            if done == 50 or (done < 50 and done + per_wave > 50):
                out["rss_mb_after_50"] = procs.rss_mb()
            if done % SERIES_EVERY < per_wave or done == total:
                # The growth curve: a plateau is allocator high-water, a slope is a leak.
                out.setdefault("rss_mb_series", {})[done] = procs.rss_mb()
        out["rss_mb_after_all"] = procs.rss_mb()
        out["answered"] = answered
        out["wall_s"] = time.monotonic() - t0
        redis = st["redis_nodes"][0]
        keys = redis.dbsize()
        no_ttl = [k for k in redis.scan_iter("call:*") if redis.ttl(k) < 0]
        out["redis_keys"] = keys
        out["call_keys_without_expiry"] = len(no_ttl)
    print(f"{answered}/{total} calls answered in {out['wall_s']:.0f} s")
    for name, after in out["rss_mb_after_all"].items():
        before = out.get("rss_mb_after_50", {}).get(name, after)
        print(
            f"  {name:<12} RSS after 50 calls {before:6.1f} MB, after {total}: {after:6.1f} MB "
            f"({after - before:+.1f})"
        )
    for done, rss in out.get("rss_mb_series", {}).items():
        print(f"  after {done:5d} calls: " + ", ".join(f"{k} {v:.1f}" for k, v in rss.items()))
    print(
        f"  redis keys {out['redis_keys']}, "
        f"call keys without expiry {out['call_keys_without_expiry']}"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
