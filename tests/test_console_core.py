"""The console's pure cores: a call's view from its entries, outbound TwiML and Twilio's
callbacks, the agent file's voicemail message."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared import call_view as cv
from shared.outbound import (
    OutboundError,
    amd_result,
    call_status,
    outbound_parameters,
    outbound_twiml,
    voicemail_twiml,
)
from shared.runtime.settings import ConfigError, load_settings
from shared.streams import CallEvent, CallStarted, call_meta

ORIGIN = cv.Origin("CA1", "inbound", "+1555", "+1666", 1_000, b"1000-0")


def events(*pairs: tuple[int, CallEvent]) -> list[cv.TimedEvent]:
    return [cv.TimedEvent(f"{at}-0".encode(), event) for at, event in pairs]


@pytest.mark.parametrize(
    ("reason", "extra", "outcome"),
    [
        ("stop", [], "caller_hung_up"),
        ("model_hung_up", [], "model_hung_up"),
        ("transferred", [], "transferred"),
        ("realtime_session_expired", [], "failed"),
        ("socket_closed", [CallEvent("supervisor", {"action": "hangup"})], "supervisor_hung_up"),
        (
            "stop",
            [CallEvent("amd", {"answered_by": "machine_end_beep", "action": "voicemail"})],
            "voicemail",
        ),
    ],
)
def test_the_outcome_of_an_ended_call(reason: str, extra: list[CallEvent], outcome: str) -> None:
    timed = events((1001, CallEvent("session", {"combo": "GA"})), *[(1002, e) for e in extra])
    timed += events((1003, CallEvent("ended", {"reason": reason})))
    meta = call_meta(CallStarted("CA1", "MZ1", "AC1", {}, 1_000_000))
    summary = cv.summarize(
        ORIGIN, {k: str(v).encode() if isinstance(v, int) else v for k, v in meta.items()}, timed
    )
    assert (summary.state, summary.outcome, summary.ended_at, summary.dialect) == (
        "ended",
        outcome,
        1003,
        "GA",
    )


def test_states_from_the_hash_alone() -> None:
    assert cv.summarize(ORIGIN, {b"started_us": b"1"}, []).state == "in_progress"
    assert cv.summarize(ORIGIN, {b"dialed_us": b"1"}, []).state == "ringing"
    ended = cv.summarize(ORIGIN, {b"started_us": b"1", b"ended": b"stop"}, [])
    assert (ended.state, ended.outcome) == ("ended", "caller_hung_up")


def test_an_origin_from_the_call_hash() -> None:
    started = CallStarted(
        "CA9", "MZ9", "AC", {"direction": "outbound", "From": "+1", "To": "+2"}, 5_000_000
    )
    meta = {k: str(v).encode() if isinstance(v, int) else v for k, v in call_meta(started).items()}
    origin = cv.Origin.from_meta("CA9", meta)
    assert origin is not None and (
        origin.direction,
        origin.from_,
        origin.to,
        origin.started_ms,
    ) == ("outbound", "+1", "+2", 5_000)
    assert cv.Origin.from_meta("CA9", {}) is None


def test_turns_and_reply_latencies() -> None:
    frames = [(1000 + 20 * i, 10 <= i < 60) for i in range(150)]  # speech 1200..2200 ms
    assert cv.speech_turns(frames) == [(1200, 2200)]
    replies = cv.reply_turns([(2700, "r1", 8000), (2710, "r1", 8000)], clears=[(3000, "r1")])
    assert replies == [(2700, 3000, "r1")]  # 2 s of audio, cut by the clear at 3 s
    latency = cv.reply_latencies(1000, [2200], [2700])
    assert latency["first_reply_ms"] == 500 and latency["greeting_ms"] is None
    assert cv.reply_latencies(1000, [2200], [1300, 2700])["greeting_ms"] == 300


def test_outbound_parameters_and_twiml() -> None:
    params = outbound_parameters(
        "+15551230000", "+15550009999", voice="verse", parameters={"k": "v"}
    )
    assert params["direction"] == "outbound" and params["voice"] == "verse" and params["k"] == "v"
    twiml = outbound_twiml(
        "wss://gw.example.com/media", "https://gw.example.com/stream-status", params
    )
    assert '<Parameter name="direction" value="outbound"/>' in twiml
    with pytest.raises(OutboundError, match="direction"):
        outbound_parameters("+1555", "+1666", parameters={"direction": "inbound"})
    with pytest.raises(OutboundError, match="4000"):
        many = {f"p{i}": "x" * 900 for i in range(10)}
        outbound_twiml(
            "wss://gw.example.com/media",
            "https://x/s",
            outbound_parameters("+1", "+2", parameters=many),
        )


def test_voicemail_twiml_escapes_and_callbacks_parse() -> None:
    assert voicemail_twiml("Call <us> & \x00 soon") == (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Say>Call &lt;us&gt; &amp; \ufffd soon'
        "</Say><Hangup/></Response>"
    )
    assert voicemail_twiml("  ").endswith("<Response><Hangup/></Response>")
    assert amd_result({"CallSid": "CA1", "AnsweredBy": "machine_end_silence"}).action == "voicemail"
    assert amd_result({"CallSid": "CA1", "AnsweredBy": "human"}).action == "agent"
    assert amd_result({"CallSid": "CA1", "AnsweredBy": "unknown"}).action == "none"
    for bad in (
        {"CallSid": "CA1", "AnsweredBy": "robot"},
        {"AnsweredBy": "human"},
        {"CallSid": "C{A}"},
    ):
        with pytest.raises(OutboundError):
            amd_result(bad)
    assert call_status({"CallSid": "CA1", "CallStatus": "no-answer"}).status == "no-answer"
    with pytest.raises(OutboundError):
        call_status({"CallSid": "CA1", "CallStatus": "exploded"})


def test_the_voicemail_message_comes_from_the_agent_file(tmp_path: Path) -> None:
    agent = tmp_path / "agent.toml"
    agent.write_text('voicemail_message = "From the file."\n')
    assert (
        load_settings(agent_file=str(agent), voicemail_message="env").voicemail == "From the file."
    )
    assert (
        load_settings(voicemail_message="From the environment.").voicemail
        == "From the environment."
    )
    agent.write_text("voicemail_message = [")
    with pytest.raises(ConfigError):  # a bad agent file stops every service at start
        load_settings(agent_file=str(agent))
