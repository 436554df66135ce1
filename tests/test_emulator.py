"""The OpenAI Realtime emulator: every rule of the dialect report, and both combos end to end
with the official ``openai`` client."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import TypeAdapter
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from shared.audio import StreamResampler
from sim.openai_realtime import RealtimeEmulator
from sim.speech import speech

openai = pytest.importorskip("openai")
import openai.types.beta.realtime as beta_types  # noqa: E402
import openai.types.realtime as ga_types  # noqa: E402

GA_SERVER = TypeAdapter(ga_types.RealtimeServerEvent)
BETA_SERVER = TypeAdapter(beta_types.RealtimeServerEvent)
PCM = StreamResampler(8000, 24000).process(speech("hello there, can you hear me")).tobytes()
GA_SESSION = {
    "type": "realtime",
    "output_modalities": ["audio"],
    "audio": {
        "input": {"format": {"type": "audio/pcm", "rate": 24000}},
        "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"},
    },
}
BETA_SESSION = {
    "modalities": ["audio", "text"],
    "input_audio_format": "pcm16",
    "output_audio_format": "pcm16",
    "voice": "alloy",
}


@pytest.fixture
async def emulator() -> AsyncIterator[RealtimeEmulator]:
    emu = RealtimeEmulator()
    await emu.start()
    yield emu
    await emu.stop()


class Raw:
    """A bare WebSocket client, for sending what the SDK would not let us send."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(event))

    async def next(self, type_: str) -> dict[str, Any]:
        while True:
            event = json.loads(await self.ws.recv())
            if event["type"] == type_:
                return event


async def raw(emulator: RealtimeEmulator, beta: bool = False) -> Any:
    headers = {"Authorization": "Bearer sk-test"}
    if beta:
        headers["OpenAI-Beta"] = "realtime=v1"
    return connect(emulator.url + "?model=gpt-realtime", additional_headers=headers)


async def error_for(
    emulator: RealtimeEmulator, event: dict[str, Any], beta: bool = False
) -> dict[str, Any]:
    async with await raw(emulator, beta) as ws:
        r = Raw(ws)
        await r.next("session.created")
        await r.send({**event, "event_id": "evt_1"})
        err = await r.next("error")
        assert err["error"]["event_id"] == "evt_1"
        return err["error"]


async def test_ga_rejects_session_turn_detection(emulator: RealtimeEmulator) -> None:
    e = await error_for(
        emulator,
        {
            "type": "session.update",
            "session": {**GA_SESSION, "turn_detection": {"type": "server_vad"}},
        },
    )
    assert (e["code"], e["param"], e["message"]) == (
        "unknown_parameter",
        "session.turn_detection",
        "Unknown parameter: 'session.turn_detection'.",
    )


async def test_ga_requires_session_type(emulator: RealtimeEmulator) -> None:
    session = {k: v for k, v in GA_SESSION.items() if k != "type"}
    e = await error_for(emulator, {"type": "session.update", "session": session})
    assert (e["code"], e["param"]) == ("missing_required_parameter", "session.type")


@pytest.mark.parametrize("fmt", [{"type": "audio/pcm"}, {"type": "audio/pcm", "rate": 16000}])
async def test_ga_audio_pcm_needs_a_rate_of_24000(
    emulator: RealtimeEmulator, fmt: dict[str, Any]
) -> None:
    session = {"type": "realtime", "audio": {"input": {"format": fmt}}}
    e = await error_for(emulator, {"type": "session.update", "session": session})
    assert e["param"] == "session.audio.input.format.rate"
    assert e["code"] in ("missing_required_parameter", "invalid_value")


async def test_ga_rejects_response_modalities(emulator: RealtimeEmulator) -> None:
    e = await error_for(
        emulator, {"type": "response.create", "response": {"modalities": ["audio", "text"]}}
    )
    assert (e["code"], e["message"]) == (
        "unknown_parameter",
        "Unknown parameter: 'response.modalities'.",
    )


