"""The dialect layer against the report's payloads and the official SDK's own types."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter

from shared import realtime_dialect as rd
from shared.runtime.settings import load_settings
from tests.conftest import ROOT

openai_types = pytest.importorskip("openai.types.realtime")
beta_types = pytest.importorskip("openai.types.beta.realtime")
GA_CLIENT = TypeAdapter(openai_types.RealtimeClientEvent)
BETA_CLIENT = TypeAdapter(beta_types.RealtimeClientEvent)

CONFIG = rd.SessionConfig(voice="alloy", instructions="Be brief.", turn_detection="server_vad")


def dialect(combo: rd.Combo, **over: Any) -> rd.RealtimeDialect:
    cfg = dataclasses.replace(CONFIG, **over)
    return rd.RealtimeDialect.for_combo(combo, cfg)


def unknown_keys(model: Any, path: str = "") -> list[str]:
    """Every key the SDK's models kept in model_extra, i.e. did not know."""
    found: list[str] = []
    if isinstance(model, BaseModel):
        for key in model.model_extra or {}:
            found.append(f"{path}.{key}".lstrip("."))
        for name in type(model).model_fields:
            found += unknown_keys(getattr(model, name), f"{path}.{name}")
    elif isinstance(model, list | tuple):
        for i, item in enumerate(model):
            found += unknown_keys(item, f"{path}[{i}]")
    elif isinstance(model, dict):
        for key, value in model.items():
            found += unknown_keys(value, f"{path}.{key}")
    return found


def every_event(d: rd.RealtimeDialect) -> list[dict[str, Any]]:
    return [
        d.session_update(),
        d.response_create(),
        d.response_create(instructions="Say hello."),
        json.loads(d.append_audio(b"\x00\x01" * 480)),
        d.commit(),
        d.clear_input(),
        d.cancel_response(),
        d.truncate("item_1", 1234),
        d.user_text_item("The caller pressed 7."),
        *d.context_items([("user", "hi"), ("assistant", "hello there")]),
    ]


@pytest.mark.parametrize("turn", ["server_vad", "semantic_vad", "none"])
@pytest.mark.parametrize("transcription", [None, "whisper-1"])
@pytest.mark.parametrize("combo", [rd.Combo.GA, rd.Combo.BETA])
def test_every_client_event_validates_against_the_sdk_with_no_unknown_key(
    combo: rd.Combo, turn: str, transcription: str | None
) -> None:
    d = rd.RealtimeDialect.for_combo(
        combo,
        rd.SessionConfig("alloy", "Be brief.", turn, 24000, transcription),  # type: ignore[arg-type]
    )
    adapter = GA_CLIENT if combo is rd.Combo.GA else BETA_CLIENT
    for event in every_event(d):
        model = adapter.validate_python(event)
        assert unknown_keys(model) == [], (event["type"], unknown_keys(model))
        # Round trip: nothing we send is lost or renamed by the SDK's model.
        dumped = model.model_dump(exclude_unset=True)
        assert dumped == event


