"""The emulator's GPT-Live endpoint (/v1/live/sessions): the live API's rules, its one
real-time output stream, barge-in, transcripts, usage, close, greeting and delegation, checked
against the official ``openai.types.live`` types and with the official client."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import openai
import pytest
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sim.live_rules import SERVER_EVENT, first_extra
from sim.openai_realtime import RealtimeEmulator
from sim.realtime_tools import ScriptedToolCall
from sim.speech import silence, speech
from tests.audio_checks import similarity

RESPONSES_STREAM = TypeAdapter(ResponseStreamEvent)
PCM24 = {"type": "audio/pcm", "rate": 24000}
CALLER = speech("Hello there, I would like to know the opening hours.", 24000, engine="synthetic")
TURN = np.concatenate([CALLER, silence(700, 24000)])
TOOLS = {
    "type": "responses",
    "responses": {
        "model": "gpt-5.4-mini",
        "instructions": "Look orders up.",
        "tools": [
            {
                "type": "function",
                "name": "lookup_order",
                "description": "Find an order",
                "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
            }
        ],
    },
}


class Live:
    """A bare WebSocket client of /v1/live/sessions, for what the SDK would not send."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.audio = bytearray()  # every output delta, in order

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(event))

    async def next(self, type_: str, timeout: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                event = json.loads(await self.ws.recv())
                self.events.append(event)
                if event["type"] == "session.output_audio.delta":
                    self.audio += base64.b64decode(event["delta"])
                if event["type"] == type_:
                    return event

    async def start(self, **session: Any) -> dict[str, Any]:
        await self.send({"type": "session.start", "session": {"model": "gpt-live-1.1", **session}})
        return await self.next("session.started")

    async def say(self, samples: np.ndarray) -> None:
        data = samples.astype("<i2").tobytes()
        for i in range(0, len(data), 9600):  # 200 ms appends
            chunk = base64.b64encode(data[i : i + 9600]).decode()
            await self.send({"type": "session.input_audio.append", "audio": chunk})

    async def error(self, event: dict[str, Any]) -> dict[str, Any]:
        await self.send(event)
        return dict((await self.next("error"))["error"])


def live_ws(emulator: RealtimeEmulator, query: str = "", key: str = "sk-test") -> Any:
    return connect(emulator.live_url + query, additional_headers={"Authorization": f"Bearer {key}"})


@pytest.fixture
async def emu() -> AsyncIterator[RealtimeEmulator]:
    async with RealtimeEmulator() as emulator:
        yield emulator


def assert_live_server_events(events: list[dict[str, Any]]) -> None:
    """Every event parses as openai.types.live.ServerEvent with nothing left over, and every
    Responses event a response.event carries parses as a Responses stream event."""
    for event in events:
        model = SERVER_EVENT.validate_python(event)
        assert first_extra(model, "") is None, event
        if event["type"] == "response.event":
            inner = RESPONSES_STREAM.validate_python(event["event"])
            assert first_extra(inner, "") is None, event["event"]


def speech_span(audio: bytes) -> tuple[int, int]:
    """First and last non-zero sample of PCM16 audio."""
    nz = np.flatnonzero(np.frombuffer(audio, dtype="<i2"))
    return int(nz[0]), int(nz[-1])


# --- with the official client ------------------------------------------------------------------


async def test_the_official_client_starts_a_session_sends_audio_and_hears_its_words_back(
    emu: RealtimeEmulator,
) -> None:
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{emu.port}/v1", api_key="sk-test")
    heard = bytearray()
    async with client.live.connect() as conn:
        await conn.session.start(session={"model": "gpt-live-1.1", "audio": {"format": PCM24}})
        data = TURN.astype("<i2").tobytes()
        async for event in conn:
            if event.type == "session.started":
                for i in range(0, len(data), 9600):
                    audio = base64.b64encode(data[i : i + 9600]).decode()
                    await conn.session.input_audio.append(audio=audio)
            elif event.type == "session.output_audio.delta":
                heard += base64.b64decode(event.delta)
                if heard.strip(b"\0") and not heard[-9600:].strip(b"\0"):
                    break  # the echo was said and the stream went quiet again
    session = emu.live_sessions[0]
    await session.wait_closed()
    assert session.config == {"model": "gpt-live-1.1", "audio": {"format": PCM24}}
    reply = np.frombuffer(bytes(heard), dtype="<i2")
    assert similarity(CALLER, reply) >= 0.9
    assert_live_server_events(session.server_events)


# --- the stream ----------------------------------------------------------------------------------


async def test_one_real_time_stream_silence_included_and_barge_in_turns_it_silent() -> None:
    async with RealtimeEmulator(live_chunk_ms=40) as emu, live_ws(emu) as ws:
        live = Live(ws)
        await live.start(audio={"format": PCM24})
        t0 = time.monotonic()
        await live.next("session.usage.updated")
        deltas = [e for e in live.events if e["type"] == "session.output_audio.delta"]
        # 1 s of stream in 1 s of wall time, in 40 ms deltas of zero samples
        assert time.monotonic() - t0 > 0.8 and len(deltas) == 25
        assert all(len(base64.b64decode(e["delta"])) == 1920 for e in deltas)
        assert not live.audio.strip(b"\0")
        await live.say(TURN)
        session = emu.live_sessions[0]
        await session.wait_for(lambda: any(u.kind == "echo" for u in session.stream.spoken))
        await live.next("session.output_transcript.delta")  # it is speaking
        await live.say(speech("Wait, stop.", 24000, engine="synthetic"))
        echo = next(u for u in session.stream.spoken if u.kind == "echo")
        await session.wait_for(lambda: echo.interrupted_ms is not None)
        cut = echo.interrupted_ms
        # the stream goes on, and carries silence from the cut; no event says so
        seen = len(live.events)
        while len(live.audio) < (cut + 1000) * 48:
            await live.next("session.output_audio.delta")
        assert not live.audio[cut * 48 + 1920 :].strip(b"\0")  # at most the delta in flight
        assert live.audio[echo.started_ms * 48 : cut * 48].strip(b"\0")
        kinds = {e["type"] for e in live.events[seen:]}
        assert kinds <= {
            "session.output_audio.delta",
            "session.output_transcript.delta",
            "session.usage.updated",
        }
        transcripts = [e for e in live.events if e["type"].endswith("transcript.delta")]
        assert all(e["start_ms"] % 200 == 0 and e["end_ms"] % 200 == 0 for e in transcripts)
        said = [e for e in transcripts if e["type"] == "session.output_transcript.delta"]
        assert all(e["end_ms"] <= cut + 200 for e in said)  # nothing of the cut-off rest
        assert not any(e["type"].endswith(".done") for e in live.events)
        usage = [e["usage"]["seconds"] for e in live.events if e["type"].startswith("session.u")]
        assert usage == sorted(usage) and usage[-1] >= 1
        assert_live_server_events(session.server_events)


async def test_pcmu_at_8000_streams_mu_law_silence_and_echoes_in_mu_law() -> None:
    from shared.audio import mulaw_decode, mulaw_encode

    caller = speech("Hello there, can you hear me?", 8000, engine="synthetic")
    async with RealtimeEmulator() as emu, live_ws(emu) as ws:
        live = Live(ws)
        await live.start(audio={"format": {"type": "audio/pcmu", "rate": 8000}})
        await live.next("session.output_audio.delta")
        assert set(live.audio) == {0xFF}  # zero samples, in mu-law
        wire = mulaw_encode(np.concatenate([caller, silence(700, 8000)]))
        for i in range(0, len(wire), 1600):
            await live.send(
                {
                    "type": "session.input_audio.append",
                    "audio": base64.b64encode(wire[i : i + 1600]).decode(),
                }
            )
        session = emu.live_sessions[0]
        await session.wait_for(lambda: session.turns)
        while len(live.audio) < len(wire) + 8000 * 3:
            await live.next("session.output_audio.delta")
        heard = mulaw_decode(bytes(live.audio))
        assert similarity(mulaw_decode(mulaw_encode(caller)), heard) >= 0.9


# --- greeting, close, history --------------------------------------------------------------------


async def test_a_commentary_right_after_start_makes_it_speak_first_and_close_drains(
    tmp_path: Any,
) -> None:
    history = [
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]},
    ]
    async with RealtimeEmulator(record_dir=tmp_path) as emu, live_ws(emu) as ws:
        live = Live(ws)
        await live.start(audio={"format": PCM24}, input=history, instructions="Be brief.")
        await live.send(
            {"type": "session.commentary.append", "delegation_id": None, "content": "Greet them."}
        )
        await live.next("session.commentary.appended")
        await live.next("session.output_transcript.delta")
        await live.send({"type": "session.close"})
        closed = await live.next("session.closed")
        with pytest.raises(ConnectionClosed) as err:
            await ws.recv()
        assert err.value.rcvd is not None and err.value.rcvd.code == 1000
    session = emu.live_sessions[0]
    greeting = session.stream.spoken[0]
    assert greeting.kind == "greeting" and greeting.finished and greeting.interrupted_ms is None
    assert live.audio.strip(b"\0")  # it spoke before the caller said anything
    said = "".join(
        e["delta"] for e in live.events if e["type"] == "session.output_transcript.delta"
    )
    assert said.strip() == "Greet them."  # the whole greeting was said before it closed
    assert closed["reason"] == "close_requested" and closed["usage"]["seconds"] >= 1
    assert session.history == history
    assert json.loads((tmp_path / "0001" / "start.json").read_text())["input"] == history
    assert_live_server_events(session.server_events)