async def test_flat_without_the_header_is_an_unknown_parameter(emulator: RealtimeEmulator) -> None:
    e = await error_for(emulator, {"type": "session.update", "session": BETA_SESSION})
    assert e["code"] == "unknown_parameter" and e["message"].startswith(
        "Unknown parameter: 'session."
    )


async def test_beta_rejects_session_audio(emulator: RealtimeEmulator) -> None:
    e = await error_for(emulator, {"type": "session.update", "session": GA_SESSION}, beta=True)
    assert e["code"] == "unknown_parameter"
    assert e["param"] in ("session.type", "session.audio", "session.output_modalities")
    e = await error_for(emulator, {"type": "session.update", "session": {"audio": {}}}, beta=True)
    assert e["message"] == "Unknown parameter: 'session.audio'."


async def test_beta_rejects_audio_only_modalities(emulator: RealtimeEmulator) -> None:
    e = await error_for(
        emulator, {"type": "session.update", "session": {"modalities": ["audio"]}}, beta=True
    )
    assert (e["code"], e["param"]) == ("invalid_value", "session.modalities")
    e = await error_for(
        emulator, {"type": "response.create", "response": {"modalities": ["audio"]}}, beta=True
    )
    assert (e["code"], e["param"]) == ("invalid_value", "response.modalities")


@pytest.mark.parametrize("beta", [False, True])
async def test_commit_of_less_than_100ms_is_commit_empty(
    emulator: RealtimeEmulator, beta: bool
) -> None:
    async with await raw(emulator, beta) as ws:
        r = Raw(ws)
        await r.next("session.created")
        await r.send(
            {
                "type": "input_audio_buffer.append",
                "audio": base64.b64encode(b"\0\0" * 1200).decode(),
            }
        )
        await r.send({"type": "input_audio_buffer.commit"})
        err = (await r.next("error"))["error"]
        assert err["code"] == "input_audio_buffer_commit_empty"
        assert "50.00ms" in err["message"]


async def test_garbage_is_answered_not_fatal(emulator: RealtimeEmulator) -> None:
    async with await raw(emulator) as ws:
        r = Raw(ws)
        await r.next("session.created")
        await ws.send("not json")
        assert (await r.next("error"))["error"]["code"] == "invalid_json"
        await r.send({"type": "no.such.event"})
        assert (await r.next("error"))["error"]["param"] == "type"
        await r.send({"type": "input_audio_buffer.append", "audio": "!!!"})
        assert (await r.next("error"))["error"]["code"] == "invalid_value"
        await r.send({"type": "response.cancel"})
        assert (await r.next("error"))["error"]["code"] == "response_cancel_not_active"
        await r.send({"type": "session.update", "session": GA_SESSION})
        await r.next("session.updated")  # still serving


async def test_handshake_needs_a_key_and_a_model(emulator: RealtimeEmulator) -> None:
    with pytest.raises(InvalidStatus) as err:
        async with connect(emulator.url + "?model=m"):
            pass
    assert err.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as err:
        async with connect(emulator.url, additional_headers={"Authorization": "Bearer k"}):
            pass
    assert err.value.response.status_code == 400


async def test_beta_disabled_closes_with_4000() -> None:
    async with RealtimeEmulator(beta_disabled=True) as emu:
        async with await raw(emu, beta=True) as ws:
            r = Raw(ws)
            assert (await r.next("error"))["error"]["code"] == "beta_api_shape_disabled"
            with pytest.raises(ConnectionClosed) as err:
                await ws.recv()
            assert err.value.rcvd is not None and err.value.rcvd.code == 4000


def _client(emulator: RealtimeEmulator) -> Any:
    return openai.AsyncOpenAI(
        api_key="sk-test", websocket_base_url=emulator.url.rsplit("/realtime", 1)[0]
    )


