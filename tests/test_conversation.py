"""The worker's conversation core: turns, greeting, DTMF, barge-in, transcripts; no sockets."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import conversation as cv
from shared import realtime_dialect as rd
from shared.playback import HeardTracker, OutboundPlayback, mark_name, parse_mark_name
from shared.streams import ClearPlayback, DtmfPressed, MarkPlayed, OutboundChunk

CONFIG = rd.SessionConfig("alloy", "Be brief.", "server_vad")
FRAME = b"\x00\x00" * 480  # 20 ms at 24 kHz


def core(
    combo: rd.Combo = rd.Combo.GA, turn: str = "server_vad", **kw: object
) -> cv.CallConversation:
    return cv.CallConversation(rd.RealtimeDialect.for_combo(combo, CONFIG), turn, 50, **kw)  # type: ignore[arg-type]


def sent(actions: list[cv.Action]) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(a.text) for a in actions if isinstance(a, cv.SendToModel)]


def test_server_vad_only_appends() -> None:
    c = core()
    for _ in range(200):
        assert [e["type"] for e in sent(c.caller_audio(FRAME))] == ["input_audio_buffer.append"]


def test_turn_detection_none_commits_every_n_frames_and_asks_for_a_response() -> None:
    c = core(turn="none")
    types = []
    for _ in range(100):
        types += [e["type"] for e in sent(c.caller_audio(FRAME))]
    assert types.count("input_audio_buffer.commit") == 2
    assert types.count("response.create") == 2
    c.server_event(rd.ResponseCreated("r1"), 0)
    types = [e["type"] for _ in range(50) for e in sent(c.caller_audio(FRAME))]
    assert "response.create" not in types  # never two responses at once


def test_never_commits_less_than_100ms() -> None:
    c = cv.CallConversation(rd.RealtimeDialect.for_combo(rd.Combo.GA, CONFIG), "none", 5)
    tiny = b"\x00\x00" * 10  # frames far shorter than 20 ms
    types = [e["type"] for _ in range(20) for e in sent(c.caller_audio(tiny))]
    assert "input_audio_buffer.commit" not in types


def test_greeting_is_asked_for_once_at_the_start() -> None:
    c = core(greeting="Welcome to Acme.")
    [event] = sent(c.session_ready(0))
    assert (
        event["type"] == "response.create"
        and "Welcome to Acme." in event["response"]["instructions"]
    )
    assert sent(c.session_ready(1)) == []  # a reconnect does not greet again


def _delta(rid: str, item: str, ms: int) -> rd.AudioDelta:
    return rd.AudioDelta(rid, item, 0, 0, b"\x01\x00" * (24 * ms))


def test_deltas_become_outbound_chunks_with_offsets() -> None:
    c = core()
    a1 = c.server_event(_delta("r1", "i1", 100), 1000)
    a2 = c.server_event(_delta("r1", "i1", 50), 2000)
    chunks = [a.chunk for a in a1 + a2 if isinstance(a, cv.WriteOutbound)]
    assert [(ch.offset_us, ch.item_id, ch.response_id) for ch in chunks] == [
        (0, "i1", "r1"),
        (100_000, "i1", "r1"),
    ]


@pytest.mark.parametrize("combo", list(rd.Combo))
def test_barge_in_truncates_at_what_was_heard_and_clears(combo: rd.Combo) -> None:
    c = core(combo)
    c.server_event(rd.ResponseCreated("r1"), 0)
    c.server_event(_delta("r1", "i1", 1000), 0)
    c.control(MarkPlayed(mark_name("i1", 300)))
    c.control(MarkPlayed(mark_name("i1", 400)))
    actions = c.server_event(rd.SpeechStarted(5000, "u2"), 0)
    assert cv.WriteCommand(ClearPlayback("r1")) in actions
    [truncate] = sent(actions)
    assert truncate == {
        "type": "conversation.item.truncate",
        "item_id": "i1",
        "content_index": 0,
        "audio_end_ms": 400,
    }
    # What is still arriving of the interrupted response is dropped.
    assert c.server_event(_delta("r1", "i1", 100), 0) == []
    # A new response plays.
    assert any(isinstance(a, cv.WriteOutbound) for a in c.server_event(_delta("r2", "i2", 100), 0))


def test_speech_after_the_reply_finished_playing_is_not_a_barge_in() -> None:
    c = core()
    c.server_event(_delta("r1", "i1", 500), 0)
    c.control(MarkPlayed(mark_name("i1", 500)))
    assert c.server_event(rd.SpeechStarted(0, "u"), 0) == []


def test_dtmf_becomes_a_conversation_item_naming_the_digit() -> None:
    c = core()
    actions = c.control(DtmfPressed("7"))
    events = sent(actions)
    assert events[0]["type"] == "conversation.item.create"
    assert "7" in events[0]["item"]["content"][0]["text"]
    assert events[1]["type"] == "response.create"


def test_transcripts_are_kept_and_given_to_a_new_session() -> None:
    c = core()
    c.server_event(rd.InputTranscript("u1", "what time is it"), 0)
    c.server_event(rd.TranscriptDone("r1", "i1", "It is noon."), 0)
    assert c.transcript == [("user", "what time is it"), ("assistant", "It is noon.")]
    items = sent(c.session_ready(0))
    assert [i["item"]["role"] for i in items] == ["user", "assistant"]


def test_fatal_errors_end_the_call_benign_ones_do_not() -> None:
    c = core()
    benign = rd.ServerError("input_audio_buffer_commit_empty", "x", "", "", "", rd.ErrorKind.BENIGN)
    assert not any(isinstance(a, cv.EndCall) for a in c.server_event(benign, 0))
    fatal = rd.ServerError("invalid_api_key", "x", "", "", "", rd.ErrorKind.FATAL)
    assert any(isinstance(a, cv.EndCall) for a in c.server_event(fatal, 0))


def test_first_reply_is_measured_from_the_end_of_speech() -> None:
    c = core()
    c.server_event(rd.SpeechStopped(1000, "u"), 1_000_000)
    actions = c.server_event(_delta("r1", "i1", 20), 1_600_000)
    assert cv.Measure("first_reply", 0.6) in actions


def test_playback_marks_every_100ms_and_drops_cleared_responses() -> None:
    p = OutboundPlayback("MZ1")
    msgs = [json.loads(m) for m in p.chunk(OutboundChunk(b"\xff" * 2000, "r1", "i1", 50_000, 0))]
    marks = [m["mark"]["name"] for m in msgs if m["event"] == "mark"]
    assert marks == ["i1:150", "i1:250", "i1:300"]
    assert [json.loads(m)["event"] for m in p.clear("r1")] == ["clear"]
    assert p.chunk(OutboundChunk(b"\xff" * 160, "r1", "i1", 0, 0)) == []
    assert parse_mark_name("i1:150") == ("i1", 150) and parse_mark_name("garbage") is None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.builds(
                lambda r, i, n: _delta(f"r{r}", f"i{i}", n),
                st.integers(0, 3),
                st.integers(0, 3),
                st.integers(0, 50),
            ),
            st.builds(
                lambda i, ms: MarkPlayed(f"i{i}:{ms}"), st.integers(0, 3), st.integers(0, 3000)
            ),
            st.builds(lambda: rd.SpeechStarted(0, "u")),
            st.builds(lambda r: rd.ResponseCreated(f"r{r}"), st.integers(0, 3)),
            st.builds(lambda r: rd.ResponseDone(f"r{r}", "completed"), st.integers(0, 3)),
            st.just(DtmfPressed("5")),
            st.just(MarkPlayed("not ours")),
        ),
        max_size=40,
    )
)
def test_any_event_sequence_keeps_the_core_consistent(events: list) -> None:  # type: ignore[type-arg]
    c = core()
    for event in events:
        actions = (
            c.control(event)
            if isinstance(event, MarkPlayed | DtmfPressed)
            else c.server_event(event, 0)
        )
        for action in actions:
            if isinstance(action, cv.WriteOutbound):
                assert action.chunk.response_id not in c.cancelled
            if isinstance(action, cv.SendToModel) and '"conversation.item.truncate"' in action.text:
                t = json.loads(action.text)
                assert 0 <= t["audio_end_ms"]
    tracker: HeardTracker = c.heard
    for item, heard in tracker.heard_ms.items():
        assert heard >= 0 and item


def test_a_session_gives_way_at_a_quiet_moment_else_between_replies_sparing_the_caller() -> None:
    c = core(rd.Combo.GA)
    s, max_us, grace_us = 1_000_000, 100 * 1_000_000, 10 * 1_000_000
    now = 50 * s

    def may(age_us: int) -> bool:
        return c.may_switch(age_us, max_us, grace_us, now)

    assert not may(max_us - 1)  # not old enough
    assert may(max_us)  # quiet
    c.caller_speaking = True
    assert not may(max_us + grace_us - s)  # waits for a quiet moment
    # Past the grace the caller's turn is still spared (it would be split and lost)...
    assert not may(max_us + grace_us)
    # ...until the server's limit comes close.
    assert may(max_us + 2 * grace_us)
    c.caller_speaking = False
    c.heard.sent("item_1", 5000.0)  # a reply still playing (generated whole): no quiet moment
    assert not may(max_us + grace_us - s)
    assert may(max_us + grace_us)
    c.active_response = "resp_1"  # a reply being made is never cut
    assert not may(max_us + 3 * grace_us)


def test_the_moment_a_turn_ends_is_not_quiet_until_its_reply_begins() -> None:
    c = core(rd.Combo.GA)
    c.server_event(rd.SpeechStarted(0, "item_1"), 1_000_000)
    c.server_event(rd.SpeechStopped(1000, "item_1"), 2_000_000)
    # The server is creating the reply: a switch now would lose it, and the turn.
    assert not c.quiet(2_100_000)
    assert not c.may_switch(10**9, 1, 1, 2_100_000)
    assert c.quiet(2_000_000 + cv.REPLY_WAIT_US + 1)  # no reply came: not held for ever
