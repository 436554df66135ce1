"""Recordings: the pure playout model, and the recorder as a real process, SIGKILLed and restarted
mid-call, against what the simulated caller sent and heard."""

from __future__ import annotations

import asyncio
import signal
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis

from shared.audio import mulaw_decode, mulaw_encode
from shared.recording import CallRecording
from shared.streams import CallKeys, InboundFrame, OutboundChunk
from sim.openai_realtime import RealtimeEmulator
from sim.speech import speech
from sim.twilio_call import BargeIn, place_call
from tests.conftest import RedisServer, free_port, port_open, wait_for
from tests.stack import ProcessStack, process_env

RATE = 8000
TOLERANCE_MS = 40


def _ulaw(samples: np.ndarray) -> bytes:
    return mulaw_encode(samples.astype(np.int16))


def test_the_playout_model_queues_replies_and_takes_back_what_a_clear_cut() -> None:
    rec = CallRecording(origin_ms=1_000_000)
    tone = (np.sin(np.arange(8000) / 5) * 8000).astype(np.int16)  # 1 s
    # Two chunks of one reply written 5 ms apart: the second plays after the first, on the
    # 20 ms frame clock (written at 105 ms -> from 120 ms).
    first = rec.reply("out", b"1000105-0", OutboundChunk(_ulaw(tone), "r1", "i1", 0, 0))
    second = rec.reply("out", b"1000110-0", OutboundChunk(_ulaw(tone), "r1", "i1", 0, 0))
    assert (first[0].offset, second[0].offset) == (120 * 8, 1120 * 8)
    # A barge-in at 1.5 s: the rest of what was queued (1.5 s to 2.12 s) was never heard.
    (cut,) = rec.clear("cmd", b"1001500-0", "r1")
    assert cut.channel == 1 and cut.offset == 1500 * 8 and cut.samples.size == 620 * 8
    assert not cut.samples.any()
    # More of the cleared response is dropped; another response plays from when it comes.
    assert rec.reply("out", b"1001600-0", OutboundChunk(_ulaw(tone), "r1", "i1", 0, 0)) == []
    later = rec.reply("out", b"1002001-0", OutboundChunk(_ulaw(tone[:800]), "r2", "i2", 0, 0))
    assert later[0].offset == 2020 * 8
    # The caller's frames go where their Twilio timestamps say.
    (w,) = rec.caller("in", b"7-3", InboundFrame(_ulaw(tone[:160]), 3, 40, 0))
    assert (w.channel, w.offset) == (0, 320)
    # The state survives a restart as it was, and entries already applied are known.
    again = CallRecording.from_json(rec.to_json())
    assert again == rec
    assert again.applied("out", b"1002001-0") and not again.applied("out", b"1002001-1")
    assert again.applied("in", b"7-2") and not again.applied("in", b"7-4")


def best_lag(reference: np.ndarray, received: np.ndarray, max_lag: int) -> tuple[int, float]:
    """The lag (samples; positive: ``received`` is late) with the highest normalised
    correlation of two equally placed signals, and that correlation."""
    n = max(reference.size, received.size) + max_lag
    ref = np.zeros(n)
    got = np.zeros(n)
    ref[: reference.size] = reference
    got[: received.size] = received
    best = (0, -1.0)
    for lag in range(-max_lag, max_lag + 1, 4):
        shifted = np.roll(got, -lag)
        denom = np.sqrt(np.dot(ref, ref) * np.dot(shifted, shifted)) or 1.0
        score = float(np.dot(ref, shifted) / denom)
        if score > best[1]:
            best = (lag, score)
    return best


