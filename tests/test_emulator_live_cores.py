"""The Live emulator's pure parts, without a network: the rules, the output stream, delegation."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from sim.live_delegation import Delegator
from sim.live_rules import SERVER_EVENT, parse_client_event
from sim.live_stream import OutputStream, Utterance, transcript_windows
from sim.realtime_rules import Rejection, WireFormat
from sim.realtime_tools import ScriptedToolCall

RESPONSES = TypeAdapter(ResponseStreamEvent)
PCM24 = WireFormat("pcm16", 24000)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
TYPES = st.sampled_from(
    [
        "session.start",
        "session.update",
        "session.input_audio.append",
        "response.item.create",
        "session.commentary.append",
        "session.close",
        "nope",
    ]
)


@given(JSON, TYPES)
def test_garbage_is_refused_with_the_emulators_own_error_only(body: Any, kind: str) -> None:
    for event in (body, {"type": kind, **(body if isinstance(body, dict) else {"x": body})}):
        try:
            parse_client_event(json.dumps(event))
        except Rejection as rejection:
            assert rejection.code and rejection.message


@given(st.integers(0, 10_000), st.integers(1, 5_000), st.text(max_size=60))
def test_transcript_windows_sit_on_200_ms_boundaries_and_add_up_to_the_text(
    start: int, duration: int, text: str
) -> None:
    windows = transcript_windows(start, duration, text)
    assert all(s % 200 == 0 and e == s + 200 for s, e, _ in windows)
    assert windows == sorted(windows)
    assert "".join(t for _, _, t in windows).split() == text.split()
    for s, e, _ in windows:  # within the audio they describe
        assert s >= start // 200 * 200 and e < start + duration + 200


def test_the_stream_is_speech_then_zero_samples_and_an_interruption_drops_the_rest() -> None:
    stream = OutputStream(PCM24, 40)
    speech = np.full(24000, 1000, dtype="<i2").tobytes()  # 500 ms
    stream.say(Utterance(speech, "one two three", "echo"))
    stream.say(Utterance(speech, "four", "echo"))
    chunks = [stream.next_chunk() for _ in range(5)]
    assert all(len(c.audio) == 1920 and c.speech for c in chunks)
    current = stream.interrupt()
    assert current is not None and current.interrupted_ms == 200 and not stream.speaking
    after = stream.next_chunk()
    assert after.audio == bytes(1920) and not after.speech
    assert [u.text for u in stream.spoken] == ["one two three"]  # the second never began
    said = [t for c in [*chunks, after] for t in c.transcripts]
    assert all(end <= 200 for _, end, _ in said)


def test_mu_law_silence_is_zero_samples_encoded() -> None:
    stream = OutputStream(WireFormat("g711_ulaw", 8000), 40)
    assert stream.next_chunk().audio == b"\xff" * 320


def _responses(tools: list[str]) -> dict[str, Any]:
    return {
        "type": "responses",
        "responses": {"model": "m", "tools": [{"type": "function", "name": n} for n in tools]},
    }


def test_delegation_waits_for_every_output_then_continues_once() -> None:
    delegator = Delegator(_responses(["a", "b"]))
    scripted = [
        ScriptedToolCall(1, "a", {"x": 1}),
        ScriptedToolCall(1, "b", {}),
        ScriptedToolCall(1, "c", {}),
    ]
    events = delegator.delegate(scripted, turn=1, offset_ms=400)
    assert events[0]["type"] == "session.delegation.created"
    for event in events:
        SERVER_EVENT.validate_python({"event_id": "e", **event})
    inner = [RESPONSES.validate_python(e["event"]) for e in events[1:]]
    calls = [e.item for e in inner if e.type == "response.output_item.done"]
    assert [c.name for c in calls] == ["a", "b"]  # "c" was not declared
    delegator.add_output(
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "1"}
    )
    with pytest.raises(Rejection) as refused:
        delegator.continue_()
    assert refused.value.code == "function_call_outputs_required"
    delegator.add_output(
        {"type": "function_call_output", "call_id": calls[1].call_id, "output": "2"}
    )
    events, said = delegator.continue_()
    assert said == ["Here is what I found: 1; 2"]
    assert [RESPONSES.validate_python(e["event"]).type for e in events][-1] == "response.completed"
    with pytest.raises(Rejection) as refused:
        delegator.continue_()
    assert refused.value.code == "no_response_waiting"


def test_client_delegation_and_its_ids() -> None:
    delegator = Delegator(None)
    (created,) = delegator.delegate([ScriptedToolCall(0, "anything", {})], turn=3, offset_ms=0)
    assert (
        created["delegation"]["target"] == "client" and "response_id" not in created["delegation"]
    )
    delegator.check_id(created["delegation"]["id"])
    delegator.check_id(None)
    with pytest.raises(Rejection):
        delegator.check_id("deleg_unknown")
    with pytest.raises(Rejection) as refused:
        delegator.update({"delegation": _responses([])})
    assert refused.value.param == "session.delegation.type"
    with pytest.raises(Rejection) as refused:
        Delegator(_responses([])).check_id("any")
    assert "Responses" in refused.value.message
