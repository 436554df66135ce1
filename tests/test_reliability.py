"""Faults, on real processes over a real redis-server with the emulator and the simulator:
a stage killed mid-call, the OpenAI socket dropped, Redis restarted empty, bad input, SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from shared.audio import mulaw_decode, mulaw_encode
from shared.streams import (
    LIFECYCLE_STREAM,
    META_WORKER_CURSOR,
    WORKER_GROUP,
    CallKeys,
    InboundFrame,
    decode_inbound,
)
from sim.openai_realtime import RealtimeEmulator
from sim.speech import silence, speech
from sim.twilio_call import place_call
from tests.audio_checks import pcm24_to_8k, similarity
from tests.conftest import PROCESS_START_S, RedisServer, free_port, port_open, wait_for
from tests.stack import ProcessStack, process_env

pytestmark = pytest.mark.slow
FRAME_24K = 960


class Rig:
    def __init__(
        self, stack: ProcessStack, emulator: RealtimeEmulator, redis_server: RedisServer
    ) -> None:
        self.stack, self.emulator, self.redis_server = stack, emulator, redis_server

    def start(self, name: str, **env: str) -> None:
        module = {
            "t": "services.transcoder",
            "w": "services.realtime_worker",
            "e": "services.twilio_edge",
        }[name[0]]
        self.stack.start(
            name, module, {"CONSUMER_NAME": name, "REALTIME_RESTORE_SECONDS": "4", **env}
        )

    def alive(self) -> None:
        for name, proc in self.stack.procs.items():
            assert proc.poll() is None, f"{name} died:\n{self.stack.logs[name].read_text()[-3000:]}"


@pytest.fixture
async def rig(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Rig]:
    client = aioredis.from_url(redis_server.url)
    await client.flushall()
    await client.aclose()
    emulator = RealtimeEmulator()
    await emulator.start()
    edge_port = free_port()
    env = process_env(redis_server.url, edge_port, emulator.port)
    r = Rig(ProcessStack(env, edge_port, emulator.port, tmp_path), emulator, redis_server)
    for name in ("t0", "w0", "e0"):
        r.start(name)
    try:
        await wait_for(lambda: port_open(edge_port), timeout=PROCESS_START_S)
        yield r
    finally:
        r.stack.stop_all()
        await emulator.stop()


def two_turns() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    first = mulaw_decode(
        mulaw_encode(speech("Hello, I am calling about my account balance please."))
    )
    second = mulaw_decode(mulaw_encode(speech("And could you also check the last payment I made?")))
    return first, second, np.concatenate([first, silence(5000), second])


def model_heard(sessions: list) -> np.ndarray:  # type: ignore[type-arg]
    return np.concatenate([pcm24_to_8k(bytes(s.input_audio)) for s in sessions])


async def test_transcoder_killed_mid_call_every_frame_reaches_the_model_once(rig: Rig) -> None:
    first, second, audio = two_turns()
    call = asyncio.create_task(
        place_call(rig.stack.media_url, audio, hold_after_s=1.0, max_duration_s=40)
    )
    session = await rig.emulator.wait_for_session(1, timeout=10)
    await session.wait_for_event("response.done", timeout=15)
    assert rig.stack.kill("t0", signal.SIGKILL) == -signal.SIGKILL
    rig.start("t0")  # as supervisord does
    result = await asyncio.wait_for(call, 60)
    await session.wait_closed(timeout=15)
    frames_in = len(session.input_audio) / FRAME_24K
    assert 0.97 * result.frames_sent <= frames_in <= 1.03 * result.frames_sent
    heard = pcm24_to_8k(bytes(session.input_audio))
    assert similarity(second, heard) >= 0.95  # the later words arrived intact, in order
    assert len(session.responses) >= 2, "the caller stopped hearing replies after the restart"
    rig.alive()


async def test_worker_killed_mid_call_gets_a_new_session_with_the_transcript(rig: Rig) -> None:
    first, second, audio = two_turns()
    call = asyncio.create_task(
        place_call(rig.stack.media_url, audio, hold_after_s=1.0, max_duration_s=40)
    )
    s1 = await rig.emulator.wait_for_session(1, timeout=10)
    await s1.wait_for_event("response.done", timeout=15)
    await s1.wait_for_event("conversation.item.input_audio_transcription.completed", timeout=5)
    rig.stack.kill("w0", signal.SIGKILL)
    killed_at = time.monotonic()
    rig.start("w0")
    s2 = await rig.emulator.wait_for_session(2, timeout=10)
    await s2.wait_for_client_event("session.update", timeout=5)
    assert time.monotonic() - killed_at <= 3.0
    # Same configuration, and the conversation so far as context.
    assert s2.dialect == s1.dialect
    assert s2.client_events[0]["session"] == s1.client_events[0]["session"]
    context = await s2.wait_for_client_event("conversation.item.create", timeout=5)
    assert context["item"]["role"] in ("user", "assistant")
    result = await asyncio.wait_for(call, 60)
    await s2.wait_closed(timeout=15)
    total = (len(s1.input_audio) + len(s2.input_audio)) / FRAME_24K
    # Frames waiting in Redis were delivered, not dropped (a few may be sent twice).
    assert 0.97 * result.frames_sent <= total <= 1.06 * result.frames_sent
    assert similarity(second, pcm24_to_8k(bytes(s2.input_audio))) >= 0.95
    rig.alive()


async def test_killing_one_of_two_instances_moves_its_calls_without_a_restart(rig: Rig) -> None:
    rig.start("t1")
    rig.start("w1")
    _, _, audio = two_turns()
    calls = [
        asyncio.create_task(
            place_call(rig.stack.media_url, audio, hold_after_s=1.0, max_duration_s=45)
        )
        for _ in range(2)
    ]
    s1 = await rig.emulator.wait_for_session(1, timeout=10)
    await rig.emulator.wait_for_session(2, timeout=10)
    await s1.wait_for_event("response.done", timeout=15)
    rig.stack.kill("t0", signal.SIGKILL)
    rig.stack.kill("w0", signal.SIGKILL)
    results = await asyncio.wait_for(asyncio.gather(*calls), 90)
    sessions = rig.emulator.sessions
    sent = sum(r.frames_sent for r in results)
    got = sum(len(s.input_audio) for s in sessions) / FRAME_24K
    assert 0.97 * sent <= got <= 1.06 * sent
    assert all(r.frames_received > 0 for r in results)
    for name in ("t1", "w1", "e0"):
        assert rig.stack.procs[name].poll() is None


async def test_openai_socket_dropped_reconnects_and_continues(rig: Rig) -> None:
    _, second, audio = two_turns()
    call = asyncio.create_task(
        place_call(rig.stack.media_url, audio, hold_after_s=1.0, max_duration_s=40)
    )
    s1 = await rig.emulator.wait_for_session(1, timeout=10)
    await s1.wait_for_event("response.done", timeout=15)
    await rig.emulator.drop_all(code=1011)
    s2 = await rig.emulator.wait_for_session(2, timeout=5)
    await s2.wait_for_client_event("session.update", timeout=5)
    await asyncio.wait_for(call, 60)
    assert similarity(second, pcm24_to_8k(bytes(s2.input_audio))) >= 0.95
    rig.alive()


async def test_a_call_whose_session_cannot_be_restored_is_ended_for_the_caller(rig: Rig) -> None:
    audio = np.concatenate([speech("Hello there."), silence(12000)])
    call = asyncio.create_task(
        place_call(rig.stack.media_url, audio, hold_after_s=1.0, max_duration_s=30)
    )
    s1 = await rig.emulator.wait_for_session(1, timeout=10)
    await s1.wait_for_event("response.done", timeout=15)
    await rig.emulator.stop()  # OpenAI is gone for good
    result = await asyncio.wait_for(call, 40)
    assert result.closed_by_gateway  # REALTIME_RESTORE_SECONDS=4, then a clean hang-up
    rig.alive()


async def test_redis_restarted_empty_services_recover(rig: Rig) -> None:
    ok = await asyncio.wait_for(
        place_call(rig.stack.media_url, speech("Hello."), hold_after_s=0.5), 40
    )
    assert ok.frames_received > 0
    rig.redis_server.stop()
    rig.redis_server.start()  # same port, no data
    result = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            result = await asyncio.wait_for(
                place_call(
                    rig.stack.media_url,
                    speech("Are you back?"),
                    hold_after_s=0.5,
                    max_duration_s=10,
                ),
                20,
            )
        except OSError:
            result = None
        if result is not None and result.frames_received > 0:
            break
        await asyncio.sleep(0.5)  # the services are reconnecting with backoff
    assert result is not None and result.frames_received > 0
    rig.alive()


async def test_a_call_in_progress_goes_on_after_redis_restarts_empty(rig: Rig) -> None:
    # The edge still holds Twilio's socket: it registers the call again and the stages take it
    # up afresh, with a new session and no second greeting, instead of leaving it silent.
    rig.stack.kill("w0", signal.SIGTERM)
    rig.start("w0", REALTIME_GREETING="Hello, how can I help?")
    _, second, audio = two_turns()
    sid = "CA" + "7" * 32
    call = asyncio.create_task(
        place_call(rig.stack.media_url, audio, call_sid=sid, hold_after_s=1.0, max_duration_s=40)
    )
    s1 = await rig.emulator.wait_for_session(1, timeout=15)
    await s1.wait_for_event("input_audio_buffer.speech_stopped", timeout=15)
    rig.redis_server.stop()
    rig.redis_server.start()  # same port, no data
    # A stage that has not yet noticed saves its cursor, recreating the call's hash: the call
    # is still lost, and must still be found so.
    admin = aioredis.from_url(rig.redis_server.url)
    await admin.hset(CallKeys.for_call(sid).meta, META_WORKER_CURSOR, b"1-1")
    await admin.aclose()
    s2 = await rig.emulator.wait_for_session(2, timeout=15)
    result = await asyncio.wait_for(call, 60)
    await s2.wait_closed(timeout=15)
    assert similarity(second, pcm24_to_8k(bytes(s2.input_audio))) >= 0.95
    assert len(s2.responses) >= 1 and result.frames_received > 0
    greetings = [e for e in s1.client_events if e["type"] == "response.create"]
    assert len(greetings) == 1
    assert not [e for e in s2.client_events if e["type"] == "response.create"]
    with urllib.request.urlopen(f"http://127.0.0.1:{rig.stack.edge_metrics_port}/metrics") as r:  # noqa: S310
        metrics = r.read().decode()
    assert "gateway_calls_reannounced_total 1.0" in metrics
    assert len(rig.emulator.sessions) == 2  # one session at a time, not one per stage instance
    rig.alive()


async def test_bad_input_never_takes_the_edge_down_or_touches_another_call(rig: Rig) -> None:
    good = asyncio.create_task(
        place_call(rig.stack.media_url, speech("I am the good caller."), hold_after_s=0.8)
    )
    url = rig.stack.media_url
    junk = [
        "not json",
        b"\x00\x01binary",
        "[]",
        '{"event":"media"}',
        '{"event":"nope"}',
        json.dumps({"event": "media", "streamSid": "MZ1", "media": {"payload": "@@@"}}),
    ]
    evil_start = {
        "event": "start",
        "start": {
            "callSid": "CA{evil}",
            "streamSid": "MZ1",
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
    async with connect(url) as ws:  # a start that cannot be taken: hung up, not left silent
        await ws.send(json.dumps(evil_start))
        with pytest.raises(ConnectionClosed) as hung_up:
            await asyncio.wait_for(ws.recv(), 5)
        assert hung_up.value.rcvd is not None and hung_up.value.rcvd.code == 1008
    async with connect(url) as ws:
        for message in junk:
            await ws.send(message)
        for _ in range(300):  # a flood, faster than real time
            await ws.send(
                json.dumps(
                    {
                        "event": "media",
                        "streamSid": "MZx",
                        "media": {"payload": base64.b64encode(b"\xff" * 160).decode()},
                    }
                )
            )
    try:
        async with connect(url, max_size=None) as ws:
            await ws.send("x" * 200_000)  # over the size limit: closed with 1009
            await asyncio.wait_for(ws.recv(), 5)
    except Exception as exc:  # noqa: BLE001 - any close is fine; the code is checked below
        assert getattr(getattr(exc, "rcvd", None), "code", 1009) == 1009
    result = await asyncio.wait_for(good, 40)
    assert result.frames_received > 0 and result.violations == []
    rig.alive()
    metrics = await _metrics(rig.stack.edge_metrics_port)
    assert 'gateway_rejected_total{reason="twilio_not_json"}' in metrics


async def _metrics(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = await reader.read()
    writer.close()
    return data.decode()


async def test_sigterm_exits_within_5_seconds_and_hands_calls_over(rig: Rig) -> None:
    rig.start("t1")
    rig.start("w1")
    _, _, audio = two_turns()
    call = asyncio.create_task(
        place_call(rig.stack.media_url, audio, hold_after_s=1.0, max_duration_s=45)
    )
    s1 = await rig.emulator.wait_for_session(1, timeout=10)
    await s1.wait_for_event("response.done", timeout=15)
    for name in ("t0", "w0"):
        t0 = time.monotonic()
        code = await asyncio.to_thread(rig.stack.kill, name, signal.SIGTERM)
        assert time.monotonic() - t0 <= 5.0 and code == 0, rig.stack.logs[name].read_text()[-2000:]
    result = await asyncio.wait_for(call, 60)
    got = sum(len(s.input_audio) for s in rig.emulator.sessions) / FRAME_24K
    assert 0.97 * result.frames_sent <= got <= 1.06 * result.frames_sent


async def _holder(url: str) -> str:
    """The worker whose name the call's lifecycle entry is pending under."""
    client = aioredis.from_url(url)
    try:
        pending = await client.xpending_range(LIFECYCLE_STREAM, WORKER_GROUP, "-", "+", 10)
    finally:
        await client.aclose()
    assert len(pending) == 1, pending
    name = pending[0]["consumer"]
    return name.decode() if isinstance(name, bytes) else str(name)


