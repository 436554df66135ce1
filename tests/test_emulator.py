"""The OpenAI Realtime emulator: every rule of the dialect report, and both combos end to end
with the official ``openai`` client."""

from __future__ import annotations

import asyncio
import base64
import collections.abc
import json
import typing
from typing import Any

import pytest
import typing_extensions as te
from pydantic import TypeAdapter
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from shared.audio import StreamResampler
from sim.openai_realtime import RealtimeEmulator
from sim.realtime_rules import CLIENT_EVENTS
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


class Raw:
    """A bare WebSocket client, for sending what the SDK would not let us send."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(event))

    async def next(self, type_: str) -> dict[str, Any]:
        async with asyncio.timeout(10):
            while True:
                event = json.loads(await self.ws.recv())
                if event["type"] == type_:
                    return event

    async def collect(self, until: str) -> list[dict[str, Any]]:
        """Every event up to and including the first ``until``."""
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            while not events or events[-1]["type"] != until:
                events.append(json.loads(await self.ws.recv()))
        return events

    async def session(self, session: dict[str, Any]) -> dict[str, Any]:
        """Send a session.update after session.created; the echoed session."""
        await self.next("session.created")
        await self.send({"type": "session.update", "session": session})
        async with asyncio.timeout(10):
            while True:
                event = json.loads(await self.ws.recv())
                assert event["type"] != "error", event["error"]
                if event["type"] == "session.updated":
                    return dict(event["session"])


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


@pytest.mark.parametrize("env", [None, "refuse"])
async def test_the_beta_header_is_refused_by_default_as_the_live_api_does(
    env: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if env is None:
        monkeypatch.delenv("EMULATOR_BETA", raising=False)
    else:
        monkeypatch.setenv("EMULATOR_BETA", env)
    async with RealtimeEmulator() as emu:
        async with await raw(emu, beta=True) as ws:
            r = Raw(ws)
            error = (await r.next("error"))["error"]
            assert error == {
                "type": "invalid_request_error",
                "code": "beta_api_shape_disabled",
                "message": "The Realtime Beta API is no longer supported. Please use "
                "/v1/realtime for the GA API.",
                "param": None,
                "event_id": None,
            }
            with pytest.raises(ConnectionClosed) as err:
                await ws.recv()
            assert err.value.rcvd is not None and err.value.rcvd.code == 4000
        # GA (combo A) is unaffected
        async with await raw(emu) as ws:
            assert (await Raw(ws).next("session.created"))["session"]["type"] == "realtime"


async def test_beta_accept_restores_combo_b_by_argument_or_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EMULATOR_BETA", "accept")
    for emulator in (RealtimeEmulator(), RealtimeEmulator(beta="accept")):
        async with emulator as emu:
            async with await raw(emu, beta=True) as ws:
                created = await Raw(ws).next("session.created")
                assert created["session"]["input_audio_format"] == "pcm16"
    monkeypatch.setenv("EMULATOR_BETA", "accept")
    async with RealtimeEmulator(beta="refuse") as emu:  # the argument wins over the variable
        async with await raw(emu, beta=True) as ws:
            assert (await Raw(ws).next("error"))["error"]["code"] == "beta_api_shape_disabled"
    with pytest.raises(ValueError, match="accept"):
        RealtimeEmulator(beta="sometimes")


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
        # Read what was sent (a client that stops reading cannot close: its websockets stops
        # reading past 16 queued messages and never sees the close frame that answers it).
        done = await r.next("response.done")
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


# --- the key trees are the SDK's request models ---------------------------------------------------


def sdk_keys(tp: Any) -> Any:
    """The keys a request TypedDict (or a union or list of them) allows, as a tree in
    ``sim.realtime_rules``' form; alternatives' object shapes are merged."""
    origin, args = te.get_origin(tp), te.get_args(tp)
    if origin in (te.Annotated, te.Required, te.NotRequired):
        return sdk_keys(args[0])
    if te.is_typeddict(tp):
        hints = te.get_type_hints(tp, include_extras=True)
        return {key: sdk_keys(value) for key, value in hints.items()}
    if origin is typing.Union:
        merged: Any = None
        for arg in args:
            merged = _merge(merged, sdk_keys(arg))
        return merged
    if origin in (list, collections.abc.Iterable, collections.abc.Sequence):
        item = sdk_keys(args[0])
        return None if item is None else [item]
    return None


def _merge(a: Any, b: Any) -> Any:
    if isinstance(a, dict) and isinstance(b, dict):
        return {**a, **{k: _merge(a.get(k), v) for k, v in b.items()}}
    if isinstance(a, list) and isinstance(b, list):
        return [_merge(a[0], b[0])]
    return b if a is None else a


def sdk_client_events(dialect: str) -> dict[str, Any]:
    """Each client event type of a dialect's SDK union, with its key tree."""
    if dialect == "ga":
        from openai.types.realtime.response_create_event_with_references_param import (
            ResponseCreateEventWithReferencesParam,
        )

        union = [
            *typing.get_args(ga_types.RealtimeClientEventParam),
            ResponseCreateEventWithReferencesParam,  # what the SDK's send() also takes
        ]
    else:
        union = list(typing.get_args(beta_types.RealtimeClientEventParam))
    events: dict[str, Any] = {}
    for model in union:
        kind = typing.get_args(typing.get_type_hints(model)["type"])[0]
        events[kind] = _merge(events.get(kind), sdk_keys(model))
    return events


