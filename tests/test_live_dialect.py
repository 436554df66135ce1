"""GPT-Live (combo C) without sockets: every client event against the SDK's types, the server
events parsed, the history within its limits, and the call's core on a virtual clock: greeting,
DTMF, transcripts, pacing and barge-in (the 200 ms rule), tools, hang-up after the goodbye."""

from __future__ import annotations

import base64
import json
from collections import deque
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.live import ClientEvent, ServerEvent
from pydantic import BaseModel, TypeAdapter

from shared import call_actions as ca
from shared import live_conversation as lc
from shared import live_dialect as ld
from shared.agent import load_agent_file
from shared.realtime_dialect import FunctionCall
from shared.streams import ClearPlayback, DtmfPressed, HangUp, MarkPlayed, ToolResult
from shared.tool_calls import CallIdentity, CallTools
from tests.conftest import ROOT

CLIENT = TypeAdapter(ClientEvent)
SERVER = TypeAdapter(ServerEvent)
AGENT = load_agent_file(str(ROOT / "agents" / "example.toml"))
TOOLS = {t.name: t for t in AGENT.tools}
IDENTITY = CallIdentity("CA" + "1" * 32, "MZ1", "+15550001111", "+15550002222", {})
CONFIG = ld.LiveConfig(
    "gpt-live-1.1", "Be brief.", "marin", 24000, tuple(t.declaration() for t in AGENT.tools)
)
RATE = 24000
MS = 1000  # µs


def strict(event: dict[str, Any] | str) -> BaseModel:
    """The event as the SDK parses it, with nothing left over anywhere (model_extra empty)."""
    data = json.loads(event) if isinstance(event, str) else event
    model = CLIENT.validate_python(data)
    _no_extra(model, data.get("type", "?"))
    return model


