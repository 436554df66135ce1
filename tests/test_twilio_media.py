"""The Twilio Media Streams session core and its builders, without sockets."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import twilio_media as tw

SID = "MZ" + "a" * 32
CALL = "CA" + "b" * 32
ACCOUNT = "AC" + "c" * 32
FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}


def connected() -> str:
    return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def start(seq: int = 1, outer: dict[str, Any] | None = None, **inner: Any) -> str:
    body = {
        "accountSid": ACCOUNT,
        "streamSid": SID,
        "callSid": CALL,
        "tracks": ["inbound"],
        "customParameters": {"caller": "+1555"},
        "mediaFormat": FORMAT,
    } | inner
    message = {"event": "start", "sequenceNumber": str(seq), "streamSid": SID, "start": body}
    return json.dumps(message | (outer or {}))


def media(seq: int, payload: bytes = b"\xff" * 160, **over: Any) -> str:
    body: Any = {
        "track": "inbound",
        "chunk": str(seq - 1),
        "timestamp": str(20 * (seq - 2)),
        "payload": base64.b64encode(payload).decode(),
    }
    changed = over.pop("media", {})
    body = body | changed if isinstance(changed, dict) else changed  # a dict merges; else replaces
    message = {"event": "media", "sequenceNumber": str(seq), "streamSid": SID, "media": body}
    return json.dumps(message | over)


def other(event: str, seq: int, body: object, sid: str = SID) -> str:
    return json.dumps({"event": event, "sequenceNumber": str(seq), "streamSid": sid, event: body})


def started() -> tw.TwilioMediaSession:
    s = tw.TwilioMediaSession()
    s.receive(connected())
    s.receive(start())
    return s


# --- a normal stream ----------------------------------------------------------------------------


def test_a_normal_stream_yields_each_event() -> None:
    s = tw.TwilioMediaSession()
    assert s.receive(connected()) == [tw.StreamConnected("Call", "1.0.0")]
    [begun] = s.receive(start())
    assert begun == tw.StreamStarted(
        SID, CALL, ACCOUNT, ("inbound",), {"caller": "+1555"}, "audio/x-mulaw", 8000, 1
    )
    assert (s.state, s.stream_sid, s.call_sid, s.account_sid) == ("started", SID, CALL, ACCOUNT)
    assert s.receive(media(2, b"\x01" * 160)) == [
        tw.InboundMedia(b"\x01" * 160, 2, 1, 0, "inbound")
    ]
    assert s.receive(other("dtmf", 3, {"track": "inbound_track", "digit": "#"})) == [
        tw.DtmfReceived("#", 3)
    ]
    assert s.receive(other("mark", 4, {"name": "item_1:100"})) == [tw.MarkReturned("item_1:100", 4)]
    assert s.receive(other("stop", 5, {"accountSid": ACCOUNT, "callSid": CALL})) == [
        tw.StreamStopped(5)
    ]
    assert (s.state, s.frames_in, s.sequence_gaps, s.rejected, s.last_sequence) == (
        "stopped",
        1,
        0,
        0,
        5,
    )


def test_numbers_may_arrive_as_strings_or_numbers() -> None:
    s = started()
    message = json.loads(media(2))
    message["sequenceNumber"] = 2
    message["media"] |= {"chunk": 1, "timestamp": "0000"}
    [m] = s.receive(json.dumps(message))
    assert (m.sequence, m.chunk, m.timestamp_ms) == (2, 1, 0)  # type: ignore[union-attr]
    s = tw.TwilioMediaSession()
    [begun] = s.receive(start(mediaFormat={"encoding": "audio/x-mulaw", "sampleRate": "8000"}))
    assert isinstance(begun, tw.StreamStarted) and begun.channels == 1


def test_start_without_connected_or_optional_fields_is_accepted() -> None:
    s = tw.TwilioMediaSession()
    message = json.loads(start())
    for key in ("customParameters", "tracks", "accountSid"):
        del message["start"][key]
    del message["streamSid"]
    [begun] = s.receive(json.dumps(message))
    assert isinstance(begun, tw.StreamStarted)
    assert (begun.custom_parameters, begun.tracks, begun.account_sid) == ({}, ("inbound",), "")


def test_payload_bounds_are_one_to_1600_bytes() -> None:
    s = started()
    assert len(s.receive(media(2, b"\x00"))[0].payload) == 1  # type: ignore[union-attr]
    assert len(s.receive(media(3, b"\x00" * 1600))[0].payload) == 1600  # type: ignore[union-attr]
    for size in (1601, 1602, 1603, 5000):
        with pytest.raises(tw.MalformedMessage) as err:
            s.receive(media(4, b"\x00" * size))
        assert err.value.reason == "bad_payload_size"


# --- every rejection reason ---------------------------------------------------------------------

BAD = [
    ("binary_frame", tw.MalformedMessage, b"\x00\x01"),
    ("binary_frame", tw.MalformedMessage, bytearray(b"{}")),
    ("not_json", tw.MalformedMessage, "not json"),
    ("not_json", tw.MalformedMessage, "[" * 100_000),  # RecursionError inside json.loads
    ("not_json", tw.MalformedMessage, '{"event":"media"'),
    ("bad_shape", tw.MalformedMessage, "[1,2]"),
    ("bad_shape", tw.MalformedMessage, '"media"'),
    ("unknown_event", tw.MalformedMessage, '{"event":"nope"}'),
    ("unknown_event", tw.MalformedMessage, '{"no":"event"}'),
    ("unknown_event", tw.MalformedMessage, '{"event":["media"]}'),
    ("bad_shape", tw.MalformedMessage, media(2, media="x")),
    ("bad_shape", tw.MalformedMessage, media(2, media={"payload": 5})),
    ("bad_shape", tw.MalformedMessage, media(2, media={"track": "outbound"})),
    ("bad_shape", tw.MalformedMessage, media(2, media={"chunk": None})),
    ("bad_shape", tw.MalformedMessage, media(2, media={"timestamp": "-20"})),
    ("bad_shape", tw.MalformedMessage, media(2, media={"timestamp": "²"})),  # isdigit() but no int
    ("bad_shape", tw.MalformedMessage, media(2, media={"chunk": "١"})),  # Arabic-Indic one
    ("bad_shape", tw.MalformedMessage, media(2, media={"chunk": True})),
    ("bad_shape", tw.MalformedMessage, media(2, sequenceNumber="2.0")),
    ("bad_shape", tw.MalformedMessage, media(2, sequenceNumber=None)),
    ("bad_shape", tw.MalformedMessage, media(2, sequenceNumber="9" * 19)),
    ("bad_base64", tw.MalformedMessage, media(2, media={"payload": "!!!!"})),
    ("bad_base64", tw.MalformedMessage, media(2, media={"payload": "AAA"})),  # no padding
    ("bad_base64", tw.MalformedMessage, media(2, media={"payload": "AA==AA=="})),
    ("bad_base64", tw.MalformedMessage, media(2, media={"payload": "AAAA\n"})),
    ("bad_base64", tw.MalformedMessage, media(2, media={"payload": "AAAé"})),
    ("bad_payload_size", tw.MalformedMessage, media(2, media={"payload": ""})),
    ("bad_payload_size", tw.MalformedMessage, media(2, b"\xff" * 5000)),
    ("bad_shape", tw.MalformedMessage, other("dtmf", 2, {"digit": "x"})),
    ("bad_shape", tw.MalformedMessage, other("dtmf", 2, {"digit": "12"})),
    ("bad_shape", tw.MalformedMessage, other("dtmf", 2, "7")),
    ("bad_shape", tw.MalformedMessage, other("mark", 2, {"name": 5})),
    ("bad_shape", tw.MalformedMessage, other("mark", 2, {"name": "x" * 257})),
    ("bad_shape", tw.MalformedMessage, other("mark", 2, None)),
    ("duplicate_start", tw.OutOfOrder, start()),
    ("out_of_order", tw.OutOfOrder, connected()),
    ("stream_sid_mismatch", tw.StreamMismatch, media(2, streamSid="MZother")),
    ("stream_sid_mismatch", tw.StreamMismatch, media(2, streamSid=None)),
    ("stream_sid_mismatch", tw.StreamMismatch, other("mark", 2, {"name": "m"}, sid="MZx")),
    ("stream_sid_mismatch", tw.StreamMismatch, other("stop", 2, {}, sid="MZx")),
]


@pytest.mark.parametrize(("reason", "kind", "message"), BAD)
def test_bad_messages_raise_with_a_reason_and_the_stream_goes_on(
    reason: str, kind: type[tw.TwilioProtocolError], message: str | bytes
) -> None:
    s = started()
    with pytest.raises(kind) as err:
        s.receive(message)
    assert err.value.reason == reason and reason in tw.REASONS
    assert len(str(err.value)) < 200  # the offending value is shown, truncated
    assert (s.rejected, s.frames_in, s.state) == (1, 0, "started")
    [m] = s.receive(media(3))
    assert isinstance(m, tw.InboundMedia) and s.frames_in == 1


BAD_START = [
    ("bad_encoding", {"mediaFormat": {"encoding": "audio/x-alaw", "sampleRate": 8000}}),
    ("bad_encoding", {"mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 16000}}),
    ("bad_encoding", {"mediaFormat": FORMAT | {"channels": 2}}),
    ("bad_shape", {"mediaFormat": None}),
    ("bad_shape", {"mediaFormat": {"encoding": "audio/x-mulaw"}}),
    ("bad_shape", {"streamSid": 'MZ"},"x":"'}),  # would break the JSON we echo it into
    ("bad_shape", {"callSid": "CA{evil}"}),  # names Redis keys
    ("bad_shape", {"callSid": None}),
    ("bad_shape", {"tracks": "inbound"}),
    ("bad_shape", {"tracks": ["outbound"]}),
    ("bad_shape", {"customParameters": {"k": 5}}),
    ("bad_shape", {"customParameters": {f"k{i}": "v" for i in range(33)}}),
    ("bad_shape", {"customParameters": ["k", "v"]}),
]


@pytest.mark.parametrize(("reason", "inner"), BAD_START)
def test_bad_starts_are_refused_and_leave_the_stream_new(
    reason: str, inner: dict[str, Any]
) -> None:
    s = tw.TwilioMediaSession()
    with pytest.raises(tw.MalformedMessage) as err:
        s.receive(start(**inner))
    assert err.value.reason == reason
    assert (s.state, s.stream_sid, s.call_sid) == ("new", "", "")
    assert s.start_refused  # the shell hangs up such a stream
    assert isinstance(s.receive(start())[0], tw.StreamStarted)


def test_start_for_another_stream_is_refused() -> None:
    s = tw.TwilioMediaSession()
    with pytest.raises(tw.StreamMismatch):
        s.receive(start(outer={"streamSid": "MZ" + "f" * 32}))
    assert s.state == "new" and s.start_refused


def test_a_second_start_does_not_mark_the_stream_refused() -> None:
    s = tw.TwilioMediaSession()
    s.receive(start())
    with pytest.raises(tw.OutOfOrder):
        s.receive(start())
    assert s.state == "started" and not s.start_refused


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (media(2), "media_before_start"),
        (other("mark", 2, {"name": "m"}), "before_start"),
        (other("dtmf", 2, {"digit": "1"}), "before_start"),
        (other("stop", 2, {}), "before_start"),
    ],
)
def test_nothing_but_connected_and_start_before_start(message: str, reason: str) -> None:
    s = tw.TwilioMediaSession()
    with pytest.raises(tw.OutOfOrder) as err:
        s.receive(message)
    assert err.value.reason == reason and s.state == "new"


def test_after_stop_everything_is_an_error() -> None:
    s = started()
    s.receive(other("stop", 2, {}))
    for message in (media(3), start(), connected(), other("stop", 3, {}), b"\x00", "junk"):
        with pytest.raises(tw.OutOfOrder) as err:
            s.receive(message)
        assert err.value.reason == "after_stop"
    assert s.state == "stopped" and s.rejected == 6


def test_every_reason_is_exercised_here() -> None:
    covered = {reason for reason, _, _ in BAD} | {reason for reason, _ in BAD_START}
    covered |= {"media_before_start", "before_start", "after_stop"}
    covered |= {"bad_stream_event"}  # status callbacks: see the test at the end
    assert covered == tw.REASONS


# --- sequence numbers ---------------------------------------------------------------------------


def test_sequence_gaps_are_counted_not_raised() -> None:
    s = started()
    s.receive(media(2))
    s.receive(media(5))  # 3 and 4 lost
    s.receive(media(6))
    s.receive(media(4))  # late: a step back
    assert (s.sequence_gaps, s.frames_in, s.rejected, s.last_sequence) == (2, 4, 0, 4)


def test_a_refused_message_of_this_stream_is_not_also_a_gap() -> None:
    s = started()
    with pytest.raises(tw.TwilioProtocolError):
        s.receive(media(2, media={"payload": "!!!!"}))
    s.receive(media(3))
    assert (s.sequence_gaps, s.rejected, s.frames_in) == (0, 1, 1)


# --- outbound builders --------------------------------------------------------------------------


@given(st.binary(max_size=2000))
def test_media_message_round_trips(pcmu: bytes) -> None:
    message = tw.media_message(SID, pcmu)
    assert json.loads(message) == {
        "event": "media",
        "streamSid": SID,
        "media": {"payload": base64.b64encode(pcmu).decode()},
    }
    assert "\n" not in message


@given(st.text(max_size=300))
def test_mark_message_escapes_any_name(name: str) -> None:
    decoded = json.loads(tw.mark_message(SID, name))
    assert decoded == {"event": "mark", "streamSid": SID, "mark": {"name": name[:256]}}


def test_mark_message_escaping_and_cap() -> None:
    tricky = 'a"b\\c\n\x00</script>é😀'
    assert json.loads(tw.mark_message(SID, tricky))["mark"]["name"] == tricky
    assert tw.mark_message(SID, tricky).isascii()
    assert len(json.loads(tw.mark_message(SID, "x" * 1000))["mark"]["name"]) == tw.MAX_MARK_NAME


def test_clear_message() -> None:
    assert json.loads(tw.clear_message(SID)) == {"event": "clear", "streamSid": SID}


def test_a_session_reads_what_the_builders_would_carry() -> None:
    """The builders' stream SID comes from StreamStarted: a checked token, safe unescaped."""
    s = tw.TwilioMediaSession()
    [begun] = s.receive(start())
    assert isinstance(begun, tw.StreamStarted)
    assert json.loads(tw.clear_message(begun.stream_sid))["streamSid"] == SID


