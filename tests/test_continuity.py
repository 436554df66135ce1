"""Calls that outlast their Realtime sessions, as real processes over a real redis-server, in both
dialects: a rollover to the next session at a quiet moment before the server's limit, and the
recovery when the limit is reached without one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis

from shared.audio import mulaw_decode, mulaw_encode
from sim.openai_realtime import EmulatedSession, RealtimeEmulator
from sim.realtime_tools import ScriptedToolCall
from sim.speech import silence, speech
from sim.tool_server import ToolServer
from sim.twilio_call import place_call
from tests.audio_checks import pcm24_to_8k, similarity
from tests.conftest import RedisServer, free_port, port_open, wait_for
from tests.stack import ProcessStack, in_process_stack, process_env
from tests.test_pipeline import fake_factory

pytestmark = pytest.mark.slow

FRAME_24K = 960  # bytes of PCM16 at 24 kHz in one 20 ms frame
DIALECTS = {
    "ga": {"REALTIME_SCHEMA": "audio"},
    "beta": {"REALTIME_SCHEMA": "flat", "REALTIME_BETA_HEADER": "1"},
}
# Short turns, each with room after it for the reply to play, as on a phone call; the second
# (the tool call's turn) gets two replies: the model's, then the tool's answer. What is busy at
# a stretch (a turn and its replies) must fit in the 6 s session limit, or no quiet moment
# could come in time: on the live API that is 60 minutes.
TURNS = ["Hello there.", "Order one.", "Thank you.", "Opening hours?", "Goodbye."]
GAPS_MS = [3500, 8000, 3500, 3500, 2000]


def agent(path: Path, tools_url: str) -> Path:
    path.write_text(
        f"""