def _no_extra(value: object, where: str) -> None:
    if isinstance(value, BaseModel):
        assert not value.model_extra, f"{where}: unknown fields {value.model_extra}"
        for name in type(value).model_fields:
            _no_extra(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _no_extra(item, f"{where}[{i}]")


def sent(actions: list[ca.Action]) -> list[dict[str, Any]]:
    return [json.loads(a.text) for a in actions if isinstance(a, ca.SendToModel)]


def server(event: dict[str, Any]) -> ld.LiveEvent:
    """A server event that the SDK's ServerEvent parses, as the gateway reads it."""
    SERVER.validate_python(event)
    return ld.parse(json.dumps(event))


def tone(ms: int, amp: int = 8000, rate: int = RATE) -> bytes:
    t = np.arange(rate * ms // 1000)
    return (amp * np.sin(2 * np.pi * 440 * t / rate)).astype("<i2").tobytes()


def silence(ms: int, rate: int = RATE) -> bytes:
    return b"\x00\x00" * (rate * ms // 1000)


# --- client events ----------------------------------------------------------------------------


def test_session_start_carries_model_audio_voice_delegation_and_history() -> None:
    transcript: list[tuple[ld.Role, str]] = [
        ("user", "Hi"),
        ("assistant", "Hello, how can I help?"),
    ]
    event = ld.session_start(CONFIG, transcript)
    model = strict(event)
    session = event["session"]
    assert session["model"] == "gpt-live-1.1"
    assert session["audio"] == {
        "format": {"type": "audio/pcm", "rate": 24000},
        "output": {"voice": "marin"},
    }
    delegation = session["delegation"]
    assert delegation["type"] == "responses"
    assert [t["name"] for t in delegation["responses"]["tools"]] == list(TOOLS)
    assert [m["role"] for m in session["input"]] == ["user", "assistant"]
    assert type(model).__name__ == "SessionStartEvent"


@pytest.mark.parametrize("rate", [16000, 24000])
def test_both_pcm_rates_validate_and_others_are_refused(rate: int) -> None:
    config = ld.LiveConfig("gpt-live-1.1", "x", "marin", rate)
    strict(ld.session_start(config))
    assert "delegation" not in ld.session_start(config)["session"]  # no tools: none needed
    with pytest.raises(ld.LiveConfigError, match="8000"):
        ld.LiveConfig("gpt-live-1.1", "x", "marin", 8000)


def test_every_other_client_event_validates_strictly() -> None:
    for event in (
        ld.append_audio(b"\x01\x00" * 480),
        ld.commentary("Greet the caller."),
        ld.instructions_append("The caller pressed 5."),
        ld.function_call_output("call_1", '{"ok":true}'),
        ld.developer_item("Result of an earlier call: 42"),
        ld.response_create(),
        ld.session_close(),
    ):
        strict(event)
    audio = json.loads(ld.append_audio(b"\x01\x02"))["audio"]
    assert base64.b64decode(audio) == b"\x01\x02"


def test_the_model_never_goes_in_the_url() -> None:
    request = ld.connect_request(ld.LIVE_URL, "sk-x")
    assert request.url == "wss://api.openai.com/v1/live/sessions"
    assert "sk-x" not in repr(request)
    with pytest.raises(ld.LiveConfigError, match="session.start"):
        ld.connect_request(ld.LIVE_URL + "?model=gpt-live-1.1", "sk-x")


def test_history_keeps_the_newest_within_128_messages_and_8192_tokens() -> None:
    transcript: list[tuple[ld.Role, str]] = [
        ("user" if i % 2 else "assistant", f"message {i} " + "word " * 40) for i in range(400)
    ]
    items = ld.history(transcript)
    assert len(items) <= 128
    tokens = sum(ld.estimate_tokens(i["content"][0]["text"]) + 8 for i in items)
    assert tokens <= 8192
    assert items[-1]["content"][0]["text"].startswith("message 399 ")
    texts = [i["content"][0]["text"] for i in items]
    assert texts == [t.strip() for _, t in transcript[-len(items) :]]  # oldest dropped first
    few = ld.history([("user", f"m{i}") for i in range(300)])
    assert len(few) == 128 and few[-1]["content"][0]["text"] == "m299"
    strict(ld.session_start(CONFIG, transcript))


def test_one_huge_message_keeps_its_end() -> None:
    text = "start " + "x" * 60_000 + " the end"
    (item,) = ld.history([("user", text)])
    kept = item["content"][0]["text"]
    assert kept.endswith("the end") and ld.estimate_tokens(kept) <= 8192


def test_the_token_estimate_is_conservative() -> None:
    # About four characters a token in English: the estimate counts more, never fewer.
    text = "The quick brown fox jumps over the lazy dog. " * 20
    assert ld.estimate_tokens(text) >= len(text) / 4
    assert ld.estimate_tokens("日本語のテキスト") >= 8


# --- server events ---------------------------------------------------------------------------


def test_server_events_parse_into_typed_values() -> None:
    pcm = tone(20)
    assert server(
        {"type": "session.output_audio.delta", "delta": base64.b64encode(pcm).decode()}
    ) == ld.OutputAudio(pcm)
    part = server(
        {
            "type": "session.input_transcript.delta",
            "event_id": "e1",
            "delta": "hello",
            "start_ms": 100,
            "end_ms": 300,
        }
    )
    assert part == ld.TranscriptPart("user", "hello", 100, 300)
    call = server(
        {
            "type": "response.event",
            "event_id": "e2",
            "delegation_id": "d1",
            "event": {
                "type": "response.output_item.done",
                "output_index": 0,
                "sequence_number": 3,
                "item": {
                    "type": "function_call",
                    "id": "fc_1",
                    "call_id": "call_1",
                    "name": "lookup_order",
                    "arguments": '{"order_id":"1"}',
                    "status": "completed",
                },
            },
        }
    )
    assert isinstance(call, ld.BackendCall) and call.call.call_id == "call_1"
    unfinished = json.loads(json.dumps({"type": "response.event", "event_id": "e", "event": {}}))
    unfinished["event"] = {
        "type": "response.output_item.done",
        "item": {"type": "function_call", "call_id": "c", "name": "n", "status": "incomplete"},
    }
    assert isinstance(server(unfinished), ld.OtherLive)
    done = server(
        {
            "type": "response.event",
            "event_id": "e3",
            "event": {"type": "response.completed", "response": {"id": "resp_1"}},
        }
    )
    assert done == ld.BackendDone("resp_1", "", "completed")
    error = server(
        {
            "type": "error",
            "event_id": "e4",
            "error": {"type": "invalid_request_error", "code": "invalid_api_key", "message": "no"},
        }
    )
    assert isinstance(error, ld.LiveError) and error.kind is ld.LiveErrorKind.FATAL


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=64),
        st.text(max_size=64),
        st.dictionaries(
            st.sampled_from(["type", "delta", "event", "error", "session", "delegation"]),
            st.one_of(
                st.none(), st.integers(), st.text(max_size=8), st.lists(st.integers(), max_size=2)
            ),
            max_size=4,
        ).map(json.dumps),
    )
)
def test_garbage_raises_only_the_protocol_error(message: str | bytes) -> None:
    try:
        ld.parse(message)
    except ld.LiveProtocolError:
        pass