# --- TwiML --------------------------------------------------------------------------------------


def parse_twiml(xml: str) -> tuple[str | None, dict[str | None, str | None]]:
    root = ET.fromstring(xml)
    assert root.tag == "Response"
    stream = root.find("./Connect/Stream")
    assert stream is not None
    return stream.get("url"), {p.get("name"): p.get("value") for p in stream.findall("Parameter")}


def test_twiml_escapes_and_carries_parameters() -> None:
    params = {"From": "+1<&>\"'", "CallSid": CALL, "note": "a\nb\tc", "ü": "ß"}
    xml = tw.connect_stream_twiml("wss://gw.example.com/media", params)
    assert xml.startswith('<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream ')
    assert parse_twiml(xml) == ("wss://gw.example.com/media", params)


def test_twiml_replaces_characters_xml_cannot_carry() -> None:
    _, params = parse_twiml(tw.connect_stream_twiml("wss://h/media", {"From": "a\x00b\x1bc"}))
    assert params == {"From": "a\ufffdb\ufffdc"}


@pytest.mark.parametrize(
    "url", ["https://gw.example.com/media", "wss://gw.example.com/media?call=1", "wss:///media"]
)
def test_twiml_refuses_urls_twilio_cannot_stream_to(url: str) -> None:
    with pytest.raises(ValueError):
        tw.connect_stream_twiml(url, {})