async def test_combo_a_with_the_official_client(emulator: RealtimeEmulator) -> None:
    async with _client(emulator).realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(
            session={
                **GA_SESSION,
                "audio": {
                    **GA_SESSION["audio"],
                    "input": {**GA_SESSION["audio"]["input"], "turn_detection": None},
                },
            }
        )
        await conn.input_audio_buffer.append(audio=base64.b64encode(PCM[:28800]).decode())
        await conn.input_audio_buffer.commit()
        await conn.response.create(
            response={
                "audio": {
                    "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}
                }
            }
        )
        types = []
        async for event in conn:
            types.append(event.type)
            if event.type == "response.done":
                break
    assert "response.output_audio.delta" in types and "response.audio.delta" not in types
    session = emulator.sessions[0]
    assert session.dialect == "ga" and session.responses[0].audio
    for event in session.server_events:
        GA_SERVER.validate_python(event)


async def test_combo_b_with_the_official_client(emulator: RealtimeEmulator) -> None:
    async with _client(emulator).beta.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={**BETA_SESSION, "turn_detection": None})
        await conn.input_audio_buffer.append(audio=base64.b64encode(PCM[:28800]).decode())
        await conn.input_audio_buffer.commit()
        await conn.response.create(
            response={
                "modalities": ["audio", "text"],
                "output_audio_format": "pcm16",
                "voice": "alloy",
            }
        )
        types = []
        async for event in conn:
            types.append(event.type)
            if event.type == "response.done":
                break
    assert "response.audio.delta" in types and "response.output_audio.delta" not in types
    session = emulator.sessions[0]
    assert session.dialect == "beta"
    for event in session.server_events:
        BETA_SERVER.validate_python(event)


async def test_server_vad_answers_by_itself_and_a_barge_in_cancels(
    emulator: RealtimeEmulator,
) -> None:
    async with await raw(emulator) as ws:
        r = Raw(ws)
        await r.next("session.created")
        silence = b"\0\0" * 24000
        for chunk in (PCM, silence):
            for i in range(0, len(chunk), 960):
                await r.send(
                    {
                        "type": "input_audio_buffer.append",
                        "audio": base64.b64encode(chunk[i : i + 960]).decode(),
                    }
                )
        session = emulator.sessions[0]
        await session.wait_for_event("input_audio_buffer.speech_started")
        await session.wait_for_event("input_audio_buffer.speech_stopped")
        await session.wait_for_event("response.created")
        await session.wait_for_event("response.output_audio.delta")
        # The caller speaks again while the reply is being generated: the server cancels it.
        for i in range(0, len(PCM), 960):
            await r.send(
                {
                    "type": "input_audio_buffer.append",
                    "audio": base64.b64encode(PCM[i : i + 960]).decode(),
                }
            )
        done = await session.wait_for_event("response.done")
        assert done["response"]["status"] in ("cancelled", "completed")
        for event in session.server_events:
            GA_SERVER.validate_python(event)


async def test_truncate_is_validated(emulator: RealtimeEmulator) -> None:
    async with await raw(emulator) as ws:
        r = Raw(ws)
        await r.next("session.created")
        await r.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
            }
        )
        await r.next("session.updated")
        await r.send({"type": "response.create"})
        done = await r.next("response.done")
        item_id = done["response"]["output"][0]["id"]
        await r.send(
            {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": 99999,
            }
        )
        assert (await r.next("error"))["error"]["param"] == "audio_end_ms"
        await r.send(
            {
                "type": "conversation.item.truncate",
                "item_id": "nope",
                "content_index": 0,
                "audio_end_ms": 1,
            }
        )
        assert (await r.next("error"))["error"]["param"] == "item_id"
        await r.send(
            {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": 300,
            }
        )
        assert (await r.next("conversation.item.truncated"))["audio_end_ms"] == 300
        assert emulator.sessions[0].truncations[0]["audio_end_ms"] == 300