async def test_close_drains_at_most_the_bound() -> None:
    async with RealtimeEmulator(live_close_drain_s=0.3) as emu, live_ws(emu) as ws:
        live = Live(ws)
        await live.start()
        await live.send(
            {"type": "session.commentary.append", "delegation_id": None, "content": "x " * 40}
        )
        await live.next("session.output_transcript.delta")
        t0 = time.monotonic()
        await live.send({"type": "session.close"})
        error = await live.error({"type": "session.close"})
        assert error["code"] == "session_closing"
        closed = await live.next("session.closed")
        assert time.monotonic() - t0 < 2.0  # the speech had 4 s to go
        assert closed["reason"] == "close_requested"
        assert emu.live_sessions[0].stream.spoken[0].interrupted_ms is not None


# --- refusals ------------------------------------------------------------------------------------


async def test_refusals(emu: RealtimeEmulator) -> None:
    async with live_ws(emu) as ws:
        live = Live(ws)
        e = await live.error({"type": "session.input_audio.append", "audio": "AAAA"})
        assert e["code"] == "session_not_started"
        e = await live.error({"type": "session.start", "session": {"model": "m", "voice": "x"}})
        assert (e["code"], e["param"]) == ("unknown_parameter", "session.voice")
        bad = {"type": "session.start", "event_id": "ev1"}
        for fmt, param in (
            ({"type": "audio/pcm", "rate": 8000}, "session.audio.format.rate"),
            ({"type": "audio/pcm"}, "session.audio.format.rate"),
            ({"type": "audio/pcmu", "rate": 16000}, "session.audio.format.rate"),
            ({"type": "audio/opus", "rate": 48000}, "session.audio.format.type"),
        ):
            e = await live.error({**bad, "session": {"model": "m", "audio": {"format": fmt}}})
            assert e["param"] == param and e["client_event_id"] == "ev1", e
        too_many = [{"role": "user", "content": [{"text": f"{i}"}]} for i in range(129)]
        e = await live.error(
            {"type": "session.start", "session": {"model": "m", "input": too_many}}
        )
        assert (e["code"], e["param"]) == ("invalid_value", "session.input")
        assert emu.live_sessions[0].config is None  # nothing of those started a session
        await live.start(
            audio={"format": PCM24, "output": {"voice": "marin"}},
            delegation=TOOLS,
            input=too_many[:128],
        )
        e = await live.error({"type": "session.start", "session": {"model": "m"}})
        assert e["code"] == "session_already_started"
        for field, value in (
            ("instructions", "new"),
            ("audio", {"output": {"voice": "cedar"}}),
            ("audio", {"format": {"type": "audio/pcm", "rate": 16000}}),
            ("model", "gpt-live-1"),
        ):
            update = {"type": "session.update", "session": {field: value}}
            e = await live.error(update)
            assert (e["code"], e["param"]) == ("immutable_parameter", f"session.{field}")
        e = await live.error(
            {"type": "session.update", "session": {"delegation": {"type": "client"}}}
        )
        assert e["param"] == "session.delegation.type"
        tool = dict(TOOLS["responses"]["tools"][0], extra_key=1)  # type: ignore[index]
        e = await live.error(
            {
                "type": "session.update",
                "session": {"delegation": {"type": "responses", "responses": {"tools": [tool]}}},
            }
        )
        assert e["param"] == "session.delegation.responses.tools[0].extra_key"
        e = await live.error({"type": "response.create"})
        assert e["code"] == "no_response_waiting"
        e = await live.error({"type": "input_audio_buffer.append", "audio": ""})
        assert (e["code"], e["param"]) == ("invalid_value", "type")
        update = {"type": "session.update", "session": {"delegation": {"type": "responses"}}}
        await live.send(update)
        assert (await live.next("session.updated"))["session"]["delegation"] == TOOLS
        assert_live_server_events(emu.live_sessions[0].server_events)