@pytest.mark.parametrize("dialect", ["ga", "beta"])
def test_every_emulated_event_takes_exactly_the_sdks_keys(dialect: str) -> None:
    sdk = sdk_client_events(dialect)
    for kind, tree in CLIENT_EVENTS[dialect].items():
        assert kind in sdk, kind
        assert tree == sdk[kind], kind


@pytest.mark.parametrize(
    ("beta", "event"),
    [
        (
            False,
            {
                "type": "session.update",
                "session": {"type": "realtime", "parallel_tool_calls": True},
            },
        ),
        (
            False,
            {
                "type": "session.update",
                "session": {"type": "realtime", "reasoning": {"effort": "low"}},
            },
        ),
        (
            False,
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "include": ["item.input_audio_transcription.logprobs"],
                    "audio": {
                        "input": {
                            "noise_reduction": {"type": "near_field", "strength": 0.5},
                            "transcription": {
                                "model": "gpt-4o-transcribe",
                                "language": "en",
                                "prompt": "a phone call",
                            },
                        }
                    },
                },
            },
        ),
        (False, {"type": "response.create", "response": {"parallel_tool_calls": False}}),
        (
            True,
            {
                "type": "session.update",
                "session": {"client_secret": {"expires_after": {"anchor": "created_at"}}},
            },
        ),
    ],
)
async def test_keys_the_sdk_defines_are_accepted(
    emulator: RealtimeEmulator, beta: bool, event: dict[str, Any]
) -> None:
    async with await raw(emulator, beta) as ws:
        r = Raw(ws)
        await r.next("session.created")
        await r.send({**event, "event_id": "evt_1"})
        want = "session.updated" if event["type"] == "session.update" else "response.created"
        events = await r.collect(want)
        assert not [e for e in events if e["type"] == "error"]


@pytest.mark.parametrize(
    ("beta", "session", "param"),
    [
        (True, {"include": ["item.input_audio_transcription.logprobs"]}, "session.include"),
        (True, {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 5000}}, None),
        (False, {"type": "realtime", "client_secret": {}}, "session.client_secret"),
    ],
)
async def test_keys_the_sdk_does_not_define_are_unknown(
    emulator: RealtimeEmulator, beta: bool, session: dict[str, Any], param: str | None
) -> None:
    e = await error_for(emulator, {"type": "session.update", "session": session}, beta)
    assert e["code"] == "unknown_parameter"
    if param:
        assert e["param"] == param