async def _caller_frames(url: str, call_sid: str) -> bytes:
    """Every caller frame the worker stage was given (the call's in.pcm), in order."""
    client = aioredis.from_url(url)
    try:
        entries = await client.xrange(CallKeys.for_call(call_sid).in_pcm)
    finally:
        await client.aclose()
    frames = [decode_inbound(fields) for _, fields in entries]
    return b"".join(f.audio for f in frames if isinstance(f, InboundFrame))


async def test_sigterm_on_a_worker_mid_reply_moves_the_call_to_its_peer_once_the_reply_ends(
    rig: Rig,
) -> None:
    """The drain (WORKER_DRAIN_SECONDS): the reply playing when SIGTERM comes plays to its end
    on the same session, then the call moves to the other worker, whose session is seeded with
    the transcript; every caller frame reaches the model exactly once across the two."""
    rig.start("w1")
    first, second, audio = two_turns()
    call = asyncio.create_task(
        place_call(rig.stack.media_url, audio, hold_after_s=2.0, max_duration_s=45)
    )
    s1 = await rig.emulator.wait_for_session(1, timeout=10)
    # The reply to the caller's first turn is all generated: it plays on for a few seconds.
    await s1.wait_for_event("conversation.item.input_audio_transcription.completed", timeout=15)
    await s1.wait_for_event("response.done", timeout=15, predicate=lambda e: s1.user_turns >= 1)
    holder = await _holder(rig.redis_server.url)
    wall = time.time()
    code = await asyncio.to_thread(rig.stack.kill, holder, signal.SIGTERM)
    assert code == 0, rig.stack.logs[holder].read_text()[-3000:]
    log = rig.stack.logs[holder].read_text()
    assert "at a quiet moment" in log, log[-3000:]
    assert "WORKER_DRAIN_SECONDS" not in log and "as they were" not in log, log[-3000:]
    s2 = await rig.emulator.wait_for_session(2, timeout=10)
    context = await s2.wait_for_client_event("conversation.item.create", timeout=5)
    assert context["item"]["role"] in ("user", "assistant")
    seeded = " ".join(
        json.dumps(e["item"]) for e in s2.client_events if e["type"] == "conversation.item.create"
    )
    assert s1.responses[-1].status == "completed"
    result = await asyncio.wait_for(call, 60)
    await s2.wait_closed(timeout=15)
    # The reply was playing when SIGTERM came, and it had finished (every mark back) before
    # the second session opened: the seam fell at a quiet moment. (The caller's times are
    # seconds since its stream started.)
    assert result.started_wall is not None
    sigterm_t, opened_t = wall - result.started_wall, s2.connected_at - result.started_wall
    assert any(t > sigterm_t for _, t in result.marks_returned), "no reply played at SIGTERM"
    before = {name for name, t in result.marks_received if t < opened_t}
    returned = dict(result.marks_returned)
    assert before and all(returned.get(name, opened_t + 1) <= opened_t for name in before)
    last_mark = max(returned[name] for name in before)
    print(  # the figures docs/deploy.md quotes
        f"SIGTERM to the reply's last mark {1000 * (last_mark - sigterm_t):.0f} ms, "
        f"to the second session {1000 * (opened_t - sigterm_t):.0f} ms"
    )
    # Nothing of either session's replies was cut: the caller got all of it, no clear came.
    assert not result.clears
    generated = (
        sum(len(r.audio) for s in (s1, s2) for r in s.responses) // 6
    )  # 24k PCM16: mu-law 8k
    assert abs(len(result.received_audio) - generated) <= 0.01 * generated
    # The transcript of the first session seeded the second.
    assert any(role_text in seeded for role_text in ("user", "assistant"))
    assert s1.responses and any(
        (t := e.get("transcript")) and t[:20] in seeded
        for e in s1.server_events
        if e.get("type") == "conversation.item.input_audio_transcription.completed"
    )
    # Every caller frame the worker stage got reached the model exactly once, in order.
    frames = await _caller_frames(rig.redis_server.url, result.call_sid)
    assert bytes(s1.input_audio) + bytes(s2.input_audio) == frames
    assert similarity(second, pcm24_to_8k(bytes(s2.input_audio))) >= 0.95