async def test_a_model_in_the_url_and_a_wrong_key_are_refused_at_the_handshake() -> None:
    async with RealtimeEmulator(api_key="sk-right") as emu:
        with pytest.raises(InvalidStatus) as err:
            async with live_ws(emu, "?model=gpt-live-1.1", key="sk-right"):
                pass
        assert err.value.response.status_code == 400
        assert b"session.model" in err.value.response.body
        with pytest.raises(InvalidStatus) as err:
            async with live_ws(emu, key="sk-wrong"):
                pass
        assert err.value.response.status_code == 401
        async with live_ws(emu, key="sk-right") as ws:
            await Live(ws).start()


# --- delegation ----------------------------------------------------------------------------------


async def test_responses_delegation_runs_a_scripted_call_and_speaks_its_answer() -> None:
    calls = [ScriptedToolCall(1, "lookup_order", {"order_id": "123"})]
    async with RealtimeEmulator(tool_calls=calls) as emu, live_ws(emu) as ws:
        live = Live(ws)
        await live.start(audio={"format": PCM24}, delegation=TOOLS)
        await live.say(TURN)
        created = await live.next("session.delegation.created")
        delegation = created["delegation"]
        assert delegation["target"] == "responses" and delegation["response_id"]
        inner: list[dict[str, Any]] = []
        while not inner or inner[-1]["type"] != "response.completed":
            event = await live.next("response.event")
            assert event["delegation_id"] == delegation["id"]
            inner.append(event["event"])
        assert inner[0]["type"] == "response.created"
        assert inner[0]["response"]["id"] == delegation["response_id"]
        done = [e["item"] for e in inner if e["type"] == "response.output_item.done"]
        assert [(i["type"], i["name"], json.loads(i["arguments"])) for i in done] == [
            ("function_call", "lookup_order", {"order_id": "123"})
        ]
        call_id = done[0]["call_id"]
        e = await live.error({"type": "response.create"})
        assert e["code"] == "function_call_outputs_required"
        e = await live.error(
            {
                "type": "response.item.create",
                "item": {"type": "function_call_output", "call_id": "call_nope", "output": "x"},
            }
        )
        assert e["param"] == "item.call_id"
        output = '{"status": "shipped on Monday"}'
        await live.send(
            {
                "type": "response.item.create",
                "item": {"type": "function_call_output", "call_id": call_id, "output": output},
            }
        )
        await live.send({"type": "response.create"})
        follow = (await live.next("response.event"))["event"]
        assert follow["type"] == "response.created"
        assert follow["response"]["id"] != delegation["response_id"]  # a new backend response
        said = ""
        while "shipped on Monday" not in said:
            said += (await live.next("session.output_transcript.delta"))["delta"]
        session = emu.live_sessions[0]
        assert session.tool_outputs[0]["call_id"] == call_id
        assert session.delegations[delegation["id"]].outputs == {call_id: output}
        e = await live.error({"type": "response.create"})  # nothing waits any more
        assert e["code"] == "no_response_waiting"
        assert_live_server_events(session.server_events)


async def test_client_delegation_gives_only_the_delegation_and_takes_commentary_for_it() -> None:
    calls = [ScriptedToolCall(1, "anything", {})]
    async with RealtimeEmulator(tool_calls=calls) as emu, live_ws(emu) as ws:
        live = Live(ws)
        await live.start(audio={"format": PCM24})  # delegation omitted: the client's
        await live.say(TURN)
        created = await live.next("session.delegation.created")
        assert set(created["delegation"]) == {"id", "target", "type"}
        assert created["delegation"]["target"] == "client"
        e = await live.error({"type": "response.create"})
        assert e["code"] == "responses_delegation_required"
        e = await live.error(
            {"type": "session.commentary.append", "delegation_id": "nope", "content": "x"}
        )
        assert e["param"] == "delegation_id"
        await live.send(
            {
                "type": "session.commentary.append",
                "delegation_id": created["delegation"]["id"],
                "content": "Your order ships Monday.",
            }
        )
        said = ""
        while "ships Monday." not in said:
            said += (await live.next("session.output_transcript.delta"))["delta"]
        assert not any(e["type"] == "response.event" for e in live.events)
        assert_live_server_events(emu.live_sessions[0].server_events)
