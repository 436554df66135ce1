"""Combo C (GPT-Live) through the whole pipeline (edge, transcoder, worker, tool runner; in-process
over fakeredis) against the emulator's ``/v1/live/sessions``: the caller's audio reaches the model,
the reply reaches the caller, a caller who talks over a reply hears at most 200 ms of it after the
model stopped sending, greeting, DTMF, transcripts, a tool's answer, hang-up after the goodbye,
and a session the API ends continued by the next with the conversation as its history."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import fakeredis
import numpy as np
import pytest

from shared.audio import mulaw_decode, mulaw_encode
from shared.streams import CallKeys, decode_event
from sim.openai_live import LiveSession
from sim.realtime_tools import ScriptedToolCall
from sim.speech import silence, speech
from sim.tool_server import ToolServer
from sim.twilio_call import BargeIn, place_call
from tests.audio_checks import pcm24_to_8k, similarity
from tests.stack import InProcessStack, in_process_stack
from tests.test_live_dialect import strict

LIVE = {"realtime_schema": "live"}
MU_SILENT = 40  # |sample| of mu-law 0xFF/0x7F decode and the codec's near-silence


def fake_factory():  # type: ignore[no-untyped-def]
    server = fakeredis.FakeServer()
    return lambda: fakeredis.FakeAsyncRedis(server=server)


def caller(text: str) -> np.ndarray:
    return mulaw_decode(mulaw_encode(speech(text)))


async def events(stack: InProcessStack, call_sid: str) -> list[Any]:
    entries: Any = await stack.redis.xrange(CallKeys.for_call(call_sid).events)
    return [decode_event(fields) for _, fields in entries]


def speech_of(session: LiveSession, chunk_ms: int = 40) -> np.ndarray:
    """What the model said: the stream's deltas that carry speech (the silent ones are what
    the gateway does not forward), at 8 kHz."""
    rate = session.format.rate
    pcm = np.frombuffer(bytes(session.output_audio), dtype="<i2")
    step = rate * chunk_ms // 1000
    chunks = [pcm[i : i + step] for i in range(0, pcm.size, step)]
    spoken = [c for c in chunks if c.size and np.abs(c).max() > 0]
    joined = np.concatenate(spoken) if spoken else np.zeros(0, dtype="<i2")
    return pcm24_to_8k(joined.astype("<i2").tobytes(), rate)


@pytest.mark.parametrize("rate", [24000, 16000])
async def test_a_live_call_carries_both_ways_and_its_transcripts(rate: int) -> None:
    audio = caller("Hello there, I would like to know the opening hours.")
    async with in_process_stack(fake_factory(), realtime_audio_rate=rate, **LIVE) as stack:
        result = await asyncio.wait_for(place_call(stack.media_url, audio, hold_after_s=1.5), 40)
        session = await stack.emulator.wait_for_live_session(1)
        await session.wait_closed(timeout=15)
        kept = await events(stack, result.call_sid)
    # session.start first, the model in it (never in the URL), the session's format; every
    # client event as the SDK's types have it, nothing unknown.
    assert session.client_events[0]["type"] == "session.start"
    assert session.config is not None and session.config["model"] == "gpt-live-1.1"
    assert session.config["audio"]["format"] == {"type": "audio/pcm", "rate": rate}
    for event in session.client_events:
        strict(event)
    # The caller's audio reached the model; the model's reply reached the caller.
    assert similarity(audio, pcm24_to_8k(bytes(session.input_audio), rate)) >= 0.9
    said = speech_of(session)
    assert said.size, "the emulator never spoke"
    got = mulaw_decode(result.received_audio)
    assert similarity(said[: said.size // 2], got, max_lag=2000) >= 0.9
    assert result.violations == []
    # The session is labelled with its dialect; transcripts of both sides are the call's events.
    [started] = [e for e in kept if e.kind == "session"]
    assert started.data["dialect"] == "live" and started.data["combo"] == "LIVE"
    roles = {e.data["role"] for e in kept if e.kind == "transcript"}
    assert roles == {"caller", "assistant"}
    assert [e.kind for e in kept][-1] == "ended"


class Sent:
    """The wall time of each output delta the emulator sent, and whether it carried speech."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.deltas: list[tuple[float, bool]] = []
        original = LiveSession.send
        record = self.deltas

        async def send(session: LiveSession, event: dict[str, Any]) -> None:
            await original(session, event)
            if event.get("type") == "session.output_audio.delta":
                pcm = np.frombuffer(base64.b64decode(event["delta"]), dtype="<i2")
                record.append((time.time(), bool(pcm.size and np.abs(pcm).max() > 0)))

        monkeypatch.setattr(LiveSession, "send", send)

    def stretch_after(self, wall: float) -> tuple[float, float]:
        """The first stretch of speech sent after ``wall``: when its last speech delta was sent,
        and when the next speech delta after it was (the next reply; inf if none)."""
        last: float | None = None
        for at, speech_ in self.deltas:
            if at < wall:
                continue
            if speech_ and last is None or speech_ and last is not None and at - last < 0.1:
                last = at
            elif speech_ and last is not None:
                return last, at
        assert last is not None, "no speech after the barge-in"
        return last, float("inf")


