"""The simulator's pure cores, without sockets or clocks: one stream (SimulatedStream) driven by
events with their time, and the TwiML a call follows (CallFlow)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import twilio_media as tw
from sim.speech import silence
from sim.twilio_options import BargeIn, CallIdentity, CallScript
from sim.twilio_script import HangUp, Send, SimulatedStream, State, StreamStateError
from sim.twilio_wire import FRAME_BYTES, Violation, parse_gateway_message
from sim.twiml import (
    CallFlow,
    CallOver,
    ConnectStream,
    Dial,
    FetchTwiml,
    FlowStateError,
    Hangup,
    OpenStream,
    Skipped,
    Transfer,
    WebhookError,
    parse_twiml,
)

SID = "MZ" + "1" * 32
IDENTITY = CallIdentity(call_sid="CA" + "2" * 32, stream_sid=SID, account_sid="AC" + "3" * 32)
REPLY = b"\x00" * 160  # 20 ms of a loud sample
LOUD = b"\x00" * 800  # 100 ms of caller speech (mu-law 0x00 is loud)


def texts(actions: list[Send | HangUp]) -> list[dict[str, Any]]:
    return [json.loads(a.text) for a in actions if isinstance(a, Send)]


def run_ticks(stream: SimulatedStream, until: float = 10.0) -> list[Send | HangUp]:
    """Tick on time until the caller hangs up (or ``until``)."""
    out: list[Send | HangUp] = []
    while stream.state is State.STREAMING and stream.next_frame_at < until:
        out += stream.tick(stream.next_frame_at)
    return out


# --- one stream ---------------------------------------------------------------------------------


def test_a_quiet_call_streams_its_words_then_silence_and_hangs_up_after_the_hold() -> None:
    stream = SimulatedStream(CallScript(LOUD, hold_after_s=0.21, wait_for_reply=False), IDENTITY)
    opening = texts(stream.start(wall=1000.0))
    assert [m["event"] for m in opening] == ["connected", "start"]
    assert opening[1]["start"]["callSid"] == IDENTITY.call_sid
    actions = run_ticks(stream)
    assert isinstance(actions[-1], HangUp) and stream.state is State.ENDED
    sent = texts(actions)
    assert [m["event"] for m in sent] == ["media"] * 16 + ["stop"]  # 100 ms of words + 220 ms
    assert [m["sequenceNumber"] for m in sent] == [str(n) for n in range(2, 19)]
    result = stream.finish(0.32)
    assert (result.frames_sent, result.speech_frames, result.started_wall) == (16, 5, 1000.0)
    assert result.heard == b"\xff" * 16 * FRAME_BYTES and result.reply_delay_ms is None


def test_the_caller_waits_for_a_reply_and_marks_come_back_once_it_has_played() -> None:
    stream = SimulatedStream(CallScript(LOUD, hold_after_s=0.1, max_duration_s=5), IDENTITY)
    stream.start(0.0)
    assert not any(isinstance(a, HangUp) for a in run_ticks(stream, until=1.0))  # no reply yet
    assert stream.receive(tw.media_message(SID, REPLY * 2), t=1.0) == []
    assert stream.receive(tw.mark_message(SID, "m1"), t=1.0) == []
    marks = [m for m in texts(run_ticks(stream)) if m["event"] == "mark"]
    assert [m["mark"]["name"] for m in marks] == ["m1"]
    result = stream.finish(2.0)
    assert result.reply_delay_ms == pytest.approx(900)  # speech ended at 0.1 s
    assert result.heard.count(0x00) == 320 and result.violations == []
    [(name, back_at)] = result.marks_returned
    [chunk] = result.reply_chunks
    assert name == "m1" and chunk.finished_at is not None and back_at >= chunk.finished_at


def test_clear_returns_pending_marks_at_once_and_drops_the_rest() -> None:
    stream = SimulatedStream(CallScript(LOUD, hold_after_s=0.1), IDENTITY)
    stream.start(0.0)
    stream.receive(tw.media_message(SID, REPLY * 10), 0.0)
    stream.receive(tw.mark_message(SID, "a"), 0.0)
    stream.tick(0.0)
    returned = texts(stream.receive(tw.clear_message(SID), 0.01))
    assert [m["mark"]["name"] for m in returned] == ["a"]
    run_ticks(stream)
    result = stream.finish(1.0)
    assert result.reply_heard_at_clear_ms == 20 and result.heard.count(0x00) == 160
    assert result.reply_chunks[0].cleared_bytes == 9 * 160 and result.clears == [0.01]


def test_the_caller_barges_in_over_the_reply_and_the_figures_say_how_long_it_played() -> None:
    script = CallScript(LOUD, hold_after_s=0.1, barge_in=BargeIn(0.1, b"\x01" * 800))
    stream = SimulatedStream(script, IDENTITY)
    stream.start(0.0)
    run_ticks(stream, until=0.2)
    stream.receive(tw.media_message(SID, REPLY * 50), 0.2)  # a 1 s reply
    barging_for = None  # frames since the caller began talking over the reply
    while stream.state is State.STREAMING:
        t = stream.next_frame_at
        frame = next(m for m in texts(stream.tick(t)) if m["event"] == "media")
        if barging_for is None and frame["media"]["payload"].startswith("AQEB"):  # 0x01: talking
            barging_for = 0
        elif barging_for is not None and (barging_for := barging_for + 1) == 5:
            stream.receive(tw.clear_message(SID), t)  # the gateway clears five frames later
    result = stream.finish(stream.next_frame_at)
    # The reply began at 0.2 s; 100 ms later (a frame later: 0.3 - 0.2 < 0.1 in floats).
    assert result.barge_in_at == pytest.approx(0.32)
    assert result.clear_after_barge_ms == pytest.approx(100)
    assert result.played_after_barge_ms == pytest.approx(100)  # five windows before the clear
    assert result.reply_heard_at_clear_ms == pytest.approx(240)  # windows 0.20 to 0.42 s
    assert result.heard.count(0x00) == 240 * 8  # and nothing after the clear


def test_the_call_never_outlasts_max_duration_and_a_closed_stream_is_recorded() -> None:
    stream = SimulatedStream(CallScript(silence(60_000), max_duration_s=0.5), IDENTITY)
    stream.start(0.0)
    actions = run_ticks(stream)
    assert isinstance(actions[-1], HangUp) and stream.finish(0.5).frames_sent == 26
    closed = SimulatedStream(CallScript(LOUD), IDENTITY)
    closed.start(0.0)
    closed.tick(0.0)
    closed.gateway_closed(1011)
    assert closed.receive(tw.media_message(SID, REPLY), 0.1) == []  # over: ignored
    result = closed.finish(0.1)
    assert (result.closed_by_gateway, result.close_code, result.frames_received) == (True, 1011, 0)


def test_events_the_state_does_not_allow_raise_the_cores_own_error() -> None:
    stream = SimulatedStream(CallScript(LOUD, stop=False), IDENTITY)
    with pytest.raises(StreamStateError):
        stream.tick(0.0)
    with pytest.raises(StreamStateError):
        stream.receive("{}", 0.0)
    stream.start(0.0)
    with pytest.raises(StreamStateError):
        stream.start(0.0)
    stream.gateway_closed(None)
    with pytest.raises(StreamStateError):
        stream.tick(0.0)
    stream.finish(0.0)
    with pytest.raises(StreamStateError):
        stream.finish(0.0)
    with pytest.raises(ValueError, match="digit"):
        CallScript(LOUD, dtmf=((0.1, "12"),))


# --- any sequence of events ---------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
good_messages = st.one_of(
    st.binary(min_size=1, max_size=400).map(lambda b: tw.media_message(SID, b)),
    st.text(min_size=1, max_size=8).map(lambda n: tw.mark_message(SID, n)),
    st.just(tw.clear_message(SID)),
)
garbage = st.one_of(
    st.binary(max_size=20),
    st.text(max_size=20),
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {
            "event": st.sampled_from(["media", "mark", "clear", "start", "x"]),
            "streamSid": st.sampled_from([SID, "MZ0", 3]),
        },
        optional={"media": json_values, "mark": json_values},
    ).map(json.dumps),
)
events = st.lists(
    st.one_of(
        st.tuples(st.just("message"), good_messages | garbage),
        st.tuples(st.just("tick"), st.integers(0, 3)),  # late by up to three windows
        st.tuples(st.just("closed"), st.none()),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(events, st.booleans())
def test_any_sequence_of_gateway_messages_and_ticks_leaves_the_stream_consistent(
    script: list[tuple[str, Any]], barge: bool
) -> None:
    stream = SimulatedStream(
        CallScript(
            LOUD,
            hold_after_s=0.06,
            max_duration_s=1.0,
            dtmf=((0.05, "5"),),
            barge_in=BargeIn(0.02, LOUD) if barge else None,
        ),
        IDENTITY,
    )
    sent = texts(stream.start(0.0))
    t, ticks, bad, audio_bytes, marks_in = 0.0, 0, 0, 0, []
    for kind, value in script:
        state = stream.state
        try:
            if kind == "message":
                t += 0.001
                try:
                    parsed = parse_gateway_message(value, SID)
                except Violation:
                    parsed, bad = None, bad + (state is State.STREAMING)
                if state is State.STREAMING and parsed is not None:
                    audio_bytes += len(getattr(parsed, "payload", b""))
                    if hasattr(parsed, "name"):
                        marks_in.append(parsed.name)
                actions = stream.receive(value, t)
            elif kind == "tick":
                t = max(t, stream.next_frame_at + value * 0.02)
                actions = stream.tick(t)
                ticks += 1
            else:
                stream.gateway_closed(1000)
                actions = []
        except StreamStateError:
            assert state is State.ENDED and kind == "tick"  # a tick after the hang-up
            continue
        assert all(isinstance(a, Send) for a in actions[:-1])  # HangUp, if any, comes last
        if actions and isinstance(actions[-1], HangUp):
            assert stream.state is State.ENDED
        sent += texts(actions)
    result = stream.finish(t)
    # Every message is numbered in order, frames are consecutive, and media carry 20 ms each.
    assert [int(m["sequenceNumber"]) for m in sent[1:]] == list(range(1, len(sent)))
    media = [m["media"] for m in sent if m["event"] == "media"]
    assert [int(m["chunk"]) for m in media] == list(
        range(1, ticks + 1)
    ) and result.frames_sent == ticks
    assert len(result.heard) == ticks * FRAME_BYTES
    assert len(result.violations) == bad
    # Marks come back once each, in the order they came, none that never came.
    returned = [n for n, _ in result.marks_returned]
    assert returned == marks_in[: len(returned)]
    assert [m["mark"]["name"] for m in sent if m["event"] == "mark"] == returned
    # Audio received is played, cleared, or still waiting; never lost or doubled.
    assert len(result.received_audio) == audio_bytes == sum(c.size for c in result.reply_chunks)
    assert (
        stream.playback.played_bytes
        + sum(c.cleared_bytes for c in result.reply_chunks)
        + stream.playback.pending_bytes()
        == audio_bytes
    )
    assert sum(1 for m in sent if m["event"] == "stop") <= 1


# --- the TwiML a call follows -------------------------------------------------------------------

ACTION_TWIML = (
    '<Response><Say>Hi</Say><Connect action="/after"><Stream url="wss://gw.example.com/media">'
    '<Parameter name="a" value="1"/></Stream></Connect><Say>never</Say></Response>'
)


def test_parse_twiml_reads_the_verbs_the_simulator_follows() -> None:
    verbs = parse_twiml(ACTION_TWIML, "https://gw.example.com/twiml")
    assert verbs == [
        Skipped("Say"),
        ConnectStream(
            "wss://gw.example.com/media", {"a": "1"}, None, "https://gw.example.com/after"
        ),
        Skipped("Say"),
    ]
    assert parse_twiml("<Response><Dial><Number>+1555</Number></Dial><Hangup/></Response>") == [
        Dial("+1555"),
        Hangup(),
    ]
    for bad in ("<Dial>+1</Dial>", "<Response><Dial/></Response>", "nope"):
        with pytest.raises(WebhookError):
            parse_twiml(bad)


def test_a_call_follows_its_connect_action_into_a_second_stream_then_a_dial() -> None:
    flow = CallFlow(IDENTITY, "https://gw.example.com/twiml")
    webhook = flow.next_step()
    assert isinstance(webhook, FetchTwiml) and webhook.form["CallStatus"] == "ringing"
    with pytest.raises(FlowStateError):
        flow.next_step()  # the webhook's TwiML has not come yet
    flow.answered(ACTION_TWIML)
    first = flow.next_step()
    assert isinstance(first, OpenStream) and first.verb.parameters == {"a": "1"}
    flow.stream_ended(by_gateway=True)
    action = flow.next_step()
    assert isinstance(action, FetchTwiml) and action.url == "https://gw.example.com/after"
    assert (action.method, action.form["CallSid"], action.form["CallStatus"]) == (
        "POST",
        IDENTITY.call_sid,
        "in-progress",
    )
    flow.answered(
        '<Response><Connect><Stream url="wss://gw.example.com/second"/></Connect>'
        "<Dial>+15550100</Dial><Say>not reached</Say></Response>"
    )
    second = flow.next_step()
    assert isinstance(second, OpenStream) and second.verb.action is None
    flow.stream_ended(by_gateway=True)  # no action: the next verb
    assert flow.next_step() == Transfer("+15550100")
    assert flow.next_step() == Transfer("+15550100")  # over stays over


def test_a_caller_hang_up_ends_the_call_and_no_verbs_left_hangs_up() -> None:
    flow = CallFlow(IDENTITY)
    flow.play(parse_twiml(ACTION_TWIML))
    assert isinstance(flow.next_step(), OpenStream)
    flow.stream_ended(by_gateway=False)
    assert flow.next_step() == CallOver("the caller hung up")
    flow = CallFlow(IDENTITY)
    flow.play([Skipped("Say")])
    assert flow.next_step() == CallOver("no verbs left")
    with pytest.raises(FlowStateError):
        flow.stream_ended(by_gateway=True)