instructions = "You are a shop's phone agent."
[[tools]]
name = "lookup_order"
description = "Look up an order."
url = "{tools_url}/order"
"""
    )
    return path


@pytest.fixture
async def stack(
    request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[Any]:
    """``stack(dialect, session_limit_s, rollover_after_s)`` starts everything."""
    started: list[Any] = []

    async def start(dialect: str, limit_s: float, rollover_s: int) -> Any:
        redis = aioredis.from_url(redis_server.url)
        await redis.flushall()
        await redis.aclose()
        emulator = RealtimeEmulator(
            beta="accept" if dialect == "beta" else "refuse",  # combo B is opted into
            max_session_seconds=limit_s,
            tool_calls=[ScriptedToolCall(2, "lookup_order", {"order_id": "123"})],
        )
        await emulator.start()
        tools = await ToolServer().start()
        edge_port = free_port()
        env = process_env(
            redis_server.url,
            edge_port,
            emulator.port,
            AGENT_FILE=str(agent(tmp_path / "agent.toml", tools.url)),
            REALTIME_SESSION_MAX_SECONDS=str(rollover_s),
            **DIALECTS[dialect],
        )
        procs = ProcessStack(env, edge_port, emulator.port, tmp_path)
        for name, module in (
            ("t0", "services.transcoder"),
            ("w0", "services.realtime_worker"),
            ("r0", "services.tool_runner"),
            ("e0", "services.twilio_edge"),
        ):
            procs.start(name, module, {"CONSUMER_NAME": name})
        started.append((procs, emulator, tools))
        await wait_for(lambda: port_open(edge_port), timeout=20)
        return procs, emulator

    yield start
    for procs, emulator, tools in started:
        procs.stop_all()
        await tools.stop()
        await emulator.stop()


def conversation() -> tuple[np.ndarray, list[np.ndarray]]:
    turns = [mulaw_decode(mulaw_encode(speech(text))) for text in TURNS]
    pieces: list[np.ndarray] = []
    for turn, gap_ms in zip(turns, GAPS_MS, strict=True):
        pieces += [turn, silence(gap_ms)]
    return np.concatenate(pieces), turns


def updates(session: EmulatedSession) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in e.items() if k != "event_id"}
        for e in session.client_events
        if e["type"] == "session.update"
    ]


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
async def test_sessions_roll_over_at_quiet_moments_and_the_model_hears_every_frame_once(
    stack: Any, dialect: str
) -> None:
    procs, emulator = await stack(dialect, limit_s=6.0, rollover_s=1)
    audio, turns = conversation()
    result = await asyncio.wait_for(
        place_call(procs.media_url, audio, hold_after_s=2.0, max_duration_s=60), 90
    )
    await emulator.sessions[-1].wait_closed(timeout=15)
    sessions = emulator.sessions
    assert len(sessions) >= 3, "the call never rolled over"
    # The server's limit was never reached: every switch was the gateway's, in time.
    expired = [(s.connected_at, s.expired_at, len(s.input_audio)) for s in sessions if s.expired]
    assert not expired, expired
    # 100% of the caller's frames, once each, in order, across the switches.
    heard = b"".join(bytes(s.input_audio) for s in sessions)
    assert len(heard) == result.frames_sent * FRAME_24K
    assert similarity(turns[-1], pcm24_to_8k(heard)) >= 0.95
    # No reply was cut: every response of every session completed.
    statuses = [r.status for s in sessions for r in s.responses]
    assert statuses and all(status == "completed" for status in statuses), statuses
    # The same configuration each time (tools included), and the context: the tool's result.
    first = updates(sessions[0])
    assert first and all(updates(s) == first for s in sessions[1:])
    assert first[0]["session"]["tools"][0]["name"] == "lookup_order"
    later_context = [
        e["item"]["content"][0]["text"]
        for s in sessions[2:]
        for e in s.client_events
        if e["type"] == "conversation.item.create" and e["item"].get("type") == "message"
    ]
    assert any("lookup_order answered" in text and "shipped" in text for text in later_context)
    # For the note: how long each pair of sessions was open together (the old one closes once
    # the caller's audio has moved).
    overlaps = [
        (old.closed_at or 0.0) - new.connected_at
        for old, new in zip(sessions, sessions[1:], strict=False)
    ]
    print(
        f"\n[{dialect}] {len(sessions) - 1} switches; sessions open together "
        f"{min(overlaps) * 1000:.0f} to {max(overlaps) * 1000:.0f} ms"
    )
    for name, proc in procs.procs.items():
        assert proc.poll() is None, f"{name} died: {procs.logs[name].read_text()[-2000:]}"


@pytest.mark.parametrize("dialect", ["beta"])  # the recovery is the same code in both
async def test_the_server_ending_a_session_is_recovered_within_a_second(
    stack: Any, dialect: str
) -> None:
    procs, emulator = await stack(dialect, limit_s=4.0, rollover_s=0)  # no proactive switch
    audio, turns = conversation()
    result = await asyncio.wait_for(
        place_call(procs.media_url, audio[: 8000 * 12], hold_after_s=1.5, max_duration_s=60), 90
    )
    sessions = emulator.sessions
    assert len(sessions) >= 2 and sessions[0].expired
    for old, new in zip(sessions, sessions[1:], strict=False):
        if old.expired_at is not None:
            assert new.connected_at - old.expired_at <= 1.0
    # The caller's audio was held meanwhile and delivered to the next session.
    heard = sum(len(s.input_audio) for s in sessions) / FRAME_24K
    assert 0.98 * result.frames_sent <= heard <= result.frames_sent


async def test_a_switch_forced_while_a_reply_plays_loses_none_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No quiet moment before the limit and its grace (here 1 s and 3 s): the call moves between two
    replies, while the caller is still hearing one. That reply was all generated already, so it
    plays on from Redis; the new session holds it as text, whole."""
    import services.realtime_worker.call as worker_call

    monkeypatch.setattr(worker_call, "ROLLOVER_GRACE_S", 3.0)
    async with in_process_stack(fake_factory(), realtime_session_max_seconds=1) as stack:
        hello = mulaw_decode(mulaw_encode(speech("Hello there, how are you doing today?")))
        result = await asyncio.wait_for(
            place_call(stack.media_url, hello, hold_after_s=1.5, max_duration_s=30), 60
        )
        await stack.emulator.sessions[-1].wait_closed(timeout=15)
    sessions = stack.emulator.sessions
    assert len(sessions) >= 2, "no switch was forced"
    k, reply = next((k, s.responses[0]) for k, s in enumerate(sessions) if s.responses)
    assert reply.status == "completed"
    assert k + 1 < len(sessions), "no switch came after the reply"
    started = result.started_wall or 0.0
    reply_ms = len(reply.audio) // 48  # PCM16 at 24 kHz
    ends = [
        (int(name.rpartition(":")[2]), started + at)
        for name, at in result.marks_returned
        if name.startswith(reply.item_id)
    ]
    # Switched while that reply was still playing to the caller, and it was heard to its end.
    switch_at = sessions[k + 1].connected_at
    heard_at_switch = max((end for end, at in ends if at <= switch_at), default=0)
    assert heard_at_switch < reply_ms - 20, (heard_at_switch, reply_ms)
    assert ends and max(end for end, _ in ends) >= reply_ms - 20
    # Every caller frame reached one session, once.
    heard = sum(len(s.input_audio) for s in sessions) // FRAME_24K
    assert heard == result.frames_sent
    # The next session holds the reply as text in its context.
    seeded = [e for e in sessions[k + 1].client_events if e["type"] == "conversation.item.create"]
    assert any(e["item"].get("role") == "assistant" for e in seeded)
    print(f"\nforced switch with {reply_ms - heard_at_switch} ms of a {reply_ms} ms reply unheard")