async def test_the_caller_hears_at_most_200_ms_of_a_reply_after_the_model_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent = Sent(monkeypatch)
    question = caller("Could you please tell me everything about the different plans you offer?")
    interruption = caller("Wait, stop, I have another question.")
    async with in_process_stack(fake_factory(), **LIVE) as stack:
        result = await asyncio.wait_for(
            place_call(
                stack.media_url,
                question,
                hold_after_s=1.0,
                barge_in=BargeIn(after_s=1.0, audio=interruption),
            ),
            60,
        )
        session = await stack.emulator.wait_for_live_session(1)
        chunk_s = stack.emulator.live_chunk_ms / 1000
    assert result.barge_in_at is not None and result.started_wall is not None
    # The model's speech (the echo of the question) stopped when the caller talked over it.
    reply_start = result.started_wall + (result.first_reply_at or 0.0)
    last, following = sent.stretch_after(reply_start)
    stop = last + chunk_s  # the end of the last speech the model sent of the interrupted reply
    heard = mulaw_decode(result.heard).astype(np.int32)
    begin = max(0, int((stop - result.started_wall) * 8000))
    end = int((following - result.started_wall) * 8000) if following != float("inf") else None
    # Only the model's audio plays into `heard` (not the caller's own voice): what is audible
    # after the model stopped, until its next reply was sent, is what the caller heard of the
    # interrupted reply after the model stopped sending it.
    window = heard[begin:end]
    loud = np.flatnonzero(np.abs(window) > MU_SILENT)
    heard_after_ms = (loud[-1] + 1) / 8 if loud.size else 0.0
    print(
        f"reply heard after the model stopped: {heard_after_ms:.0f} ms "
        f"(barge-in at {result.barge_in_at:.2f} s, model stopped at "
        f"{stop - result.started_wall:.2f} s, clears {result.clears})"
    )
    assert result.clears, "no clear reached the caller"
    assert heard_after_ms <= 200
    assert session.turns and len(session.turns) >= 1


async def test_the_greeting_is_spoken_first_and_dtmf_reaches_the_model() -> None:
    async with in_process_stack(
        fake_factory(), realtime_greeting="Thanks for calling Acme.", **LIVE
    ) as stack:
        result = await asyncio.wait_for(
            place_call(stack.media_url, silence(3000), dtmf=[(2.0, "7")], hold_after_s=0.5), 40
        )
        session = await stack.emulator.wait_for_live_session(1)
    types = [e["type"] for e in session.client_events]
    assert types[0] == "session.start"
    # Right after session.started: the greeting, as commentary with no delegation.
    greeting = session.client_events[1]
    assert greeting["type"] == "session.commentary.append" and greeting["delegation_id"] is None
    assert "Thanks for calling Acme." in greeting["content"]
    heard = mulaw_decode(result.heard)
    first_sound = int(np.argmax(np.abs(heard) > MU_SILENT)) / 8000
    assert np.abs(heard).max() > MU_SILENT and first_sound <= 3.0
    [digit] = [e for e in session.client_events if e["type"] == "session.instructions.append"]
    assert "7" in digit["content"] and digit["delegation_id"] is None


def agent_file(path: Path, tools_url: str) -> Path:
    path.write_text(
        f"""
instructions = "You are a shop's phone agent."
[[tools]]
name = "lookup_order"
description = "Look up an order."
url = "{tools_url}/order"
[tools.parameters]
type = "object"
required = ["order_id"]
[tools.parameters.properties.order_id]
type = "string"

[[tools]]
name = "hang_up"
description = "End the call."
action = "hang_up"
"""
    )
    return path