def test_combo_a_payloads_are_the_reports() -> None:
    d = dialect(rd.Combo.GA)
    s = d.session_update()["session"]
    assert s["type"] == "realtime"
    assert s["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert s["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert s["audio"]["output"]["voice"] == "alloy"
    assert s["output_modalities"] == ["audio"]
    assert s["audio"]["input"]["turn_detection"] == {"type": "server_vad"}
    assert "turn_detection" not in s and "modalities" not in s
    assert d.response_create() == {
        "type": "response.create",
        "response": {
            "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}}
        },
    }


def test_combo_b_payloads_are_the_reports() -> None:
    d = dialect(rd.Combo.BETA)
    s = d.session_update()["session"]
    assert (s["input_audio_format"], s["output_audio_format"], s["voice"]) == (
        "pcm16",
        "pcm16",
        "alloy",
    )
    assert s["modalities"] == ["audio", "text"]
    assert "audio" not in s and "type" not in s
    assert d.response_create() == {
        "type": "response.create",
        "response": {
            "modalities": ["audio", "text"],
            "output_audio_format": "pcm16",
            "voice": "alloy",
        },
    }


def test_turn_detection_none_disables_it_where_each_dialect_wants() -> None:
    ga = dialect(rd.Combo.GA, turn_detection="none").session_update()["session"]
    assert ga["audio"]["input"]["turn_detection"] is None
    beta = dialect(rd.Combo.BETA, turn_detection="none").session_update()["session"]
    assert beta["turn_detection"] is None


def test_connection_requests_per_combo() -> None:
    ga = dialect(rd.Combo.GA).connect_request(
        "wss://api.openai.com/v1/realtime", "gpt-realtime", "sk-x"
    )
    assert ga.url == "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    assert ga.headers == {"Authorization": "Bearer sk-x"}
    beta = dialect(rd.Combo.BETA).connect_request(
        "ws://127.0.0.1:9/v1/realtime?x=1&model=old", "m 1", "sk-x"
    )
    assert beta.url == "ws://127.0.0.1:9/v1/realtime?x=1&model=m+1"
    assert beta.headers["OpenAI-Beta"] == "realtime=v1"
    assert "sk-x" not in repr(beta)


@pytest.mark.parametrize("name", ["response.output_audio.delta", "response.audio.delta"])
def test_both_audio_event_names_are_one_delta(name: str) -> None:
    msg = json.dumps(
        {
            "type": name,
            "response_id": "r",
            "item_id": "i",
            "output_index": 0,
            "content_index": 0,
            "delta": base64.b64encode(b"\x01\x02").decode(),
        }
    )
    for combo in rd.Combo:
        assert dialect(combo).parse(msg) == rd.AudioDelta("r", "i", 0, 0, b"\x01\x02")


@pytest.mark.parametrize(
    "prefix", ["response.output_audio_transcript", "response.audio_transcript"]
)
def test_both_transcript_names(prefix: str) -> None:
    d = dialect(rd.Combo.GA)
    assert d.parse(
        json.dumps({"type": prefix + ".delta", "response_id": "r", "item_id": "i", "delta": "he"})
    ) == rd.TranscriptDelta("r", "i", "he")
    assert d.parse(
        json.dumps(
            {"type": prefix + ".done", "response_id": "r", "item_id": "i", "transcript": "hey"}
        )
    ) == rd.TranscriptDone("r", "i", "hey")


def _err(code: str | None, message: str, param: str | None = "") -> str:
    return json.dumps(
        {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "code": code,
                "message": message,
                "param": param,
                "event_id": None,
            },
        }
    )


def test_errors_are_classified() -> None:
    ga, beta = dialect(rd.Combo.GA), dialect(rd.Combo.BETA)
    e = ga.parse(_err("input_audio_buffer_commit_empty", "buffer too small"))
    assert isinstance(e, rd.ServerError) and e.kind is rd.ErrorKind.BENIGN
    e = beta.parse(
        _err("unknown_parameter", "Unknown parameter: 'session.modalities'.", "session.modalities")
    )
    assert e.kind is rd.ErrorKind.DIALECT_MISMATCH and e.implies is rd.Combo.GA  # type: ignore[union-attr]
    e = ga.parse(_err("unknown_parameter", "Unknown parameter: 'session.audio'."))
    assert e.kind is rd.ErrorKind.DIALECT_MISMATCH and e.implies is rd.Combo.BETA  # type: ignore[union-attr]
    e = beta.parse(_err("beta_api_shape_disabled", "The beta shape is disabled."))
    assert e.kind is rd.ErrorKind.DIALECT_MISMATCH and e.implies is rd.Combo.GA  # type: ignore[union-attr]
    assert ga.parse(_err("invalid_api_key", "bad key")).kind is rd.ErrorKind.FATAL  # type: ignore[union-attr]
    assert ga.parse(_err("whatever", "x")).kind is rd.ErrorKind.OTHER  # type: ignore[union-attr]


def test_an_error_with_null_fields_is_still_read_from_its_message() -> None:
    """The server sends ``null`` for an error's optional ``param`` and ``code``; the message
    alone must then say which key the server did not know."""
    ga, beta = dialect(rd.Combo.GA), dialect(rd.Combo.BETA)
    e = beta.parse(_err("unknown_parameter", "Unknown parameter: 'session.type'.", None))
    assert isinstance(e, rd.ServerError) and e.param == ""
    assert e.kind is rd.ErrorKind.DIALECT_MISMATCH and e.implies is rd.Combo.GA
    e = ga.parse(_err(None, "Unknown parameter: 'session.turn_detection'.", None))
    assert isinstance(e, rd.ServerError) and e.code == ""
    assert e.kind is rd.ErrorKind.DIALECT_MISMATCH and e.implies is rd.Combo.BETA
    bad_rate = ga.parse(
        _err(
            "missing_required_parameter",
            "Missing required parameter: 'session.audio.input.format.rate'.",
            "session.audio.input.format.rate",
        )
    )
    assert bad_rate.kind is rd.ErrorKind.OTHER  # type: ignore[union-attr]