@given(st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=40), max_size=5))
def test_twiml_parameters_round_trip(params: dict[str, str]) -> None:
    _, got = parse_twiml(tw.connect_stream_twiml("wss://gw.example.com/media", params))
    clean = {
        tw._XML_ILLEGAL.sub("\ufffd", k): tw._XML_ILLEGAL.sub("\ufffd", v)
        for k, v in params.items()
    }
    # XML normalises a bare \r to \n; quoteattr writes \r as a reference, which survives.
    assert got == clean


# --- properties ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
shaped = st.fixed_dictionaries(
    {"event": st.sampled_from(["connected", "start", "media", "mark", "dtmf", "stop", "x"])},
    optional={
        "streamSid": st.sampled_from([SID, "MZx", 3]),
        "sequenceNumber": st.one_of(json_values, st.integers(0, 60).map(str)),
        "media": json_values,
        "start": json_values,
        "mark": json_values,
        "dtmf": json_values,
    },
)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid message with one field, at any depth, replaced by an arbitrary JSON value."""
    message = json.loads(
        draw(st.sampled_from([start(), media(2), other("mark", 3, {"name": "m"})]))
    )
    node = message
    while True:
        key = draw(st.sampled_from(sorted(node)))
        if isinstance(node[key], dict) and draw(st.booleans()):
            node = node[key]
            continue
        node[key] = draw(json_values)
        return json.dumps(message)


anything = st.one_of(
    st.binary(max_size=20),
    st.text(max_size=30),
    shaped.map(json.dumps),
    mutated(),
    st.just(connected()),
    st.just(start()),
    st.integers(2, 50).map(media),
    st.integers(2, 50).map(lambda n: other("stop", n, {})),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(anything, max_size=30))
def test_any_sequence_raises_only_the_core_error_and_stays_consistent(
    messages: list[str | bytes],
) -> None:
    s = tw.TwilioMediaSession()
    raised = media_events = 0
    order = ["new", "started", "stopped"]
    for message in messages:
        before = s.state
        try:
            events = s.receive(message)
        except tw.TwilioProtocolError as exc:
            raised += 1
            assert exc.reason in tw.REASONS
            assert s.state == before
            if before == "stopped":
                assert exc.reason == "after_stop"
            continue
        assert before != "stopped" and len(events) == 1
        assert order.index(s.state) >= order.index(before)
        [event] = events
        if isinstance(event, tw.InboundMedia):
            media_events += 1
            assert before == "started" and 1 <= len(event.payload) <= tw.MAX_PAYLOAD_BYTES
            assert event.sequence == s.last_sequence
        if isinstance(event, tw.StreamStarted):
            assert before == "new" and s.stream_sid == event.stream_sid
        if isinstance(event, tw.StreamStopped):
            assert s.state == "stopped"
    assert (s.rejected, s.frames_in) == (raised, media_events)
    assert (s.state == "new") == (s.stream_sid == "")


@st.composite
def valid_streams(draw: st.DrawFn) -> tuple[list[str], list[tw.Event], int]:
    """A stream as Twilio sends it (some messages lost on the way): messages, events, gaps."""
    messages = [connected(), start()]
    events: list[tw.Event] = [tw.StreamConnected("Call", "1.0.0")]
    events.append(
        tw.StreamStarted(
            SID, CALL, ACCOUNT, ("inbound",), {"caller": "+1555"}, "audio/x-mulaw", 8000, 1
        )
    )
    seq, chunk, gaps = 1, 0, 0
    for _ in range(draw(st.integers(0, 30))):
        seq += 1
        if draw(st.integers(0, 9)) == 0:  # lost in transit
            seq += 1
            gaps += 1
        kind = draw(st.sampled_from(["media"] * 6 + ["mark", "dtmf"]))
        if kind == "media":
            chunk += 1
            payload = draw(st.binary(min_size=1, max_size=tw.MAX_PAYLOAD_BYTES))
            body = {"track": "inbound", "chunk": str(chunk), "timestamp": str(20 * (chunk - 1))}
            messages.append(
                other("media", seq, body | {"payload": base64.b64encode(payload).decode()})
            )
            events.append(tw.InboundMedia(payload, seq, chunk, 20 * (chunk - 1), "inbound"))
        elif kind == "mark":
            name = draw(st.text(max_size=40))
            messages.append(other("mark", seq, {"name": name}))
            events.append(tw.MarkReturned(name, seq))
        else:
            digit = draw(st.sampled_from(sorted("0123456789*#ABCD")))
            messages.append(other("dtmf", seq, {"track": "inbound_track", "digit": digit}))
            events.append(tw.DtmfReceived(digit, seq))
    messages.append(other("stop", seq + 1, {"accountSid": ACCOUNT, "callSid": CALL}))
    events.append(tw.StreamStopped(seq + 1))
    return messages, events, gaps


@settings(max_examples=200, deadline=None)
@given(valid_streams())
def test_valid_streams_yield_the_expected_events(
    stream: tuple[list[str], list[tw.Event], int],
) -> None:
    messages, expected, gaps = stream
    s = tw.TwilioMediaSession()
    got = [event for message in messages for event in s.receive(message)]
    assert got == expected
    assert s.sequence_gaps == gaps and s.rejected == 0 and s.state == "stopped"
    assert s.frames_in == sum(isinstance(e, tw.InboundMedia) for e in expected)


def test_the_stream_can_name_a_status_callback_and_its_posts_are_read() -> None:
    from twilio.twiml.voice_response import Connect, Stream, VoiceResponse

    xml = tw.connect_stream_twiml("wss://h/media", {}, status_callback="https://h/stream-status")
    reference = VoiceResponse()
    connect = Connect()
    connect.append(
        Stream(
            url="wss://h/media",
            status_callback="https://h/stream-status",
            status_callback_method="POST",
        )
    )
    reference.append(connect)
    # What Twilio's own TwiML builder writes, element for element.
    ours, theirs = ET.fromstring(xml), ET.fromstring(str(reference))
    assert [(e.tag, e.attrib) for e in ours.iter()] == [(e.tag, e.attrib) for e in theirs.iter()]
    ok = tw.stream_status(
        {"StreamEvent": "stream-started", "CallSid": "CA1", "StreamSid": "MZ1", "AccountSid": "AC"}
    )
    assert (ok.event, ok.call_sid, ok.stream_sid, ok.error) == ("stream-started", "CA1", "MZ1", "")
    for bad in (
        {"StreamEvent": "other", "CallSid": "CA1", "StreamSid": "MZ1"},
        {"StreamEvent": "stream-error", "CallSid": "CA{1}", "StreamSid": "MZ1"},
        {"StreamEvent": "stream-stopped", "CallSid": "CA1"},
    ):
        with pytest.raises(tw.MalformedMessage):
            tw.stream_status(bad)


def test_the_public_base_url_is_what_twilio_signed() -> None:
    assert tw.public_base_url("https://gw.example.com", "x", None) == "https://gw.example.com"
    assert tw.public_base_url("", "127.0.0.1:8080", None) == "http://127.0.0.1:8080"
    assert tw.public_base_url("", "voice.example.org", "https, http") == "https://voice.example.org"
    assert tw.public_base_url("", "[::1]:8080", "http") == "http://[::1]:8080"
    for bad in (None, "", "bad host<>", "a/b"):
        assert tw.public_base_url("", bad, "https") is None