async def test_sigterm_on_the_only_worker_keeps_its_call_until_the_bound_then_a_new_one_goes_on(
    rig: Rig,
) -> None:
    """With no other worker alive the draining worker keeps serving its call until
    WORKER_DRAIN_SECONDS pass, then hands it over; the next worker to start goes on with it,
    every caller frame reaching the model exactly once across the two sessions."""
    # The fixture's worker, replaced by one with a short bound (no call yet: nothing to lose;
    # SIGKILL, as it may not have its signal handler yet).
    assert await asyncio.to_thread(rig.stack.kill, "w0", signal.SIGKILL) == -signal.SIGKILL
    rig.start("w0", WORKER_DRAIN_SECONDS="2")
    first, second, audio = two_turns()
    call = asyncio.create_task(
        place_call(rig.stack.media_url, audio, hold_after_s=2.0, max_duration_s=45)
    )
    s1 = await rig.emulator.wait_for_session(1, timeout=10)
    await s1.wait_for_event("response.done", timeout=15, predicate=lambda e: s1.user_turns >= 1)
    heard_at_sigterm = len(s1.input_audio)
    t0 = time.monotonic()
    code = await asyncio.to_thread(rig.stack.kill, "w0", signal.SIGTERM)
    stopped_s = time.monotonic() - t0
    log = rig.stack.logs["w0"].read_text()
    assert code == 0, log[-3000:]
    assert 2.0 <= stopped_s <= 2.0 + 4.0, stopped_s
    assert "no other worker alive" in log and "WORKER_DRAIN_SECONDS (2s) passed" in log, log
    # Kept and served meanwhile: the caller's frames went on reaching the first session.
    assert len(s1.input_audio) - heard_at_sigterm >= 1.5 * 50 * FRAME_24K
    rig.start("w0")  # as supervisord does: it re-reads the call pending under its name
    s2 = await rig.emulator.wait_for_session(2, timeout=10)
    context = await s2.wait_for_client_event("conversation.item.create", timeout=5)
    assert context["item"]["role"] in ("user", "assistant")
    result = await asyncio.wait_for(call, 60)
    await s2.wait_closed(timeout=15)
    frames = await _caller_frames(rig.redis_server.url, result.call_sid)
    assert bytes(s1.input_audio) + bytes(s2.input_audio) == frames