# --- values the live API refuses ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("beta", "event", "param", "value"),
    [
        (
            True,
            {"type": "response.create", "response": {"output_audio_format": "mp3"}},
            "response.output_audio_format",
            "'mp3'",
        ),
        (
            False,
            {"type": "response.create", "response": {"output_modalities": ["video"]}},
            "response.output_modalities[0]",
            "'video'",
        ),
        (
            False,
            {"type": "response.create", "response": {"output_modalities": ["audio", "text"]}},
            "response.output_modalities",
            '["audio", "text"]',
        ),
        (
            False,
            {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["x"]}},
            "session.output_modalities[0]",
            "'x'",
        ),
        (
            True,
            {"type": "session.update", "session": {"modalities": ["text", 7]}},
            "session.modalities[1]",
            "7",
        ),
        (
            False,
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"turn_detection": {"type": "vad"}}},
                },
            },
            "session.audio.input.turn_detection.type",
            "'vad'",
        ),
        (
            True,
            {"type": "session.update", "session": {"turn_detection": {"type": "vad"}}},
            "session.turn_detection.type",
            "'vad'",
        ),
        (
            False,
            {"type": "session.update", "session": {"type": "transcription"}},
            "session.type",
            "'transcription'",
        ),
    ],
)
async def test_values_the_live_api_refuses(
    emulator: RealtimeEmulator, beta: bool, event: dict[str, Any], param: str, value: str
) -> None:
    e = await error_for(emulator, event, beta)
    assert (e["type"], e["code"], e["param"]) == ("invalid_request_error", "invalid_value", param)
    assert value in e["message"]


async def test_ga_turn_detection_needs_a_type(emulator: RealtimeEmulator) -> None:
    session = {"type": "realtime", "audio": {"input": {"turn_detection": {"threshold": 0.6}}}}
    e = await error_for(emulator, {"type": "session.update", "session": session})
    assert (e["code"], e["param"]) == (
        "missing_required_parameter",
        "session.audio.input.turn_detection.type",
    )


async def test_a_transcription_session_update_changes_nothing(emulator: RealtimeEmulator) -> None:
    async with await raw(emulator) as ws:
        r = Raw(ws)
        await r.next("session.created")
        await r.send(
            {
                "type": "session.update",
                "session": {"type": "transcription", "audio": {"input": {"turn_detection": None}}},
            }
        )
        assert (await r.next("error"))["error"]["param"] == "session.type"
        assert emulator.sessions[0].turn_detection is not None


async def test_wrong_types_are_errors_not_crashes(emulator: RealtimeEmulator) -> None:
    async with await raw(emulator) as ws:
        r = Raw(ws)
        await r.next("session.created")
        fmt = {"input": {"format": {"type": ["audio/pcm"]}}}
        for event, code in (
            ({"session": {"type": "realtime", "audio": "loud"}}, "invalid_type"),
            (
                {"session": {"type": "realtime", "audio": {"input": {"turn_detection": "on"}}}},
                "invalid_type",
            ),
            ({"session": {"type": "realtime", "output_modalities": "audio"}}, "invalid_type"),
            ({"session": {"type": "realtime", "instructions": 7}}, "invalid_type"),
            ({"session": {"type": "realtime", "audio": fmt}}, "invalid_value"),
            ({"type": "response.create", "response": {"instructions": ["hi"]}}, "invalid_type"),
        ):
            await r.send({"type": "session.update", **event})
            assert (await r.next("error"))["error"]["code"] == code
        await r.send({"type": "session.update", "session": GA_SESSION})
        await r.next("session.updated")  # still serving


# --- responses: cancel, text only, item done, truncation ------------------------------------------


async def _manual_session(r: Raw, beta: bool, extra: dict[str, Any] | None = None) -> None:
    """A session without turn detection, so only the client starts responses."""
    if beta:
        await r.session({**BETA_SESSION, "turn_detection": None, **(extra or {})})
    else:
        audio = {
            **GA_SESSION["audio"],
            "input": {**GA_SESSION["audio"]["input"], "turn_detection": None},
        }
        await r.session({**GA_SESSION, "audio": audio, **(extra or {})})