def test_session_created_tells_the_dialect_it_shows() -> None:
    d = dialect(rd.Combo.GA)
    ga = d.parse(
        json.dumps({"type": "session.created", "session": {"type": "realtime", "audio": {}}})
    )
    beta = d.parse(
        json.dumps({"type": "session.created", "session": {"input_audio_format": "pcm16"}})
    )
    assert ga.dialect_seen == "ga" and beta.dialect_seen == "beta"  # type: ignore[union-attr]


def test_overrides_are_validated() -> None:
    config = load_settings().session_config()
    assert config.with_overrides({"voice": "verse", "caller": "+1"}).voice == "verse"
    with pytest.raises(ValueError):
        config.with_overrides({"voice": "Robert'); drop"})


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=40),
        st.text(max_size=40),
        st.dictionaries(
            st.sampled_from(["type", "delta", "error", "response", "session", "item"]),
            st.one_of(
                st.none(),
                st.integers(),
                st.text(max_size=10),
                st.sampled_from(list(rd._HANDLERS)),
                st.dictionaries(st.text(max_size=5), st.text(max_size=5)),
            ),
            max_size=4,
        ).map(json.dumps),
    )
)
def test_garbage_raises_only_the_protocol_error(message: str | bytes) -> None:
    for combo in rd.Combo:
        try:
            dialect(combo).parse(message)
        except rd.RealtimeProtocolError:
            pass


def test_what_ends_a_handshake_for_good() -> None:
    assert (
        rd.close_refusal(4000, "beta_api_shape_disabled") == "closed 4000 beta_api_shape_disabled"
    )
    assert rd.close_refusal(1006, "") is None  # a lost connection: reconnect


def test_the_agent_files_session_validates_against_the_sdk_in_both_dialects() -> None:
    """Tools, turn-detection knobs and noise reduction from agents/example.toml, and the tool
    answers (function_call_output, a system note, an out-of-band response): nothing left in
    model_extra, nothing lost in a round trip."""
    config = load_settings(agent_file=str(ROOT / "agents" / "example.toml")).session_config()
    assert config.tools and config.turn_knobs and config.noise_reduction == "near_field"
    for combo in rd.Combo:
        d = rd.RealtimeDialect.for_combo(combo, config)
        session = d.session_update()["session"]
        assert [t["name"] for t in session["tools"]] == [
            "lookup_order",
            "hang_up",
            "transfer_to_human",
        ]
        assert session["tool_choice"] == "auto"
        assert all("function" not in t for t in session["tools"])  # the flat shape
        adapter = GA_CLIENT if combo is rd.Combo.GA else BETA_CLIENT
        events = [
            d.session_update(),
            d.function_call_output("call_1", '{"status": "shipped"}'),
            d.system_text_item("Result of the lookup_order tool: shipped"),
            d.response_create("Say you are still on it.", out_of_band=True),
        ]
        for event in events:
            model = adapter.validate_python(event)
            assert unknown_keys(model) == [], (event["type"], unknown_keys(model))
            assert model.model_dump(exclude_unset=True) == event
    beta = rd.RealtimeDialect.for_combo(
        rd.Combo.BETA, dataclasses.replace(config, turn_knobs={"idle_timeout_ms": 5000})
    )
    assert "idle_timeout_ms" not in beta.session_update()["session"]["turn_detection"]


def test_response_done_lists_its_function_calls() -> None:
    done = json.dumps(
        {
            "type": "response.done",
            "response": {
                "id": "resp_1",
                "status": "completed",
                "output": [
                    {"type": "message", "id": "item_1"},
                    {
                        "type": "function_call",
                        "id": "item_2",
                        "call_id": "call_9",
                        "name": "lookup_order",
                        "arguments": '{"order_id": "123"}',
                        "status": "completed",
                    },
                ],
            },
        }
    )
    for combo in rd.Combo:
        event = dialect(combo).parse(done)
        assert isinstance(event, rd.ResponseDone) and event.status == "completed"
        assert event.calls == (
            rd.FunctionCall("call_9", "lookup_order", '{"order_id": "123"}', "item_2"),
        )
