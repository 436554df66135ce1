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
from shared.recording import CallRecording, ReplyChunk, heard_audio
from shared.streams import CallKeys, InboundFrame
from sim.openai_realtime import RealtimeEmulator
from sim.speech import speech
from sim.twilio_call import BargeIn, place_call
from tests.conftest import RedisServer, free_port, port_open, wait_for
from tests.stack import ProcessStack, process_env

RATE = 8000
TOLERANCE_MS = 40


def _ulaw(samples: np.ndarray) -> bytes:
    return mulaw_encode(samples.astype(np.int16))


def test_the_reply_is_placed_where_twilio_said_it_played_and_cleared_audio_is_not() -> None:
    origin = 1_000_000
    tone = (np.cos(np.arange(8000) / 5) * 8000 + 100).astype(np.int16)  # 1 s, never 0
    ulaw = _ulaw(tone)
    # One reply item in four chunks of 250 ms, all written at 100 ms (faster than real time);
    # Twilio began playing it 80 ms late (at 180 ms) and returned a mark every 100 ms.
    chunks = [
        ReplyChunk(origin + 100, "r1", "i1", k * 250_000, ulaw[k * 2000 : (k + 1) * 2000])
        for k in range(4)
    ]
    marks = [(origin + 180 + end, f"i1:{end}") for end in range(100, 600, 100)]
    # A barge-in sent at 650 ms: Twilio returns the pending marks at once, when it gets it.
    marks += [(origin + 652, f"i1:{end}") for end in range(600, 1001, 100)]
    clears = [(origin + 650, "r1")]
    # A second reply after the barge-in, played without delay from 900 ms.
    chunks.append(ReplyChunk(origin + 880, "r2", "i2", 0, ulaw[:1600]))
    marks += [(origin + 900 + 100, "i2:100"), (origin + 900 + 200, "i2:200")]
    right = heard_audio(origin, chunks, marks, clears)
    heard = np.flatnonzero(right)
    assert heard[0] == 180 * 8  # where Twilio played it, not where the model wrote it
    # Heard until the clear reached Twilio (its flushed marks came back at 652 ms), not after.
    np.testing.assert_array_equal(right[180 * 8 : 652 * 8], mulaw_decode(ulaw)[: 472 * 8])
    assert not right[652 * 8 : 900 * 8].any()
    np.testing.assert_array_equal(right[900 * 8 : 1100 * 8], mulaw_decode(ulaw[:1600]))
    # Without marks (the call ended first), the reply plays in order from when it came.
    lone = heard_audio(origin, [ReplyChunk(origin + 300, "r3", "i3", 0, ulaw[:800])], [], [])
    assert np.flatnonzero(lone)[0] == 300 * 8


def test_the_caller_channel_and_the_state() -> None:
    rec = CallRecording(origin_ms=1_000_000)
    tone = (np.sin(np.arange(160) / 5) * 8000).astype(np.int16)
    (w,) = rec.caller("in", b"7-3", InboundFrame(_ulaw(tone), 3, 40, 0))
    assert (w.channel, w.offset) == (0, 320)  # at its Twilio timestamp
    again = CallRecording.from_json(rec.to_json())
    assert again == rec
    assert again.applied("in", b"7-2") and again.applied("in", b"7-3")
    assert not again.applied("in", b"7-4")


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
@pytest.mark.parametrize(
    "dialect", [pytest.param({}, id="comboA"), pytest.param({"REALTIME_SCHEMA": "live"}, id="live")]
)
async def test_a_recording_survives_its_recorder_killed_mid_call(
    redis_server: RedisServer, tmp_path: Path, dialect: dict[str, str]
) -> None:
    client = aioredis.from_url(redis_server.url)
    await client.flushall()
    emulator = RealtimeEmulator()
    await emulator.start()
    edge_port = free_port()
    folder = tmp_path / "recordings"
    env = process_env(redis_server.url, edge_port, emulator.port, **dialect)
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
    # Right: what the caller heard (the simulator's playback record, sample i at i/8000 s),
    # each stretch of it in its place: every reply the caller heard, and only that.
    heard = mulaw_decode(result.heard).astype(np.float64)
    spans = heard_spans(heard)
    assert len(spans) >= 2, "expected the interrupted reply and the answer after it"
    figures = []
    for start, end in spans:
        lag_r, score_r = best_lag(heard[start:end], right[start : end + max_lag], max_lag)
        figures.append((start / 8, lag_r / 8, score_r))
    energy_ratio = float(np.dot(right, right) / np.dot(heard, heard))
    print(
        f"recording: caller lag {lag / 8:.1f} ms corr {score:.3f}; heard, per reply "
        f"(start ms, lag ms, corr): {[(round(a), b, round(c, 3)) for a, b, c in figures]}; "
        f"energy right/heard {energy_ratio:.3f}; recorder down {restarted_at - killed_at:.2f} s"
    )
    for _, lag_ms, score_r in figures:
        assert abs(lag_ms) <= TOLERANCE_MS, f"a reply is {lag_ms:.1f} ms off in the recording"
        assert score_r > 0.9, score_r
    # Cleared audio is not in it: as much reply energy as the caller heard, not more.
    assert 0.85 < energy_ratio < 1.15, energy_ratio


def heard_spans(heard: np.ndarray, gap_ms: int = 200) -> list[tuple[int, int]]:
    """The stretches of sound the caller heard (sample ranges), split at gaps of silence."""
    frames = np.abs(heard[: heard.size // 160 * 160]).reshape(-1, 160).max(axis=1) > 0
    spans: list[tuple[int, int]] = []
    start = quiet = None
    for i, loud in enumerate(frames):
        if loud:
            start = i if start is None else start
            quiet = None
        elif start is not None:
            quiet = i if quiet is None else quiet
            if (i - quiet) * 20 >= gap_ms:
                spans.append((start * 160, quiet * 160))
                start = quiet = None
    if start is not None:
        spans.append((start * 160, (quiet or frames.size) * 160))
    return [(a, b) for a, b in spans if b - a >= 1600]  # at least 200 ms


def _entries(client: aioredis.Redis, stream: bytes, at_least: int):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return int(await client.xlen(stream)) >= at_least

    return check()