async def test_a_tools_answer_reaches_the_model_and_its_reply_follows(tmp_path: Path) -> None:
    tools = await ToolServer().start()
    try:
        async with in_process_stack(
            fake_factory(),
            agent_file=str(agent_file(tmp_path / "agent.toml", tools.url)),
            emulator_kwargs={
                "tool_calls": [ScriptedToolCall(1, "lookup_order", {"order_id": "123"})]
            },
            **LIVE,
        ) as stack:
            result = await asyncio.wait_for(
                place_call(
                    stack.media_url,
                    caller("Where is my order one two three?"),
                    hold_after_s=3.0,
                    max_duration_s=30,
                ),
                60,
            )
            session = await stack.emulator.wait_for_live_session(1)
            kept = await events(stack, result.call_sid)
    finally:
        await tools.stop()
    delegation = session.config["delegation"] if session.config else None
    assert delegation and delegation["type"] == "responses"
    assert [t["name"] for t in delegation["responses"]["tools"]] == ["lookup_order", "hang_up"]
    [request] = tools.requests
    assert request.json["call_sid"] == result.call_sid
    assert request.json["arguments"] == {"order_id": "123"}
    [output] = session.tool_outputs
    assert request.json["call_id"] == output["call_id"]
    assert json.loads(output["output"])["order"] == "123"
    # Every output, then one response.create.
    types = [e["type"] for e in session.client_events]
    at = types.index("response.item.create")
    assert types[at + 1] == "response.create"
    # The model's reply followed: it spoke after the output went (what the tool said).
    assert session.stream is not None
    assert [u.kind for u in session.stream.spoken].count("tool_result") == 1
    kinds = [e.kind for e in kept]
    assert "tool_call" in kinds and "tool_result" in kinds


async def test_hang_up_ends_the_stream_after_the_goodbye_was_heard(tmp_path: Path) -> None:
    tools = await ToolServer().start()
    try:
        async with in_process_stack(
            fake_factory(),
            agent_file=str(agent_file(tmp_path / "agent.toml", tools.url)),
            emulator_kwargs={"tool_calls": [ScriptedToolCall(1, "hang_up", {})]},
            **LIVE,
        ) as stack:
            result = await asyncio.wait_for(
                place_call(
                    stack.media_url,
                    caller("Thanks, that is all, goodbye."),
                    hold_after_s=8.0,
                    max_duration_s=30,
                ),
                60,
            )
            session = await stack.emulator.wait_for_live_session(1)
            kept = await events(stack, result.call_sid)
    finally:
        await tools.stop()
    assert result.closed_by_gateway, "the gateway did not end the stream"
    [ended] = [e for e in kept if e.kind == "ended"]
    assert ended.data["reason"] == "model_hung_up"
    # The goodbye (spoken after the hang-up call was answered) was all heard before the end:
    # its last mark came back, and the stream ended within a second or two after it.
    assert result.marks_returned, "no mark came back"
    last_mark = max(at for _, at in result.marks_returned)
    assert result.duration_s - last_mark <= 2.5
    heard = mulaw_decode(result.heard)
    assert np.abs(heard[-800:]).max() <= MU_SILENT  # nothing cut mid-word at the end
    assert any(e["type"] == "response.create" for e in session.client_events)


async def test_a_session_the_api_ends_is_continued_with_the_conversation_as_history() -> None:
    first = caller("My name is Ada and I want to change my address.")
    async with in_process_stack(
        fake_factory(), emulator_kwargs={"max_session_seconds": 5.0}, **LIVE
    ) as stack:
        result = await asyncio.wait_for(
            place_call(stack.media_url, first, hold_after_s=6.0, max_duration_s=20), 60
        )
        one = await stack.emulator.wait_for_live_session(1)
        two = await stack.emulator.wait_for_live_session(2, timeout=10)
        kept = await events(stack, result.call_sid)
    assert two.config is not None
    history = two.config.get("input") or []
    roles = [m["role"] for m in history]
    assert "user" in roles and "assistant" in roles, history
    for event in two.client_events:
        strict(event)
    sessions = [e for e in kept if e.kind == "session"]
    assert len(sessions) >= 2 and sessions[1].data.get("rollover") == "1"
    assert one.closed