def test_nothing_is_sent_before_session_started() -> None:
    opening = ld.LiveOpening(CONFIG)
    assert json.loads(opening.first)["type"] == "session.start"
    core = lc.LiveConversation(greeting="Hello!")
    assert core.caller_audio(tone(20), 0) == []  # not started: nothing goes
    refused = opening.receive(
        json.dumps(
            {
                "type": "error",
                "event_id": "e",
                "error": {"type": "x", "code": "bad", "message": "m"},
            }
        )
    )
    assert opening.refused == refused and opening.started is None


# --- the call's core on a virtual clock ------------------------------------------------------


def started(core: lc.LiveConversation, now_us: int = 0) -> list[ca.Action]:
    return core.server_event(ld.Started("live_1"), now_us)


def test_greeting_is_commentary_right_after_session_started_and_only_once() -> None:
    core = lc.LiveConversation(greeting="Thanks for calling!")
    (event,) = sent(started(core))
    strict(event)
    assert event["type"] == "session.commentary.append" and event["delegation_id"] is None
    assert "Thanks for calling!" in event["content"]
    assert sent(started(core)) == []  # a later session: no second greeting


def test_dtmf_reaches_the_model_as_instructions_and_the_call_events() -> None:
    core = lc.LiveConversation()
    started(core)
    actions = core.control(DtmfPressed("5"), 0)
    (event,) = sent(actions)
    strict(event)
    assert event["type"] == "session.instructions.append" and "5" in event["content"]
    assert any(isinstance(a, ca.WriteEvent) and a.event.kind == "dtmf" for a in actions)


def transcripts(actions: list[ca.Action]) -> list[tuple[str, str]]:
    return [
        (a.event.data["role"], a.event.data["text"])
        for a in actions
        if isinstance(a, ca.WriteEvent) and a.event.kind == "transcript"
    ]


def test_transcript_deltas_become_a_turn_after_a_quiet_gap() -> None:
    core = lc.LiveConversation()
    started(core)
    out: list[ca.Action] = []
    for i, word in enumerate(["Hel", "lo ", "there"]):
        out += core.server_event(
            ld.TranscriptPart("user", word, 200 * i, 200 * i + 200), i * 200 * MS
        )
        out += core.tick(i * 200 * MS + 100 * MS)
    assert transcripts(out) == []  # still coming
    assert transcripts(core.tick(400 * MS + lc.TURN_GAP_MS * MS)) == [("caller", "Hello there")]
    # A delta far later on the session's timeline closes the side's previous turn at once.
    core.server_event(ld.TranscriptPart("assistant", "Hi.", 2000, 2200), 3_000 * MS)
    out = core.server_event(ld.TranscriptPart("assistant", " Bye.", 5000, 5200), 3_010 * MS)
    assert transcripts(out) == [("assistant", "Hi.")]
    assert core.transcript[-1] == ("assistant", "Hi.")
    assert transcripts(core.session_lost()) == [("assistant", "Bye.")]


def test_pauses_are_kept_long_silence_is_not_forwarded_and_segments_follow_speech() -> None:
    core = lc.LiveConversation()
    started(core)
    chunks = []
    stream = [tone(40), silence(40), tone(40)] + [silence(40)] * 20 + [tone(40)]
    for i, pcm in enumerate(stream):
        actions = core.server_event(ld.OutputAudio(pcm), i * 40 * MS)
        chunks += [a.chunk for a in actions if isinstance(a, ca.WriteOutbound)]
    hangover = lc.SILENCE_HANGOVER_US // 40_000  # silent deltas still forwarded
    assert len(chunks) == 3 + hangover + 1
    first, last = chunks[0].item_id, chunks[-1].item_id
    assert all(c.item_id == first for c in chunks[:-1]) and last != first
    assert [c.offset_us for c in chunks[:3]] == [0, 40_000, 80_000]  # the pause kept its place
    assert chunks[-1].offset_us == 0
    assert core.gate.dropped_silence_us == (20 - hangover) * 40_000


