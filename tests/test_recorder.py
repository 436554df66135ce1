"""Recordings: the pure playout model, and the recorder as a real process, SIGKILLed and restarted
mid-call, against what the simulated caller sent and heard."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import time
import wave
from pathlib import Path

import fakeredis
import numpy as np
import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from services.recorder.service import Recorder
from shared.audio import mulaw_decode, mulaw_encode
from shared.recording import (
    JITTER_MS,
    CallRecording,
    HeardPiece,
    ReplyChunk,
    heard_audio,
    heard_pieces,
)
from shared.runtime.settings import load_settings
from shared.streams import CallKeys, InboundFrame
from sim.openai_realtime import RealtimeEmulator
from sim.speech import speech
from sim.twilio_call import BargeIn, place_call
from tests.conftest import PROCESS_START_S, RedisServer, free_port, port_open, wait_for
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


ORIGIN = 1_000_000
PIECE_MS = 100  # the edge's mark interval


def reply(pieces: int, written_at: int = 0) -> list[ReplyChunk]:
    """One reply item of ``pieces`` x 100 ms, written at ``written_at`` ms (before it played)."""
    tone = (np.cos(np.arange(pieces * PIECE_MS * 8) / 5) * 8000 + 100).astype(np.int16)
    return [ReplyChunk(ORIGIN + written_at, "r1", "i1", 0, _ulaw(tone))]


def jittered(ends_played: list[float], jitter: list[float]) -> list[tuple[int, str]]:
    """The marks as Twilio returns them: at its next 20 ms frame after the piece ended, plus a
    delay on the way back; in order (one connection)."""
    marks, last = [], 0.0
    for k, (played, late) in enumerate(zip(ends_played, jitter, strict=True)):
        at = max(last, played + (-played) % 20 + late)
        last = at
        marks.append((ORIGIN + round(at), f"i1:{(k + 1) * PIECE_MS}"))
    return marks


def assert_never_overlaps(pieces: list[HeardPiece]) -> None:
    for before, after in zip(pieces, pieces[1:], strict=False):
        assert after.start_ms >= before.end_ms - 1e-6, (before, after)
    for piece in pieces:
        assert piece.end_ms > piece.start_ms


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(200, 5000),
    st.data(),
)
def test_a_reply_whose_marks_come_back_with_jitter_is_placed_in_one_piece(
    count: int, start_ms: int, data: st.DataObject
) -> None:
    jitter = data.draw(st.lists(st.floats(0, 30), min_size=count, max_size=count))
    ends = [start_ms + (k + 1) * PIECE_MS for k in range(count)]
    pieces = heard_pieces(ORIGIN, reply(count), jittered(ends, jitter), [])
    assert_never_overlaps(pieces)
    # Contiguous: no gap anywhere, whatever each mark's delay ...
    for before, after in zip(pieces, pieces[1:], strict=False):
        assert after.start_ms == pytest.approx(before.end_ms), (before, after)
    # ... and where it played, give or take the least late mark's delay (at most 20 + 30 ms).
    assert start_ms <= pieces[0].start_ms <= start_ms + 50
    assert sum(p.end_ms - p.start_ms for p in pieces) == pytest.approx(count * PIECE_MS)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 20), st.floats(JITTER_MS + 1, 400), st.integers(0, 10), st.data())
def test_one_mark_held_up_on_its_way_back_is_not_a_stall(
    before: int, held_ms: float, extra: int, data: st.DataObject
) -> None:
    """A mark delayed far beyond the jitter (a hiccup on the way back; those behind it wait on
    the one connection), then timely ones again: they show playback went on, so the reply stays
    in one piece where it played."""
    after = int(held_ms // PIECE_MS) + 2 + extra  # enough for the marks to be timely again
    count = before + 1 + after
    jitter = data.draw(st.lists(st.floats(0, 30), min_size=count, max_size=count))
    jitter[before] = held_ms
    ends = [500 + (k + 1) * PIECE_MS for k in range(count)]
    pieces = heard_pieces(ORIGIN, reply(count), jittered(ends, jitter), [])
    for one, next_one in zip(pieces, pieces[1:], strict=False):
        assert next_one.start_ms == pytest.approx(one.end_ms), (one, next_one)
    assert 500 <= pieces[0].start_ms <= 550


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 30), st.integers(200, 3000), st.data())
def test_a_stall_the_marks_prove_is_kept_and_the_rest_stays_in_one_piece(
    count: int, start_ms: int, data: st.DataObject
) -> None:
    stall_before = data.draw(st.integers(1, count - 1))  # the piece the buffer ran dry before
    stall_ms = data.draw(st.integers(2 * JITTER_MS + 1, 3000))
    jitter = data.draw(st.lists(st.floats(0, 30), min_size=count, max_size=count))
    starts = [
        start_ms + k * PIECE_MS + (stall_ms if k >= stall_before else 0) for k in range(count)
    ]
    ends = [s + PIECE_MS for s in starts]
    pieces = heard_pieces(ORIGIN, reply(count), jittered(ends, jitter), [])
    assert_never_overlaps(pieces)
    assert len(pieces) == count
    for piece, played in zip(pieces, starts, strict=True):
        assert played <= piece.start_ms <= played + 50, (piece, played)
    gaps = [b.start_ms - a.end_ms for a, b in zip(pieces, pieces[1:], strict=False)]
    assert [k + 1 for k, gap in enumerate(gaps) if gap > 1e-6] == [stall_before]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 4000), st.sampled_from(["i1", "i2", "zz"]), st.integers(-5, 900)),
        max_size=30,
    ),
    st.lists(st.tuples(st.integers(0, 4000), st.sampled_from(["r1", "r2"])), max_size=2),
    st.integers(0, 3000),
)
def test_whatever_the_marks_say_the_reply_never_overlaps_itself(
    marks: list[tuple[int, str, int]], clears: list[tuple[int, str]], second_at: int
) -> None:
    chunks = reply(8) + [
        ReplyChunk(ORIGIN + second_at, "r2", "i2", 0, _ulaw(np.full(4000, 300, np.int16)))
    ]
    named = [(ORIGIN + at, f"{item}:{ms}") for at, item, ms in marks]
    pieces = heard_pieces(ORIGIN, chunks, named, [(ORIGIN + at, r) for at, r in clears])
    assert_never_overlaps(pieces)
    for piece in pieces:  # nothing plays before it was written
        assert piece.start_ms >= (second_at if piece.item == "i2" else 0)
    right = heard_audio(ORIGIN, chunks, named, [(ORIGIN + at, r) for at, r in clears])
    assert right.size <= round(max((p.end_ms for p in pieces), default=0) * 8) + 1


async def test_recordings_are_private_whatever_the_umask(tmp_path: Path) -> None:
    folder = tmp_path / "recordings"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)  # made more open beforehand: made private by the recorder
    umask = os.umask(0o022)
    redis = fakeredis.FakeAsyncRedis()
    try:
        recorder = Recorder(load_settings(recordings_dir=str(folder)), redis)
        left = recorder.partial / "CA1.left.raw"
        left.write_bytes(np.zeros(800, "<i2").tobytes())
        spool, state = recorder.partial / "CA1.reply.jsonl", recorder.partial / "CA1.json"
        spool.touch()
        old = folder / "CA1.wav"  # a file of that name, world-readable: replaced, private
        old.write_bytes(b"")
        recorder._finish("CA1", CallRecording(0, length=800), left, spool, state)
    finally:
        os.umask(umask)
        await redis.aclose()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(recorder.partial.stat().st_mode) == 0o700
    wav = folder / "CA1.wav"
    assert stat.S_IMODE(wav.stat().st_mode) == 0o600
    with wave.open(str(wav)) as w:
        assert (w.getnchannels(), w.getnframes()) == (2, 800)


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
        await wait_for(lambda: port_open(edge_port), timeout=PROCESS_START_S)
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
        partial_modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.parent.iterdir()}
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
    # Every file of it readable by the recorder's user alone, in folders only it can open.
    assert set(partial_modes.values()) == {0o600}, partial_modes
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert {stat.S_IMODE(d.stat().st_mode) for d in (folder, state.parent)} == {0o700}
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


@pytest.mark.slow
@pytest.mark.redis_server
async def test_the_heard_channel_holds_together_when_marks_come_back_with_jitter(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Against a Twilio whose marks come back 0-30 ms late (a real network's varying delay),
    each reply is in the recording as the caller heard it, in one piece: the recorder placed
    its 100 ms pieces contiguously, not each where its own late mark pointed."""
    client = aioredis.from_url(redis_server.url)
    await client.flushall()
    emulator = RealtimeEmulator()
    await emulator.start()
    edge_port = free_port()
    folder = tmp_path / "recordings"
    stack = ProcessStack(
        process_env(redis_server.url, edge_port, emulator.port), edge_port, emulator.port, tmp_path
    )
    try:
        stack.start("t0", "services.transcoder", {"CONSUMER_NAME": "t0"})
        stack.start("w0", "services.realtime_worker", {"CONSUMER_NAME": "w0"})
        stack.start("e0", "services.twilio_edge", {"CONSUMER_NAME": "e0"})
        stack.start("r0", "services.recorder", {"RECORDINGS_DIR": str(folder)})
        await wait_for(lambda: port_open(edge_port), timeout=20)
        caller = mulaw_decode(mulaw_encode(speech("Hello, what are your opening hours today?")))
        result = await asyncio.wait_for(
            place_call(
                stack.media_url,
                caller,
                hold_after_s=1.5,
                max_duration_s=30,
                mark_jitter_ms=30,
                mark_jitter_seed=7,
            ),
            40,
        )
        target = folder / f"{result.call_sid}.wav"
        await wait_for(lambda: target.exists(), timeout=20, interval=0.1)
    finally:
        stack.stop_all()
        await client.aclose()
        await emulator.stop()
    assert len(result.marks_returned) >= 10, "too few marks to tell"
    with wave.open(str(target)) as w:
        stereo = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    right = stereo[:, 1].astype(np.float64)
    heard = mulaw_decode(result.heard).astype(np.float64)
    spans = heard_spans(heard)
    assert spans, "the caller heard no reply"
    max_lag = TOLERANCE_MS * 8 * 3
    figures = [
        (start / 8, *best_lag(heard[start:end], right[start : end + max_lag], max_lag))
        for start, end in spans
    ]
    print(f"jittery marks: heard, per reply (start ms, lag samples, corr): {figures}")
    for _, lag, score in figures:
        assert abs(lag) <= TOLERANCE_MS * 8, f"a reply is {lag / 8:.1f} ms off in the recording"
        assert score >= 0.9, score
