"""The Twilio Media Streams session core, without sockets."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import twilio_media as tw

SID = "MZ" + "a" * 32
CALL = "CA" + "b" * 32


def start(**over: object) -> str:
    msg = {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": SID,
        "start": {
            "accountSid": "AC" + "c" * 32,
            "streamSid": SID,
            "callSid": CALL,
            "tracks": ["inbound"],
            "customParameters": {"caller": "+1555"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
    msg["start"].update(over)  # type: ignore[union-attr]
    return json.dumps(msg)


def media(seq: int, payload: bytes = b"\xff" * 160, sid: str = SID) -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(seq),
            "streamSid": sid,
            "media": {
                "track": "inbound",
                "chunk": str(seq - 1),
                "timestamp": str(20 * (seq - 2)),
                "payload": base64.b64encode(payload).decode(),
            },
        }
    )


def started() -> tw.TwilioMediaSession:
    s = tw.TwilioMediaSession()
    s.receive(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    s.receive(start())
    return s


def test_a_normal_stream() -> None:
    s = tw.TwilioMediaSession()
    [c] = s.receive(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    assert c == tw.StreamConnected("Call", "1.0.0")
    [st_] = s.receive(start())
    assert isinstance(st_, tw.StreamStarted)
    assert (st_.call_sid, st_.stream_sid, st_.custom_parameters) == (CALL, SID, {"caller": "+1555"})
    [m] = s.receive(media(2, b"\x01" * 160))
    assert m == tw.InboundMedia(b"\x01" * 160, 2, 1, 0, "inbound")
    [d] = s.receive(
        json.dumps(
            {
                "event": "dtmf",
                "sequenceNumber": "3",
                "streamSid": SID,
                "dtmf": {"track": "inbound_track", "digit": "7"},
            }
        )
    )
    assert d == tw.DtmfReceived("7", 3)
    [mk] = s.receive(
        json.dumps(
            {
                "event": "mark",
                "sequenceNumber": "4",
                "streamSid": SID,
                "mark": {"name": "item_1:100"},
            }
        )
    )
    assert mk == tw.MarkPlayed("item_1:100", 4)
    [stop] = s.receive(
        json.dumps(
            {
                "event": "stop",
                "sequenceNumber": "5",
                "streamSid": SID,
                "stop": {"accountSid": "AC", "callSid": CALL},
            }
        )
    )
    assert stop == tw.StreamStopped(5) and s.frames_in == 1 and s.sequence_gaps == 0


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"\x00\x01", "binary_frame"),
        ("not json", "not_json"),
        ("[1,2]", "bad_shape"),
        ('{"event":"nope"}', "unknown_event"),
        (media(2, sid="MZother"), "stream_sid_mismatch"),
        (
            json.dumps({"event": "media", "streamSid": SID, "media": {"payload": "!!!"}}),
            "bad_base64",
        ),
        (json.dumps({"event": "media", "streamSid": SID, "media": {"payload": ""}}), "bad_base64"),
        (media(2, b"\xff" * 5000), "bad_payload_size"),
        (json.dumps({"event": "media", "streamSid": SID, "media": "x"}), "bad_shape"),
        (start(), "duplicate_start"),
        (json.dumps({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": "x"}}), "bad_shape"),
        (json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": 5}}), "bad_shape"),
    ],
)
def test_bad_messages_raise_with_a_reason(message: str | bytes, reason: str) -> None:
    s = started()
    with pytest.raises(tw.TwilioProtocolError) as err:
        s.receive(message)
    assert err.value.reason == reason
    assert s.rejected == 1
    # The stream goes on after a rejection.
    assert isinstance(s.receive(media(3))[0], tw.InboundMedia)


def test_media_before_start_and_after_stop() -> None:
    s = tw.TwilioMediaSession()
    with pytest.raises(tw.TwilioProtocolError) as err:
        s.receive(media(2))
    assert err.value.reason == "media_before_start"
    s = started()
    s.receive(json.dumps({"event": "stop", "streamSid": SID, "stop": {}}))
    with pytest.raises(tw.TwilioProtocolError) as err:
        s.receive(media(9))
    assert err.value.reason == "after_stop"


@pytest.mark.parametrize(
    "fmt",
    [
        {"encoding": "audio/x-alaw", "sampleRate": 8000, "channels": 1},
        {"encoding": "audio/x-mulaw", "sampleRate": 16000, "channels": 1},
    ],
)
def test_other_media_formats_are_refused(fmt: dict[str, object]) -> None:
    s = tw.TwilioMediaSession()
    with pytest.raises(tw.TwilioProtocolError) as err:
        s.receive(start(mediaFormat=fmt))
    assert err.value.reason == "bad_encoding"


def test_stream_sids_that_would_break_our_json_are_refused() -> None:
    s = tw.TwilioMediaSession()
    bad = 'MZ"},"x":"'
    with pytest.raises(tw.TwilioProtocolError):
        s.receive(
            json.dumps(
                {
                    "event": "start",
                    "streamSid": bad,
                    "start": {
                        "streamSid": bad,
                        "callSid": CALL,
                        "mediaFormat": {
                            "encoding": "audio/x-mulaw",
                            "sampleRate": 8000,
                            "channels": 1,
                        },
                    },
                }
            )
        )


def test_sequence_gaps_are_counted_not_raised() -> None:
    s = started()
    s.receive(media(2))
    s.receive(media(5))
    assert s.sequence_gaps == 1


def test_outbound_builders_are_valid_json() -> None:
    m = json.loads(tw.media_message(SID, b"\x00\xff"))
    assert m == {"event": "media", "streamSid": SID, "media": {"payload": "AP8="}}
    assert json.loads(tw.mark_message(SID, 'a"b')) == {
        "event": "mark",
        "streamSid": SID,
        "mark": {"name": 'a"b'},
    }
    assert json.loads(tw.clear_message(SID)) == {"event": "clear", "streamSid": SID}


def test_twiml_escapes_and_carries_parameters() -> None:
    xml = tw.connect_stream_twiml("wss://gw.example.com/media", {"From": '+1<&>"', "CallSid": CALL})
    root = ET.fromstring(xml)
    stream = root.find("./Connect/Stream")
    assert stream is not None and stream.get("url") == "wss://gw.example.com/media"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params == {"From": '+1<&>"', "CallSid": CALL}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
shaped = st.fixed_dictionaries(
    {"event": st.sampled_from(["connected", "start", "media", "mark", "dtmf", "stop", "x"])},
    optional={
        "streamSid": st.sampled_from([SID, "MZx", 3]),
        "sequenceNumber": json_values,
        "media": json_values,
        "start": json_values,
        "mark": json_values,
        "dtmf": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=20),
            st.text(max_size=30),
            shaped.map(json.dumps),
            st.just(start()),
            st.integers(2, 50).map(media),
        ),
        max_size=25,
    )
)
def test_any_sequence_raises_only_the_core_error_and_stays_consistent(messages: list) -> None:  # type: ignore[type-arg]
    s = tw.TwilioMediaSession()
    for message in messages:
        try:
            events = s.receive(message)
        except tw.TwilioProtocolError:
            continue
        for event in events:
            if isinstance(event, tw.InboundMedia):
                assert s.state == "started" and event.payload
            if isinstance(event, tw.StreamStarted):
                assert s.stream_sid == event.stream_sid
    assert s.state in {"new", "started", "stopped"}
