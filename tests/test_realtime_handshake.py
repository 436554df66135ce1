"""Opening a Realtime session without sockets: session.created -> session.update ->
session.updated, and the dialect chosen next when the server refuses one (REALTIME_SCHEMA=auto)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shared import realtime_dialect as rd
from shared.realtime_handshake import (
    DialectMemory,
    Dropped,
    Ignored,
    Ready,
    RealtimeHandshake,
    Refused,
    SendText,
    SwitchDialect,
)

CONFIG = rd.SessionConfig(voice="alloy", instructions="Be brief.", turn_detection="server_vad")
CREATED = json.dumps({"type": "session.created", "session": {"id": "sess_1"}})
UPDATED = json.dumps({"type": "session.updated", "session": {"id": "sess_1", "voice": "alloy"}})


def error(code: str | None, message: str, param: str | None = None) -> str:
    body: dict[str, Any] = {"type": "invalid_request_error", "code": code, "message": message}
    body["param"] = param
    return json.dumps({"type": "error", "error": body})


UNKNOWN_TYPE = error("unknown_parameter", "Unknown parameter: 'session.type'.", "session.type")
UNKNOWN_MODALITIES = error(
    "unknown_parameter", "Unknown parameter: 'session.modalities'.", "session.modalities"
)


def test_the_update_answers_session_created_and_updated_makes_it_ready() -> None:
    hs = RealtimeHandshake.for_schema(CONFIG, "audio", False)
    [send] = hs.receive(CREATED)
    assert isinstance(send, SendText)
    assert json.loads(send.text) == hs.dialect.session_update()
    [ready] = hs.receive(UPDATED)
    assert isinstance(ready, Ready) and ready.dialect.combo is rd.Combo.GA
    assert ready.session["id"] == "sess_1" and hs.done
    assert hs.receive(UPDATED) == []  # decided: nothing more


def test_beta_is_the_flat_schema_with_the_header() -> None:
    hs = RealtimeHandshake.for_schema(CONFIG, "flat", True)
    request = hs.connect_request("wss://api.openai.com/v1/realtime", "gpt-realtime", "sk-x")
    assert request.headers["OpenAI-Beta"] == "realtime=v1"
    [send] = hs.receive(CREATED)
    assert isinstance(send, SendText) and "input_audio_format" in send.text


def test_auto_switches_once_then_refuses() -> None:
    hs = RealtimeHandshake.for_schema(CONFIG, "auto", False)
    hs.receive(CREATED)
    [switch] = hs.receive(UNKNOWN_TYPE)
    assert isinstance(switch, SwitchDialect) and switch.dialect.combo is rd.Combo.BETA
    second = hs.next_attempt()
    assert second.dialect.combo is rd.Combo.BETA and second.dialect.beta_header
    second.receive(CREATED)
    refused = second.closed(4000, "beta_api_shape_disabled")
    assert isinstance(refused, Refused)
    assert "GA:" in refused.reason and "BETA:" in refused.reason


def test_auto_accepts_the_second_dialect() -> None:
    hs = RealtimeHandshake.for_schema(CONFIG, "auto", False, preferred=rd.Combo.BETA)
    assert isinstance(hs.closed(4000, ""), SwitchDialect)  # the beta shape is gone
    ga = hs.next_attempt()
    assert ga.dialect.combo is rd.Combo.GA and not ga.dialect.beta_header
    ga.receive(CREATED)
    [ready] = ga.receive(UPDATED)
    assert isinstance(ready, Ready) and ready.dialect.combo is rd.Combo.GA


RETIRED_MESSAGE = (
    "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."
)
RETIRED = error("beta_api_shape_disabled", RETIRED_MESSAGE)


def test_a_retired_beta_goes_on_in_ga_with_the_apis_own_words() -> None:
    """Combo B configured (flat + header): the live API's refusal of the beta shape, first thing
    on the connection, moves the call to GA; the next attempt is GA without the header."""
    hs = RealtimeHandshake.for_schema(CONFIG, "flat", True)
    [switch] = hs.receive(RETIRED)
    assert isinstance(switch, SwitchDialect) and switch.beta_retired
    assert switch.dialect.combo is rd.Combo.GA and not switch.dialect.beta_header
    assert RETIRED_MESSAGE in switch.reason
    assert hs.closed(4000, "beta_api_shape_disabled") is switch  # the close that follows
    ga = hs.next_attempt()
    assert ga.dialect.combo is rd.Combo.GA
    request = ga.connect_request("wss://api.openai.com/v1/realtime", "gpt-realtime", "sk-x")
    assert "OpenAI-Beta" not in request.headers
    [send] = ga.receive(CREATED)
    assert isinstance(send, SendText) and json.loads(send.text)["session"]["type"] == "realtime"
    [ready] = ga.receive(UPDATED)
    assert isinstance(ready, Ready) and ready.dialect.combo is rd.Combo.GA


def test_a_bare_4000_close_is_the_retirement_too() -> None:
    hs = RealtimeHandshake.for_schema(CONFIG, "flat", True)
    switch = hs.closed(4000, "beta_api_shape_disabled")
    assert isinstance(switch, SwitchDialect) and switch.beta_retired
    assert switch.dialect.combo is rd.Combo.GA


def test_auto_meeting_the_retired_beta_marks_it_retired() -> None:
    hs = RealtimeHandshake.for_schema(CONFIG, "auto", False, preferred=rd.Combo.BETA)
    [switch] = hs.receive(RETIRED)
    assert isinstance(switch, SwitchDialect) and switch.beta_retired


def test_ga_refused_after_a_retired_beta_is_refused_not_looped() -> None:
    hs = RealtimeHandshake.for_schema(CONFIG, "flat", True)
    hs.receive(RETIRED)
    ga = hs.next_attempt()
    ga.receive(CREATED)
    [refused] = ga.receive(UNKNOWN_TYPE)
    assert isinstance(refused, Refused)
    assert "BETA: beta_api_shape_disabled" in refused.reason and "GA:" in refused.reason


def test_retirement_is_only_the_beta_headers() -> None:
    """A GA session (no header) closed with 4000 is not a retired beta: no switch to GA."""
    hs = RealtimeHandshake.for_schema(CONFIG, "audio", False)
    refused = hs.closed(4000, "")
    assert isinstance(refused, Refused)


def test_the_process_remembers_the_retirement_and_warns_once() -> None:
    memory = DialectMemory()
    first = memory.handshake(CONFIG, "flat", True)
    assert first.dialect.combo is rd.Combo.BETA  # nothing learned yet: as configured
    [switch] = first.receive(RETIRED)
    assert memory.learn(switch) is True
    # A second call that met the refusal before the first one's switch: no second warning.
    beside = RealtimeHandshake.for_schema(CONFIG, "flat", True)
    [again] = beside.receive(RETIRED)
    assert memory.learn(again) is False
    later = memory.handshake(CONFIG, "flat", True)  # later calls open GA directly
    assert later.dialect.combo is rd.Combo.GA and not later.dialect.beta_header
    assert memory.handshake(CONFIG, "auto", False).dialect.combo is rd.Combo.GA
    assert memory.handshake(CONFIG, "audio", False).dialect.combo is rd.Combo.GA
    [send] = later.receive(CREATED)
    assert isinstance(send, SendText) and '"type": "realtime"' in send.text


def test_memory_follows_the_dialect_accepted_under_auto() -> None:
    memory = DialectMemory()
    hs = RealtimeHandshake.for_schema(CONFIG, "auto", False, preferred=rd.Combo.BETA)
    hs.receive(CREATED)
    [ready] = hs.receive(UPDATED)
    assert isinstance(ready, Ready)
    memory.accepted(ready.dialect)
    assert memory.handshake(CONFIG, "auto", False).dialect.combo is rd.Combo.BETA
    assert memory.learn(ready) is False


def test_a_configured_dialect_never_switches() -> None:
    hs = RealtimeHandshake.for_schema(CONFIG, "flat", True)
    hs.receive(CREATED)
    [refused] = hs.receive(UNKNOWN_MODALITIES)
    assert isinstance(refused, Refused) and "session.modalities" in refused.reason


def test_an_error_answering_the_update_refuses_it_and_a_benign_one_does_not() -> None:
    hs = RealtimeHandshake.for_schema(CONFIG, "audio", False)
    hs.receive(CREATED)
    assert hs.receive(error("input_audio_buffer_commit_empty", "buffer too small")) == []
    [refused] = hs.receive(error("invalid_value", "Invalid value: 'nobody'.", "session.voice"))
    assert isinstance(refused, Refused) and "invalid_value" in refused.reason


def test_an_ordinary_drop_is_retried_in_the_same_dialect() -> None:
    hs = RealtimeHandshake.for_schema(CONFIG, "auto", False)
    dropped = hs.closed(1006, "")
    assert isinstance(dropped, Dropped)
    again = hs.next_attempt()
    assert again.dialect.combo is rd.Combo.GA and again.negotiate


def test_garbage_is_ignored_not_raised() -> None:
    hs = RealtimeHandshake.for_schema(CONFIG, "audio", False)
    [ignored] = hs.receive(b"\x00not json")
    assert isinstance(ignored, Ignored) and not hs.done


def test_two_handshakes_share_nothing() -> None:
    """A rollover opens a second session beside a live one: each attempt is its own object."""
    live = RealtimeHandshake.for_schema(CONFIG, "audio", False)
    live.receive(CREATED)
    live.receive(UPDATED)
    beside = RealtimeHandshake.for_schema(CONFIG, "audio", False)
    assert not beside.done
    [send] = beside.receive(CREATED)
    assert isinstance(send, SendText)


MESSAGES = [CREATED, UPDATED, UNKNOWN_TYPE, UNKNOWN_MODALITIES, RETIRED, "{}", "[]", "not json"]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["audio", "flat", "auto"]),
    st.lists(
        st.one_of(
            st.sampled_from(MESSAGES).map(lambda m: ("message", m)),
            st.sampled_from([1000, 1006, 4000]).map(lambda c: ("close", c)),
            st.just(("next", 0)),
        ),
        max_size=12,
    ),
)
def test_any_sequence_leaves_the_handshake_consistent(schema: str, steps: list[Any]) -> None:
    hs = RealtimeHandshake.for_schema(CONFIG, schema, schema == "flat")
    tried = {hs.dialect.combo}
    retired = False  # the beta shape refused as retired: the one way out of a configured combo
    for kind, value in steps:
        if kind == "message":
            out = hs.receive(value)
            assert all(not isinstance(s, Dropped) for s in out)
            if hs.done:
                assert hs.receive(value) == []
        elif kind == "close":
            assert hs.closed(value, "") is not None and hs.done
        else:
            retired = retired or (isinstance(hs.outcome, SwitchDialect) and hs.outcome.beta_retired)
            hs = hs.next_attempt()
            tried.add(hs.dialect.combo)
        if schema == "audio" or (schema == "flat" and not retired):
            assert tried == {rd.Combo(schema)}  # a configured dialect is never left
        if schema == "flat" and retired:
            assert tried == {rd.Combo.BETA, rd.Combo.GA}
        assert len(tried) <= 2