class Twilio:
    """Twilio's playback on the virtual clock: plays what it holds in real time; ``clear``
    drops it. Counts what the caller heard after a given moment."""

    def __init__(self) -> None:
        self.queue: deque[tuple[str, int]] = deque()  # (item, µs) pieces
        self.clock = 0
        self.heard_after: dict[int, int] = {}
        self.watch_from: int | None = None
        self.heard_since_watch = 0

    def play_until(self, now_us: int) -> None:
        while self.clock < now_us and self.queue:
            item, left = self.queue[0]
            step = min(left, now_us - self.clock)
            if self.watch_from is not None and self.clock >= self.watch_from:
                self.heard_since_watch += step
            self.clock += step
            if step == left:
                self.queue.popleft()
            else:
                self.queue[0] = (item, left - step)
        self.clock = max(self.clock, now_us)

    def perform(self, actions: list[ca.Action], rate: int = RATE) -> None:
        for a in actions:
            if isinstance(a, ca.WriteOutbound):
                self.queue.append((a.chunk.item_id, len(a.chunk.audio) * 1_000_000 // (2 * rate)))
            elif isinstance(a, ca.WriteCommand) and isinstance(a.command, ClearPlayback):
                self.queue.clear()


@pytest.mark.parametrize("ahead_ms", [0, 120, 1000])
def test_the_caller_hears_at_most_200ms_after_the_model_yields(ahead_ms: int) -> None:
    """The model's stream runs ``ahead_ms`` ahead of real time (a burst at the start), the
    caller talks over it at 1 s, the model falls silent 300 ms later: from then on the caller
    hears at most 200 ms (one delta plus the pipeline's hop), whatever Twilio held."""
    core = lc.LiveConversation()
    started(core)
    twilio = Twilio()
    hop_us = 40 * MS  # worker -> Redis -> transcoder -> edge -> Twilio, generous
    delta_ms = 40
    stop_us = 1_300 * MS
    for i in range(90):  # 3.6 s of stream
        sent_at = max(0, i * delta_ms * MS - ahead_ms * MS)
        caller_speaks = sent_at >= 1_000 * MS
        if caller_speaks:
            core.caller_audio(tone(20, 6000), sent_at)
        speaking = sent_at < stop_us
        pcm = tone(delta_ms) if speaking else silence(delta_ms)
        actions = core.server_event(ld.OutputAudio(pcm), sent_at)
        twilio.play_until(sent_at + hop_us)
        if not speaking and twilio.watch_from is None:
            twilio.watch_from = sent_at  # the first silent delta: the model stopped sending
        twilio.perform(actions)
    twilio.play_until(10_000 * MS)
    assert twilio.heard_since_watch <= 200 * MS, twilio.heard_since_watch


def test_a_natural_end_is_played_out_not_cleared() -> None:
    core = lc.LiveConversation()
    started(core)
    twilio = Twilio()
    out: list[ca.Action] = []
    for i in range(25):
        pcm = tone(40) if i < 10 else silence(40)
        out += core.server_event(ld.OutputAudio(pcm), 0)  # all at once: 400 ms queued
    assert not any(isinstance(a, ca.WriteCommand) for a in out)
    twilio.perform(out)
    twilio.play_until(10_000 * MS)
    assert twilio.clock >= 400 * MS


def tool_core(**kw: Any) -> lc.LiveConversation:
    core = lc.LiveConversation(tools=CallTools(TOOLS, IDENTITY, **kw))
    started(core)
    return core


def backend_call(
    core: lc.LiveConversation, call_id: str, name: str, args: str, now_us: int
) -> list[ca.Action]:
    core.server_event(ld.BackendStarted("resp_1", "d1"), now_us)
    # response.output_item.done names no response: the envelope's delegation ties it.
    core.server_event(ld.BackendCall("", "d1", FunctionCall(call_id, name, args)), now_us)
    return core.server_event(ld.BackendDone("resp_1", "d1", "completed"), now_us)


def test_a_tools_answer_goes_to_the_backend_then_one_response_create() -> None:
    core = tool_core()
    actions = backend_call(core, "call_1", "lookup_order", '{"order_id": "123"}', 0)
    runs = [a for a in actions if isinstance(a, ca.RunTool)]
    assert [r.call.call_id for r in runs] == ["call_1"]
    assert runs[0].call.call_sid == IDENTITY.call_sid
    out = core.control(
        ToolResult("call_1", "lookup_order", '{"status":"shipped"}', "ok", 12), 1_000
    )
    events = sent(out)
    for e in events:
        strict(e)
    assert [e["type"] for e in events] == ["response.item.create", "response.create"]
    assert events[0]["item"] == {
        "type": "function_call_output",
        "call_id": "call_1",
        "output": '{"status":"shipped"}',
    }
    # Only once the backend's next response has begun may another go.
    assert sent(core.tick(2_000)) == []


def test_an_output_waits_while_a_backend_response_runs() -> None:
    core = tool_core()
    backend_call(core, "call_1", "lookup_order", '{"order_id": "1"}', 0)
    core.server_event(ld.BackendStarted("resp_2", "d2"), 10)
    assert sent(core.control(ToolResult("call_1", "lookup_order", "{}", "ok", 1), 20)) == []
    events = sent(core.server_event(ld.BackendDone("resp_2", "d2", "completed"), 30))
    assert [e["type"] for e in events] == ["response.item.create", "response.create"]


def test_a_result_for_an_earlier_sessions_call_goes_as_a_developer_note() -> None:
    core = tool_core()
    backend_call(core, "call_1", "lookup_order", '{"order_id": "1"}', 0)
    core.session_lost()
    started(core, 100)
    events = sent(core.control(ToolResult("call_1", "lookup_order", "{}", "ok", 1), 200))
    for e in events:
        strict(e)
    assert events[0]["item"]["role"] == "developer" and "call_1" in events[0]["item"]["content"]


def test_hang_up_ends_the_call_after_the_goodbye_was_heard() -> None:
    core = tool_core()
    actions = backend_call(core, "call_9", "hang_up", "{}", 0)
    events = sent(actions)
    for e in events:
        strict(e)
    assert [e["type"] for e in events] == ["response.item.create", "response.create"]
    assert not any(isinstance(a, ca.EndCall) for a in actions)
    # The goodbye: 600 ms of speech from 100 ms on, then silence.
    now = 0
    for i in range(15):
        now = 100 * MS + i * 40 * MS
        core.server_event(ld.OutputAudio(tone(40)), now)
        assert not any(isinstance(a, ca.EndCall) for a in core.tick(now))
    core.server_event(ld.OutputAudio(silence(40)), now + 40 * MS)
    # Quiet, but Twilio has not returned the last mark yet: the caller is still hearing it.
    late = now + 40 * MS + lc.GOODBYE_QUIET_US
    assert not any(isinstance(a, ca.EndCall) for a in core.tick(late))
    segment = core.gate.segment
    core.control(MarkPlayed(f"{segment}:600"), late)
    assert not any(isinstance(a, ca.EndCall) for a in core.tick(late))  # its pause: not yet
    core.control(MarkPlayed(f"{segment}:{int(core.heard.sent_ms[segment])}"), late)
    ending = core.tick(late + 1)
    assert ca.EndCall("model_hung_up") in ending
    assert any(
        isinstance(a, ca.WriteCommand) and a.command == HangUp("model_hung_up") for a in ending
    )


def test_hang_up_without_a_goodbye_does_not_wait_for_ever() -> None:
    core = tool_core()
    backend_call(core, "call_9", "hang_up", "{}", 0)
    assert not any(isinstance(a, ca.EndCall) for a in core.tick(lc.GOODBYE_WAIT_US - 1))
    assert ca.EndCall("model_hung_up") in core.tick(lc.GOODBYE_WAIT_US)


def test_an_incomplete_backend_response_runs_no_call() -> None:
    core = tool_core()
    core.server_event(ld.BackendStarted("resp_1", "d1"), 0)
    core.server_event(ld.BackendCall("resp_1", "d1", FunctionCall("c", "lookup_order", "{}")), 0)
    actions = core.server_event(ld.BackendDone("resp_1", "d1", "incomplete"), 0)
    assert not any(isinstance(a, ca.RunTool) for a in actions)


def test_a_fatal_error_ends_the_call() -> None:
    core = lc.LiveConversation()
    actions = core.server_event(
        ld.LiveError("invalid_api_key", "no", "", ld.LiveErrorKind.FATAL), 0
    )
    assert ca.EndCall("realtime_invalid_api_key") in actions
