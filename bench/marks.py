"""What the mark interval costs barge-in accuracy: ``python -m bench.marks``.

A barge-in truncates the reply item at what the worker believes the caller heard, which is the
end of the last mark Twilio returned; the caller really heard what had played when the
``clear`` reached Twilio. This plays one reply through the pure cores (the edge's
:class:`~shared.playback.OutboundPlayback`, the simulator's Twilio buffer, the worker's
:class:`~shared.playback.HeardTracker`) on a virtual clock, interrupts it at every millisecond
of its middle, and reports how much reply audio was heard but not believed heard
(``real - believed``, ms), and how many messages the edge sent per second of reply.

The model's delay figures are parameters (``--mark-return-ms``: Twilio returning a mark to the
worker's read of it; ``--clear-ms``: the worker's decision to Twilio's clear): on loopback the
pipeline's hops are a few ms each, Twilio's own path tens of ms.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from shared.playback import HeardTracker, OutboundPlayback
from shared.streams import OutboundChunk
from sim.twilio_playback import Playback

WINDOW_MS = 20  # Twilio plays 20 ms windows


def interrupted(
    mark_every_ms: int,
    chunk_ms: int,
    at_ms: int,
    reply_ms: int = 4000,
    mark_return_ms: int = 40,
    clear_ms: int = 20,
) -> tuple[float, float]:
    """(believed heard, really heard) ms of a ``reply_ms`` reply cut by a barge-in at ``at_ms``.

    Chunks of ``chunk_ms`` reach the edge at twice real time from 0 (the model generates faster
    than it is played); Twilio starts playing at once."""
    edge = OutboundPlayback("MZ0", mark_every_ms=mark_every_ms)
    twilio = Playback()
    worker = HeardTracker()
    chunks = [
        (
            k * chunk_ms // 2,
            OutboundChunk(b"\x7f" * (chunk_ms * 8), "resp", "item", k * chunk_ms * 1000, 0),
        )
        for k in range(reply_ms // chunk_ms)
    ]
    returned: list[tuple[int, str]] = []  # (when the worker reads it, name)
    clear_at = at_ms + clear_ms
    t = 0
    while t < clear_at:
        while chunks and chunks[0][0] <= t:
            chunk = chunks.pop(0)[1]
            worker.sent("item", (chunk.offset_us + len(chunk.audio) * 125) / 1000)
            for message in edge.chunk(chunk):
                data = json.loads(message)
                if data["event"] == "media":
                    twilio.add_audio(b"\x7f" * (len(data["media"]["payload"]) * 3 // 4), t / 1000)
                else:
                    twilio.add_mark(data["mark"]["name"])
        if t % WINDOW_MS == 0:
            _, marks = twilio.tick(t / 1000)
            returned += [(t + mark_return_ms, name) for name in marks]
        t += 1
    for when, name in returned:
        if when <= at_ms:
            worker.mark(name)
    # The clear lands at clear_at: played so far is what was heard (a window in progress plays
    # to its end, so count it whole).
    return float(worker.heard("item")), twilio.played_bytes / 8


def measure(mark_every_ms: int, chunk_ms: int, **kw: int) -> dict[str, float]:
    reply_ms = kw.get("reply_ms", 4000)
    errors = []
    for at in range(200, reply_ms - 200, 3):
        believed, real = interrupted(mark_every_ms, chunk_ms, at, **kw)
        errors.append(real - believed)
    e = np.array(errors)
    pieces = -(-chunk_ms // mark_every_ms)  # media messages per chunk, each with its mark
    return {
        "mark_every_ms": mark_every_ms,
        "chunk_ms": chunk_ms,
        "error_mean_ms": float(e.mean()),
        "error_p95_ms": float(np.percentile(e, 95)),
        "error_max_ms": float(e.max()),
        "messages_per_reply_s": 2 * pieces * 1000 / chunk_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mark-return-ms", type=int, default=40)
    parser.add_argument("--clear-ms", type=int, default=20)
    args = parser.parse_args()
    kw = {"mark_return_ms": args.mark_return_ms, "clear_ms": args.clear_ms}
    print("mark every | chunk | heard but not believed: mean / p95 / max ms | messages/reply-s")
    for chunk_ms in (100, 200, 400):
        for every in (100, 200):
            r = measure(every, chunk_ms, **kw)
            print(
                f"{every:7d} ms | {chunk_ms:3d} ms | {r['error_mean_ms']:6.1f} / "
                f"{r['error_p95_ms']:6.1f} / {r['error_max_ms']:6.1f} | "
                f"{r['messages_per_reply_s']:.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