@pytest.mark.parametrize("beta", [False, True])
async def test_a_client_cancel_is_client_cancelled(emulator: RealtimeEmulator, beta: bool) -> None:
    async with await raw(emulator, beta) as ws:
        r = Raw(ws)
        await _manual_session(r, beta)
        await r.send({"type": "response.create"})
        await r.next("response.created")
        await r.send({"type": "response.cancel"})
        done = await r.next("response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "client_cancelled"
    validator = BETA_SERVER if beta else GA_SERVER
    for event in emulator.sessions[0].server_events:
        validator.validate_python(event)


async def test_a_barge_in_is_turn_detected(emulator: RealtimeEmulator) -> None:
    async with await raw(emulator) as ws:
        r = Raw(ws)
        await r.next("session.created")
        await r.send({"type": "response.create"})
        await r.next("response.output_audio.delta")
        for i in range(0, len(PCM), 960):
            chunk = base64.b64encode(PCM[i : i + 960]).decode()
            await r.send({"type": "input_audio_buffer.append", "audio": chunk})
        done = await r.next("response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "turn_detected"


@pytest.mark.parametrize(
    ("beta", "where"),
    [(False, "session"), (False, "response"), (True, "session"), (True, "response")],
)
async def test_text_only_streams_text_and_no_audio(
    emulator: RealtimeEmulator, beta: bool, where: str
) -> None:
    key = "modalities" if beta else "output_modalities"
    async with await raw(emulator, beta) as ws:
        r = Raw(ws)
        await _manual_session(r, beta, {key: ["text"]} if where == "session" else None)
        response = {key: ["text"]} if where == "response" else {}
        await r.send(
            {"type": "response.create", "response": {**response, "instructions": "Hi there."}}
        )
        events = await r.collect("response.done")
    types = [e["type"] for e in events]
    text = "response.text" if beta else "response.output_text"
    assert f"{text}.delta" in types and f"{text}.done" in types
    assert not [t for t in types if "audio" in t]
    done = events[-1]["response"]
    assert done[key] == ["text"]
    content = done["output"][0]["content"][0]
    assert content == {"type": "text" if beta else "output_text", "text": "Hi there."}
    validator = BETA_SERVER if beta else GA_SERVER
    for event in emulator.sessions[0].server_events:
        validator.validate_python(event)


async def test_ga_sends_conversation_item_done_for_the_reply(emulator: RealtimeEmulator) -> None:
    async with await raw(emulator) as ws:
        r = Raw(ws)
        await _manual_session(r, beta=False)
        await r.send({"type": "response.create"})
        events = await r.collect("response.done")
    types = [e["type"] for e in events]
    item_id = events[-1]["response"]["output"][0]["id"]
    done = [e for e in events if e["type"] == "conversation.item.done"]
    assert [e["item"]["id"] for e in done] == [item_id]
    assert done[0]["item"]["status"] == "completed"
    assert types.index("response.output_audio.done") < types.index("conversation.item.done")
    assert types.index("conversation.item.done") < types.index("response.done")


async def test_beta_has_no_conversation_item_done(emulator: RealtimeEmulator) -> None:
    async with await raw(emulator, beta=True) as ws:
        r = Raw(ws)
        await _manual_session(r, beta=True)
        await r.send({"type": "response.create"})
        events = await r.collect("response.done")
    assert "conversation.item.done" not in [e["type"] for e in events]


@pytest.mark.parametrize("modalities", [["audio"], ["text"]])
async def test_truncate_checks_the_content_index(
    emulator: RealtimeEmulator, modalities: list[str]
) -> None:
    async with await raw(emulator) as ws:
        r = Raw(ws)
        await _manual_session(r, beta=False)
        await r.send({"type": "response.create", "response": {"output_modalities": modalities}})
        item_id = (await r.next("response.done"))["response"]["output"][0]["id"]
        truncate = {"type": "conversation.item.truncate", "item_id": item_id, "audio_end_ms": 0}
        await r.send({**truncate, "content_index": 1})
        err = (await r.next("error"))["error"]
        assert (err["code"], err["param"]) == ("invalid_value", "content_index")
        await r.send({**truncate, "content_index": 0})
        if modalities == ["audio"]:
            assert (await r.next("conversation.item.truncated"))["content_index"] == 0
        else:
            err = (await r.next("error"))["error"]
            assert (err["code"], err["param"]) == ("invalid_value", "content_index")


async def test_a_long_running_emulator_keeps_only_its_newest_ended_sessions() -> None:
    async with RealtimeEmulator(keep_sessions=2) as emulator:
        for _ in range(4):
            async with await raw(emulator) as ws:
                await Raw(ws).next("session.created")
            session = emulator.sessions[-1]
            await session.wait_closed(timeout=5)
        assert emulator.opened == 4 and len(emulator.sessions) == 2
        assert emulator.sessions[-1] is session
