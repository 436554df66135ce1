"""The Twilio simulator behaves like Twilio.

Pure parts first (playback model, message checks, codec, TwiML, speech), then calls placed on a
tiny fake gateway: real-time pacing, marks returned only after their audio played, clear
honoured, bad outbound messages recorded, the webhook's TwiML and both signatures.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request, Response

from shared import twilio_media as tw
from shared.audio import mulaw_decode, mulaw_encode
from sim import twilio_call as sim
from sim.speech import resample, silence, speech
from sim.twilio_call import BargeIn, Playback, place_call

SID = "MZ" + "0" * 32
TOKEN = "0123456789abcdef0123456789abcdef"
PUBLIC_WSS = "wss://gw.example.com/media"
REPLY = b"\x00" * 8  # mu-law 0x00: a loud sample, easy to tell from silence (0xFF)


# --- Twilio's playback model (pure) -------------------------------------------------------------


def test_a_mark_comes_back_only_after_its_audio_has_played() -> None:
    p = Playback()
    p.add_audio(REPLY * 50, now=0.0)  # 400 bytes = 50 ms: two and a half windows
    p.add_mark("m1")
    assert p.tick(0.00) == (REPLY * 20, [])
    assert p.tick(0.02) == (REPLY * 20, [])
    played, marks = p.tick(0.04)  # the last 10 ms play in this window...
    assert (len(played), marks) == (80, [])
    assert p.tick(0.06) == (b"", ["m1"])  # ...so the mark is due at the next tick, not before
    assert p.idle and bytes(p.heard) == REPLY * 50 + b"\xff" * 240
    [chunk] = p.chunks
    assert (chunk.played_at, chunk.finished_at, chunk.cleared_bytes) == (0.0, 0.05, 0)


def test_a_mark_after_a_window_boundary_and_a_mark_with_no_audio() -> None:
    p = Playback()
    p.add_mark("first")  # nothing before it: due at once
    p.add_audio(REPLY * 20, now=0.0)
    p.add_mark("second")
    assert p.tick(0.0) == (REPLY * 20, ["first"])
    assert p.tick(0.02) == (b"", ["second"])


def test_clear_drops_unplayed_audio_and_returns_every_pending_mark_at_once() -> None:
    p = Playback()
    p.add_audio(REPLY * 40, now=0.0)
    p.add_mark("a")
    p.add_audio(REPLY * 40, now=0.0)
    p.add_mark("b")
    p.tick(0.0)
    assert p.pending_bytes() == 480
    assert p.clear() == ["a", "b"]
    assert p.idle and p.pending_bytes() == 0
    assert [c.cleared_bytes for c in p.chunks] == [160, 320]
    assert p.tick(0.02) == (b"", [])
    assert p.played_bytes == 160 and bytes(p.heard[160:]) == b"\xff" * 160


ops = st.lists(
    st.one_of(
        st.integers(1, 500).map(lambda n: ("audio", n)),
        st.just(("mark", 0)),
        st.just(("tick", 0)),
        st.just(("clear", 0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_playback_returns_each_mark_once_in_order_and_never_early(
    script: list[tuple[str, int]],
) -> None:
    p = Playback()
    added = 0  # audio bytes added so far
    marks: list[tuple[str, int]] = []  # (name, audio bytes before it)
    returned: list[str] = []
    k = 0
    for op, n in [*script, *[("tick", 0)] * 200]:
        if op == "audio":
            p.add_audio(REPLY[:1] * n, now=k * 0.02)
            added += n
        elif op == "mark":
            marks.append((f"m{len(marks)}", added))
            p.add_mark(marks[-1][0])
        elif op == "clear":
            returned += p.clear()
        else:
            before = p.played_bytes + sum(c.cleared_bytes for c in p.chunks)
            _, due = p.tick(k * 0.02)
            k += 1
            for name in due:  # everything before it was played (before this window) or cleared
                assert dict(marks)[name] <= before
            returned += due
    assert returned == [name for name, _ in marks]
    assert p.idle and len(p.heard) == k * 160
    assert p.played_bytes + sum(c.cleared_bytes for c in p.chunks) == added
    assert p.played_bytes == sum(1 for b in p.heard if b == 0x00)


# --- what Twilio accepts from a gateway (pure) --------------------------------------------------


def test_the_products_builders_pass_twilios_checks() -> None:
    assert sim.parse_gateway_message(tw.media_message(SID, b"\x01\x02"), SID) == sim.GatewayMedia(
        b"\x01\x02"
    )
    assert sim.parse_gateway_message(tw.mark_message(SID, 'a"b'), SID) == sim.GatewayMark('a"b')
    assert sim.parse_gateway_message(tw.clear_message(SID), SID) == sim.GatewayClear()


@pytest.mark.parametrize(
    ("message", "complaint"),
    [
        (b"\x00", "binary frame"),
        ("nope", "not JSON"),
        ("[]", "not a JSON object"),
        (json.dumps({"event": "bogus", "streamSid": SID}), "unknown event"),
        (json.dumps({"event": "clear", "streamSid": "MZx"}), "streamSid"),
        (json.dumps({"event": "media", "streamSid": SID}), "without a 'media' object"),
        (json.dumps({"event": "media", "streamSid": SID, "media": {"payload": "@@"}}), "base64"),
        (json.dumps({"event": "media", "streamSid": SID, "media": {"payload": ""}}), "non-empty"),
        (tw.media_message(SID, b"RIFF....WAVEfmt "), "WAV header"),
        (json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": 3}}), "mark.name"),
    ],
)
def test_messages_twilio_would_refuse(message: str | bytes, complaint: str) -> None:
    with pytest.raises(sim.Violation) as err:
        sim.parse_gateway_message(message, SID)
    assert complaint in str(err.value)


def test_the_simulators_codec_matches_g711() -> None:
    codes = bytes(range(256))
    assert np.array_equal(sim.ulaw_decode(codes), mulaw_decode(codes))
    x = np.arange(-32768, 32768, 7, dtype=np.int32).astype(np.int16)
    # Encoders may differ by one step at segment edges (audioop truncates to 14 bits first).
    ours = sim.ulaw_decode(sim.ulaw_encode(x)).astype(np.int32)
    product = mulaw_decode(mulaw_encode(x)).astype(np.int32)
    step = np.maximum(np.abs(x.astype(np.int32)) // 8, 16)
    assert np.all(np.abs(ours - product) <= step)
    assert sim.ulaw_encode(np.zeros(3, dtype=np.int16)) == b"\xff\xff\xff"


def test_parse_connect_stream() -> None:
    twiml = tw.connect_stream_twiml(PUBLIC_WSS, {"a": "1", "b": "<&>"})
    assert sim.parse_connect_stream(twiml) == (PUBLIC_WSS, {"a": "1", "b": "<&>"})
    for bad in (
        "<Response><Say>hi</Say></Response>",
        "<Response><Start><Stream url='wss://h/m'/></Start></Response>",  # one-way, not Connect
        "<Response><Connect><Stream url='wss://h/m?x=1'/></Connect></Response>",
        "<Response><Connect><Stream url='ws://gw.example.com/m'/></Connect></Response>",  # 31922
        "not xml",
    ):
        with pytest.raises(sim.WebhookError):
            sim.parse_connect_stream(bad)
    # Local runs without TLS: ws:// on loopback only.
    local = "<Response><Connect><Stream url='ws://127.0.0.1:8080/media'/></Connect></Response>"
    assert sim.parse_connect_stream(local)[0] == "ws://127.0.0.1:8080/media"


async def test_twiml_must_come_as_xml_and_key_presses_are_single_digits() -> None:
    async def webhook(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = tw.connect_stream_twiml(PUBLIC_WSS, {}).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(webhook, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(sim.WebhookError, match="Content-Type"):
            await sim.fetch_twiml(f"http://127.0.0.1:{port}/twiml", {})
    for bad in ("12", "x", ""):
        with pytest.raises(ValueError, match="digit"):
            await place_call("ws://127.0.0.1:9/media", silence(100), dtmf=[(0.1, bad)])


def test_speech_is_deterministic_loud_and_speech_like() -> None:
    a = speech("Hello, could you tell me your opening hours?", engine="synthetic")
    assert np.array_equal(
        a, speech("Hello, could you tell me your opening hours?", engine="synthetic")
    )
    assert not np.array_equal(a, speech("Something else entirely, please.", engine="synthetic"))
    rms_db = 20 * np.log10(np.sqrt(np.mean(a.astype(np.float64) ** 2)) / 32768)
    assert -22 < rms_db < -18 and 2.0 < a.size / 8000 < 6.0
    spectrum = np.abs(np.fft.rfft(a.astype(np.float64)))
    freqs = np.fft.rfftfreq(a.size, 1 / 8000)

    def band(lo: float, hi: float) -> float:
        return float(spectrum[(freqs >= lo) & (freqs < hi)].sum())

    assert band(200, 1000) > 0.1 * band(0, 4000) and band(1000, 3400) > 0.05 * band(0, 4000)
    power = np.sort(spectrum**2)[::-1]
    assert power[:20].sum() < 0.5 * power.sum()  # not a pure tone: energy spread over many bins
    # A syllable rhythm: 20 ms frame energies swing by more than 20 dB, with pauses between words.
    frames = a[: a.size // 160 * 160].reshape(-1, 160).astype(np.float64)
    energy = 10 * np.log10(np.mean(frames**2, axis=1) + 1)
    assert np.percentile(energy, 90) - np.percentile(energy, 10) > 20
    assert silence(250).size == 2000 and not silence(250).any()


def test_resample_keeps_a_tone_and_the_length() -> None:
    t = np.arange(22050) / 22050
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    out = resample(tone, 22050, 8000)
    assert out.size == 8000
    peak = np.argmax(np.abs(np.fft.rfft(out.astype(np.float64))))
    assert peak == 440 and abs(np.sqrt(np.mean(out.astype(float) ** 2)) - 8000 / 2**0.5) < 100


# --- a fake gateway -----------------------------------------------------------------------------


@dataclass
class FakeGateway:
    """Records what the simulator sends (with monotonic arrival times) and lets a test answer."""

    on_message: Callable[[FakeGateway, dict[str, Any]], Any] | None = None
    messages: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    ws: ServerConnection | None = None
    stream_sid: str = ""
    handshake_headers: dict[str, str] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handler(self, ws: ServerConnection) -> None:
        self.ws = ws
        assert ws.request is not None
        self.handshake_headers = dict(ws.request.headers.raw_items())
        try:
            async for raw in ws:
                message = json.loads(raw)
                async with self.changed:
                    self.messages.append((time.monotonic(), message))
                    self.changed.notify_all()
                if message["event"] == "start":
                    self.stream_sid = message["start"]["streamSid"]
                if self.on_message:
                    await self.on_message(self, message)
        except ConnectionClosed:
            pass

    async def send(self, event: str, **body: Any) -> float:
        assert self.ws is not None
        await self.ws.send(json.dumps({"event": event, "streamSid": self.stream_sid, **body}))
        return time.monotonic()

    async def audio(self, pcmu: bytes) -> float:
        assert self.ws is not None
        await self.ws.send(tw.media_message(self.stream_sid, pcmu))
        return time.monotonic()

    def of(self, event: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, m) for t, m in self.messages if m["event"] == event]

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5
    ) -> float:
        """Arrival time of the first message matching ``predicate``, waiting for it."""

        def found() -> float | None:
            return next((t for t, m in self.messages if predicate(m)), None)

        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: found() is not None), timeout)
        return found()  # type: ignore[return-value]


@asynccontextmanager
async def gateway(gw: FakeGateway, process_request: Any = None) -> AsyncIterator[str]:
    async with serve(gw.handler, "127.0.0.1", 0, process_request=process_request) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/media"


def returned_mark(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["event"] == "mark" and m["mark"]["name"] == name


# --- calls --------------------------------------------------------------------------------------


async def test_messages_are_shaped_and_paced_like_twilios() -> None:
    gw = FakeGateway()
    caller = speech("One two three.", engine="synthetic")
    async with gateway(gw) as url:
        result = await asyncio.wait_for(
            place_call(url, caller, hold_after_s=0.4, wait_for_reply=False, dtmf=[(0.3, "5")]),
            10,
        )
        await gw.wait_for(lambda m: m["event"] == "stop")
    events = [m for _, m in gw.messages]
    assert events[0] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    start = events[1]
    assert (start["event"], start["sequenceNumber"]) == ("start", "1")
    body = start["start"]
    for key, prefix in (("streamSid", "MZ"), ("callSid", "CA"), ("accountSid", "AC")):
        assert len(body[key]) == 34 and body[key].startswith(prefix) and int(body[key][2:], 16) >= 0
    assert body["streamSid"] == start["streamSid"] == result.stream_sid
    assert (body["tracks"], body["customParameters"]) == (["inbound"], {})
    assert body["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    # sequenceNumber counts every message after connected; chunk and timestamp as Twilio's.
    assert [int(m["sequenceNumber"]) for m in events[1:]] == list(range(1, len(events)))
    media = [m["media"] for m in events if m["event"] == "media"]
    assert [int(m["chunk"]) for m in media] == list(range(1, len(media) + 1))
    assert [int(m["timestamp"]) for m in media] == [20 * k for k in range(len(media))]
    payload = b"".join(base64.b64decode(m["payload"], validate=True) for m in media)
    assert {len(base64.b64decode(m["payload"])) for m in media} == {160}
    spoken = sim.ulaw_encode(caller)
    assert payload.startswith(spoken) and set(payload[len(spoken) + 160 :]) == {0xFF}
    assert [m["dtmf"]["digit"] for m in events if m["event"] == "dtmf"] == ["5"]
    assert events[-1]["event"] == "stop" and events[-1]["stop"]["callSid"] == result.call_sid
    assert result.frames_sent == len(media) and result.speech_frames == -(-len(spoken) // 160)
    # 50 frames a second against the monotonic clock: frame k near t0 + k x 20 ms, no drift.
    arrivals = np.array([t for t, _ in gw.of("media")])
    offsets = arrivals - arrivals[0] - 0.02 * np.arange(arrivals.size)
    # A stall of a loaded runner may delay a frame; the schedule catches up (no drift).
    assert offsets.min() > -0.03 and offsets.max() < 0.3, (offsets.min(), offsets.max())
    assert abs((arrivals[-1] - arrivals[0]) / (arrivals.size - 1) - 0.02) < 0.002
    # No reply came: the call hung up 0.4 s after the caller's audio ended.
    assert result.frames_received == 0 and result.reply_delay_ms is None
    streamed_s = result.frames_sent * 0.02
    assert len(spoken) / 8000 + 0.4 <= streamed_s < len(spoken) / 8000 + 0.45
    assert streamed_s - 0.03 <= result.duration_s < streamed_s + 0.3


async def test_an_echo_is_heard_as_sent_and_each_mark_returns_after_its_audio() -> None:
    async def echo(gw: FakeGateway, message: dict[str, Any]) -> None:
        if message["event"] == "media":
            audio = base64.b64decode(message["media"]["payload"])
            if audio != sim.SILENCE:
                await gw.audio(audio)
                await gw.send("mark", mark={"name": f"echo:{message['media']['chunk']}"})

    gw = FakeGateway(on_message=echo)
    caller = speech("Echo.", engine="synthetic")
    async with gateway(gw) as url:
        result = await asyncio.wait_for(place_call(url, caller, hold_after_s=0.3), 10)
    spoken = sim.ulaw_encode(caller)
    echoed = b"".join(
        f
        for i in range(0, len(spoken), 160)
        if (f := spoken[i : i + 160].ljust(160, b"\xff")) != sim.SILENCE
    )
    assert result.received_audio == echoed and result.violations == []
    windows = [result.heard[i : i + 160] for i in range(0, len(result.heard), 160)]
    assert b"".join(w for w in windows if w != sim.SILENCE) == echoed  # played as it came
    assert [n for n, _ in result.marks_returned] == [n for n, _ in result.marks_received]
    # Each mark came back after its chunk had finished playing, and within a window or two.
    for (name, back_at), chunk in zip(result.marks_returned, result.reply_chunks, strict=True):
        assert chunk.finished_at is not None and chunk.finished_at <= back_at + 0.005, name
        assert back_at - chunk.finished_at < 0.25
        assert chunk.played_at is not None and chunk.played_at >= chunk.received_at - 0.03
    returned = gw.of("mark")
    assert [m["mark"]["name"] for _, m in returned] == [n for n, _ in result.marks_returned]
    assert all(m["streamSid"] == result.stream_sid for _, m in returned)


async def test_marks_can_come_back_with_a_varying_delay_in_order() -> None:
    async def echo(gw: FakeGateway, message: dict[str, Any]) -> None:
        if message["event"] == "media":
            audio = base64.b64decode(message["media"]["payload"])
            if audio != sim.SILENCE:
                await gw.audio(audio)
                await gw.send("mark", mark={"name": f"echo:{message['media']['chunk']}"})

    gw = FakeGateway(on_message=echo)
    caller = speech("Echo, echo, echo.", engine="synthetic")
    async with gateway(gw) as url:
        result = await asyncio.wait_for(
            place_call(url, caller, hold_after_s=0.5, mark_jitter_ms=40, mark_jitter_seed=3), 10
        )
        last = result.marks_returned[-1][0]
        await gw.wait_for(returned_mark(last))
    names = [n for n, _ in result.marks_returned]
    assert names == [n for n, _ in result.marks_received]
    assert [m["mark"]["name"] for _, m in gw.of("mark")] == names  # in order
    late = [
        back_at - chunk.finished_at
        for (_, back_at), chunk in zip(result.marks_returned, result.reply_chunks, strict=True)
        if chunk.finished_at is not None
    ]
    # Never early; later by a window or two (a loaded runner's tick) and the jitter, varying.
    assert min(late) >= -0.005 and max(late) < 0.25 + 0.04
    assert max(late) - min(late) > 0.015


async def test_marks_wait_for_playback_and_clear_drops_the_rest_at_once() -> None:
    sent: dict[str, float] = {}

    async def script(gw: FakeGateway, message: dict[str, Any]) -> None:
        if message["event"] == "start":
            await gw.audio(REPLY * 400)  # 400 ms
            sent["m1"] = await gw.send("mark", mark={"name": "m1"})
            await gw.audio(REPLY * 2000)  # 2 s more, to be cut short
            await gw.send("mark", mark={"name": "m2"})
        elif message["event"] == "mark" and message["mark"]["name"] == "m1":
            sent["clear"] = await gw.send("clear")

    gw = FakeGateway(on_message=script)
    async with gateway(gw) as url:
        result = await asyncio.wait_for(
            place_call(url, silence(200), hold_after_s=0.3, wait_for_reply=False), 10
        )
        m2_at = await gw.wait_for(returned_mark("m2"))
    m1_at = next(t for t, m in gw.messages if returned_mark("m1")(m))
    # Bounds far from the wrong answers (at once; 2 s later) so a loaded runner cannot trip them.
    assert 0.39 <= m1_at - sent["m1"] < 0.9  # only once its 400 ms had played
    assert m2_at - sent["clear"] < 0.5  # at once on clear, not 2 s later
    assert [n for n, _ in result.marks_returned] == ["m1", "m2"]
    assert len(result.clears) == 1 and result.reply_heard_at_clear_ms is not None
    assert 400 <= result.reply_heard_at_clear_ms <= 600
    # The cleared audio never played: about 400 ms of reply heard, not 2.4 s.
    first, second = result.reply_chunks
    assert first.finished_at is not None and first.cleared_bytes == 0
    assert second.cleared_bytes >= 16000 - 80 * 8 and second.finished_at is None
    assert 400 <= result.heard.count(0x00) / 8 <= 600
    assert result.played_after_clear_ms == 0


async def test_bad_outbound_messages_are_recorded_as_violations() -> None:
    async def junk(gw: FakeGateway, message: dict[str, Any]) -> None:
        if message["event"] == "start":
            assert gw.ws is not None
            await gw.send("bogus")
            await gw.ws.send(b"\x00\x01")
            await gw.ws.send(json.dumps({"event": "media", "streamSid": "MZwrong", "media": {}}))
            await gw.send("media", media={"payload": "not base64!"})
            await gw.send("mark", mark={})
            await gw.audio(REPLY * 20)  # and one good frame, still played

    gw = FakeGateway(on_message=junk)
    async with gateway(gw) as url:
        result = await asyncio.wait_for(
            place_call(url, silence(100), hold_after_s=0.2, wait_for_reply=False), 10
        )
    joined = "\n".join(result.violations)
    assert len(result.violations) == 5, joined
    for complaint in ("bogus", "binary frame", "MZwrong", "base64", "mark.name"):
        assert complaint in joined
    assert result.frames_received == 1 and result.heard.count(0x00) == 160


async def test_barge_in_speaks_over_the_reply_until_the_clear() -> None:
    state: dict[str, Any] = {}
    first_turn = speech("Hi.", engine="synthetic")
    turn_frames = -(-first_turn.size // 160)
    interruption = speech("Stop, please.", engine="synthetic")

    async def script(gw: FakeGateway, message: dict[str, Any]) -> None:
        if message["event"] != "media":
            return
        chunk = int(message["media"]["chunk"])
        audio = base64.b64decode(message["media"]["payload"])
        if chunk == turn_frames + 1:  # the caller has finished: a 3 s reply, marked every 200 ms
            for i in range(15):
                await gw.audio(REPLY * 200)
                await gw.send("mark", mark={"name": f"r:{i}"})
            state["reply_sent"] = True
        elif state.get("reply_sent") and "clear" not in state and audio != sim.SILENCE:
            state["clear"] = await gw.send("clear")  # the caller talks: barge-in

    gw = FakeGateway(on_message=script)
    async with gateway(gw) as url:
        result = await asyncio.wait_for(
            place_call(url, first_turn, hold_after_s=0.3, barge_in=BargeIn(0.5, interruption)),
            15,
        )
    assert result.barge_in_at is not None and result.reply_delay_ms is not None
    assert result.clear_after_barge_ms is not None and result.clear_after_barge_ms < 400
    assert result.played_after_barge_ms is not None and result.played_after_barge_ms <= 400
    # 500 ms of reply had played; after the clear only silence (nothing else was sent).
    assert result.reply_heard_at_clear_ms is not None
    assert 500 <= result.reply_heard_at_clear_ms <= 1000  # of a 3 s reply
    assert result.heard.count(0x00) / 8 == pytest.approx(result.reply_heard_at_clear_ms, abs=25)
    assert [n for n, _ in result.marks_returned] == [f"r:{i}" for i in range(15)]
    cut = [n for n, t in result.marks_returned if t >= result.clears[0]]
    assert len(cut) >= 11  # returned together, at the clear
    # The caller's frames after the barge-in carry the interruption.
    sent = b"".join(base64.b64decode(m["media"]["payload"]) for _, m in gw.of("media"))
    assert sim.ulaw_encode(interruption) in sent


async def test_webhook_twiml_parameters_and_signatures() -> None:
    validator = RequestValidator(TOKEN)
    seen: dict[str, Any] = {}

    async def webhook(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        form = dict(parse_qsl((await reader.readexactly(int(headers["content-length"]))).decode()))
        seen.setdefault("form", form)  # the first call's
        seen["line"] = lines[0]
        ok = validator.validate(
            "https://gw.example.com/twiml", form, headers.get("x-twilio-signature", "")
        )
        seen["webhook_signed"] = ok
        twiml = tw.connect_stream_twiml(PUBLIC_WSS, {"caller": form["From"], "odd": '<&>"\n'})
        body = twiml.encode() if ok else b"forbidden"
        status = "200 OK" if ok else "403 Forbidden"
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    def check_handshake(conn: ServerConnection, request: Request) -> Response | None:
        signature = request.headers.get("X-Twilio-Signature", "")
        if not validator.validate(PUBLIC_WSS, {}, signature):
            return conn.respond(403, "bad signature\n")
        return None

    http_server = await asyncio.start_server(webhook, "127.0.0.1", 0)
    http_port = http_server.sockets[0].getsockname()[1]
    gw = FakeGateway()
    try:
        async with http_server, gateway(gw, check_handshake) as url:
            result = await asyncio.wait_for(
                place_call(
                    url,
                    silence(100),
                    twiml_url=f"http://127.0.0.1:{http_port}/twiml",
                    twiml_signed_url="https://gw.example.com/twiml",
                    auth_token=TOKEN,
                    custom_parameters={"extra": "1"},
                    hold_after_s=0.1,
                    wait_for_reply=False,
                ),
                10,
            )
            # A wrong token: the webhook refuses it, and the call is never placed.
            with pytest.raises(sim.WebhookError, match="403"):
                await place_call(
                    url,
                    silence(100),
                    twiml_url=f"http://127.0.0.1:{http_port}/twiml",
                    auth_token="f" * 32,
                )
            # The handshake signature alone (no webhook): valid over the wss URL, else 403.
            with pytest.raises(InvalidStatus):
                await place_call(url, silence(100), auth_token=TOKEN, signed_url=PUBLIC_WSS + "x")
    finally:
        http_server.close()
    form = seen["form"]
    assert seen["line"] == "POST /twiml HTTP/1.1"
    assert (form["CallSid"], form["AccountSid"]) == (result.call_sid, result.account_sid)
    assert (form["CallStatus"], form["Direction"], form["From"]) == (
        "ringing",
        "inbound",
        "+15550001111",
    )
    start = next(m for _, m in gw.messages if m["event"] == "start")["start"]
    expected = {"caller": "+15550001111", "odd": '<&>"\n', "extra": "1"}
    assert start["customParameters"] == expected == result.custom_parameters
    assert start["callSid"] == result.call_sid and result.stream_url == PUBLIC_WSS
    assert validator.validate(PUBLIC_WSS, {}, gw.handshake_headers["X-Twilio-Signature"])


async def test_a_gateway_hang_up_ends_the_call_and_is_recorded() -> None:
    async def hang_up(gw: FakeGateway, message: dict[str, Any]) -> None:
        if message["event"] == "media" and message["media"]["chunk"] == "5":
            assert gw.ws is not None
            await gw.ws.close(1011, "going away")

    gw = FakeGateway(on_message=hang_up)
    async with gateway(gw) as url:
        caller = speech("A long question, really.", engine="synthetic")
        result = await asyncio.wait_for(place_call(url, caller), 10)
    assert result.closed_by_gateway and result.close_code == 1011
    # The call stopped at the hang-up (frame 5), not at the end of the caller's speech.
    assert 5 <= result.frames_sent <= 8 < len(caller) // 160


async def test_a_connect_action_is_requested_signed_and_its_twiml_followed() -> None:
    """The gateway ends the stream; Twilio requests the <Connect action> (signed over its public
    URL, POST, the call's parameters) and follows its TwiML: a second stream, then a <Dial>."""
    validator = RequestValidator(TOKEN)
    requests: list[tuple[str, dict[str, str], bool]] = []
    second_wss = "wss://gw.example.com/second"
    answers = {
        "/twiml": '<Response><Connect action="/after"><Stream url="wss://gw.example.com/media">'
        '<Parameter name="leg" value="1"/></Stream></Connect><Say>not played</Say></Response>',
        "/after": f'<Response><Connect><Stream url="{second_wss}"/></Connect>'
        "<Dial>+15550100</Dial></Response>",
    }

    async def webhook(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        form = dict(parse_qsl((await reader.readexactly(int(headers["content-length"]))).decode()))
        path = lines[0].split()[1]
        signed = validator.validate(
            f"https://gw.example.com{path}", form, headers.get("x-twilio-signature", "")
        )
        requests.append((lines[0], form, signed))
        body = answers[path].encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    handshakes: list[tuple[str, bool]] = []

    def check_handshake(conn: ServerConnection, request: Request) -> Response | None:
        signature = request.headers.get("X-Twilio-Signature", "")
        handshakes.append(
            (
                request.path,
                validator.validate(
                    PUBLIC_WSS if request.path == "/media" else second_wss, {}, signature
                ),
            )
        )
        return None

    async def hang_up(gw: FakeGateway, message: dict[str, Any]) -> None:
        if message["event"] == "media" and message["media"]["chunk"] == "3":
            assert gw.ws is not None
            await gw.ws.close()  # the gateway ends each stream: <Connect> ends

    http_server = await asyncio.start_server(webhook, "127.0.0.1", 0)
    http_port = http_server.sockets[0].getsockname()[1]
    gw = FakeGateway(on_message=hang_up)
    async with http_server, gateway(gw, check_handshake) as url:
        options = sim.CallOptions(
            sim.CallScript(silence(1000), hold_after_s=0.2),
            sim.CallIdentity(call_sid="CA" + "7" * 32),
            sim.Signing(
                auth_token=TOKEN,
                twiml_url=f"http://127.0.0.1:{http_port}/twiml",
                twiml_signed_url="https://gw.example.com/twiml",
            ),
        )
        result = await asyncio.wait_for(sim.run_call(url, options), 10)
    assert [(line, ok) for line, _, ok in requests] == [
        ("POST /twiml HTTP/1.1", True),
        ("POST /after HTTP/1.1", True),
    ]
    action_form = requests[1][1]
    assert (action_form["CallSid"], action_form["AccountSid"]) == (
        result.call_sid,
        result.account_sid,
    )
    assert (action_form["CallStatus"], action_form["From"], action_form["To"]) == (
        "in-progress",
        "+15550001111",
        "+15550002222",
    )
    assert handshakes == [("/media", True), ("/second", True)]
    assert result.closed_by_gateway and result.custom_parameters == {"leg": "1"}
    assert result.action_requests == [("https://gw.example.com/after", 200)]
    [second] = result.next_streams
    assert second.closed_by_gateway and second.stream_url == second_wss
    assert second.call_sid == result.call_sid and second.stream_sid != result.stream_sid
    assert result.dialed == "+15550100"
    starts = [m["start"] for _, m in gw.of("start")]
    assert [s["streamSid"] for s in starts] == [result.stream_sid, second.stream_sid]
