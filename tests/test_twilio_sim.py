"""The Twilio simulator behaves like Twilio: real-time pacing, marks returned after playback,
clear honoured, bad outbound messages recorded as violations."""

from __future__ import annotations

import asyncio
import base64
import json
import time

from websockets.asyncio.server import ServerConnection, serve

from sim.speech import silence
from sim.twilio_call import place_call


async def test_pacing_marks_clear_and_violations() -> None:
    seen: dict[str, object] = {"media": 0, "marks": []}
    mark_times: dict[str, float] = {}
    sent_at: dict[str, float] = {}

    async def gateway(ws: ServerConnection) -> None:
        sid = ""
        async for raw in ws:
            msg = json.loads(raw)
            if msg["event"] == "start":
                sid = msg["start"]["streamSid"]
                # 400 ms of reply audio, a mark after it, then a message Twilio would reject.
                payload = base64.b64encode(b"\x00" * 3200).decode()
                await ws.send(json.dumps({"event": "media", "streamSid": sid, "media": {"payload": payload}}))
                await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "m1"}}))
                sent_at["m1"] = time.monotonic()
                await ws.send(json.dumps({"event": "bogus", "streamSid": sid}))
                # Then more audio and a mark that a clear will cut short.
                await ws.send(json.dumps({"event": "media", "streamSid": sid, "media": {"payload": payload * 5}}))
                await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "m2"}}))
            elif msg["event"] == "media":
                seen["media"] = int(seen["media"]) + 1  # type: ignore[call-overload]
            elif msg["event"] == "mark":
                mark_times[msg["mark"]["name"]] = time.monotonic()
                if msg["mark"]["name"] == "m1":
                    sent_at["clear"] = time.monotonic()
                    await ws.send(json.dumps({"event": "clear", "streamSid": sid}))

    async with serve(gateway, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        t0 = time.monotonic()
        result = await asyncio.wait_for(place_call(f"ws://127.0.0.1:{port}/media", silence(1000),
                                                   hold_after_s=0.3, wait_for_reply=False), 20)
        elapsed = time.monotonic() - t0
    # Frames paced in real time: 50 a second.
    assert abs(result.frames_sent / elapsed - 50) < 8
    # m1 came back only once its 400 ms had played; m2 at once when the clear arrived.
    assert mark_times["m1"] - sent_at["m1"] >= 0.35
    assert mark_times["m2"] - sent_at["clear"] < 0.1
    assert [name for name, _ in result.marks_returned] == ["m1", "m2"]
    # The cleared audio never played: 400 ms of reply heard, not 2.4 s.
    heard = result.heard.count(b"\x00") / 8
    assert 380 <= heard <= 460
    assert any("bogus" in v for v in result.violations)