@pytest.mark.slow
@pytest.mark.redis_server
async def test_a_recording_survives_its_recorder_killed_mid_call(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    client = aioredis.from_url(redis_server.url)
    await client.flushall()
    emulator = RealtimeEmulator()
    await emulator.start()
    edge_port = free_port()
    folder = tmp_path / "recordings"
    env = process_env(redis_server.url, edge_port, emulator.port)
    stack = ProcessStack(env, edge_port, emulator.port, tmp_path)
    recorder_env = {"RECORDINGS_DIR": str(folder), "CONSUMER_NAME": "r0"}
    try:
        stack.start("t0", "services.transcoder", {"CONSUMER_NAME": "t0"})
        stack.start("w0", "services.realtime_worker", {"CONSUMER_NAME": "w0"})
        stack.start("e0", "services.twilio_edge", {"CONSUMER_NAME": "e0"})
        stack.start("r0", "services.recorder", recorder_env)
        await wait_for(lambda: port_open(edge_port), timeout=20)
        caller = mulaw_decode(
            mulaw_encode(
                speech("Good morning, I am calling to ask about the delivery of my order.")
            )
        )
        interrupt = mulaw_decode(mulaw_encode(speech("Sorry, wait, one more thing.")))
        call = asyncio.create_task(
            place_call(
                stack.media_url,
                caller,
                barge_in=BargeIn(1.0, interrupt),
                hold_after_s=1.5,
                max_duration_s=30,
            )
        )

        async def call_keys() -> CallKeys | None:
            sids = [k for k in await client.keys("call:*:in.pcmu")]
            return CallKeys.for_call(sids[0].decode().split("{")[1].split("}")[0]) if sids else None

        keys = await wait_for(call_keys, timeout=10)
        # The recorder has taken the call and saved some of it: kill it mid-sentence ...
        state = folder / ".partial" / f"{keys.call_sid}.json"
        await wait_for(lambda: state.exists() and state.stat().st_size > 0, timeout=10)
        await wait_for(lambda: _entries(client, keys.in_pcmu, 100), timeout=10)
        killed_at = time.monotonic()
        stack.kill("r0", signal.SIGKILL)
        # ... and start it again once the reply has begun while it was away.
        await wait_for(lambda: _entries(client, keys.out_pcmu, 5), timeout=15)
        stack.start("r0", "services.recorder", recorder_env)
        restarted_at = time.monotonic()
        result = await asyncio.wait_for(call, 40)
        target = folder / f"{keys.call_sid}.wav"
        await wait_for(lambda: target.exists(), timeout=20, interval=0.1)
    finally:
        stack.stop_all()
        await client.aclose()
        await emulator.stop()
    assert result.barge_in_at is not None and result.clears, "the caller never barged in"
    with wave.open(str(target)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, RATE)
        stereo = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    left, right = stereo[:, 0].astype(np.float64), stereo[:, 1].astype(np.float64)

    # Left: the caller's first turn where it was said (frame 0 at sample 0), none of it lost to
    # the kill; and the barge-in where the caller spoke it.
    max_lag = TOLERANCE_MS * 8 * 3
    lag, score = best_lag(caller.astype(np.float64), left[: caller.size + max_lag], max_lag)
    assert abs(lag) <= TOLERANCE_MS * 8 and score > 0.99, (lag, score)
    assert left.size >= (result.frames_sent - 5) * 160  # to the call's end
    # Right: what the caller heard (the simulator's playback record, sample i at i/8000 s).
    heard = mulaw_decode(result.heard).astype(np.float64)
    lag_r, score_r = best_lag(heard, right, max_lag)
    energy_ratio = float(np.dot(right, right) / np.dot(heard, heard))
    print(
        f"recording: caller lag {lag / 8:.1f} ms corr {score:.3f}; heard lag {lag_r / 8:.1f} ms "
        f"corr {score_r:.3f}; energy right/heard {energy_ratio:.3f}; recorder down "
        f"{restarted_at - killed_at:.2f} s"
    )
    assert abs(lag_r) <= TOLERANCE_MS * 8, f"right channel off by {lag_r / 8:.1f} ms"
    assert score_r > 0.9, score_r
    # Cleared audio is not in it: as much reply energy as the caller heard, not more.
    assert 0.85 < energy_ratio < 1.15, energy_ratio


def _entries(client: aioredis.Redis, stream: bytes, at_least: int):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return int(await client.xlen(stream)) >= at_least

    return check()
