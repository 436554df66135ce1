"""The edge's HTTP side and handshake rules: TwiML webhook, health, metrics, signatures, limits."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import fakeredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from shared.runtime.settings import load_settings
from shared.streams import (
    CallKeys,
    DtmfPressed,
    InboundFrame,
    StreamEnd,
    decode_control,
    decode_inbound,
)
from sim.speech import speech
from sim.twilio_call import place_call
from tests.conftest import free_port, wait_for
from tests.stack import running_edge

TOKEN = "0123456789abcdef0123456789abcdef"
PUBLIC = "https://gw.example.com"


@contextlib.asynccontextmanager
async def edge(server: fakeredis.FakeServer | None = None, **over: object) -> AsyncIterator[int]:
    settings = load_settings(
        **{"edge_host": "127.0.0.1", "edge_port": 0, "public_url": PUBLIC, **over}
    )
    redis = fakeredis.FakeAsyncRedis(server=server or fakeredis.FakeServer())
    async with running_edge(settings, redis) as port:
        yield port


async def http(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    hdrs = {"Host": f"127.0.0.1:{port}", "Connection": "close", **(headers or {})}
    if method == "POST":
        hdrs.setdefault("Content-Type", "application/x-www-form-urlencoded")
        hdrs["Content-Length"] = str(len(body))
    writer.write(
        f"{method} {path} HTTP/1.1\r\n".encode()
        + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()).encode()
        + b"\r\n"
        + body
    )
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status = int(raw.split(b" ", 2)[1])
    return status, raw.partition(b"\r\n\r\n")[2]


FORM = {
    "CallSid": "CA" + "1" * 32,
    "From": "+15550001111",
    "To": "+15550002222",
    "AccountSid": "AC1",
}


async def test_twiml_post_and_get_connect_a_stream_with_parameters() -> None:
    async with edge() as port:
        status, body = await http(port, "POST", "/twiml", urlencode(FORM).encode())
        assert status == 200
        text = body.decode()
        assert (
            '<Stream url="wss://gw.example.com/media" statusCallback='
            '"https://gw.example.com/stream-status" statusCallbackMethod="POST">'
        ) in text
        for name in ("From", "To", "CallSid"):
            assert f'<Parameter name="{name}" value="{FORM[name]}"/>' in text
        status, body = await http(port, "GET", "/twiml?" + urlencode(FORM))
        assert status == 200 and b"+15550001111" in body


async def test_healthz_on_both_ports_metrics_only_on_the_metrics_port() -> None:
    """Twilio reaches the public port, and so can anyone: call volumes, rejection reasons and
    latencies are for the operator's METRICS_PORT alone."""
    metrics_port = free_port()
    async with edge(metrics_port=metrics_port, metrics_host="127.0.0.1") as port:
        assert (await http(port, "GET", "/healthz"))[0] == 200
        assert (await http(port, "GET", "/metrics"))[0] == 404
        assert (await http(port, "GET", "/nope"))[0] == 404
        assert (await http(metrics_port, "GET", "/healthz"))[0] == 200
        status, body = await http(metrics_port, "GET", "/metrics")
        assert status == 200 and b"gateway_rejected_total" in body


async def test_signed_webhook_accepted_unsigned_or_wrong_refused() -> None:
    validator = RequestValidator(TOKEN)
    async with edge(twilio_auth_token=TOKEN) as port:
        body = urlencode(FORM).encode()
        good = validator.compute_signature(f"{PUBLIC}/twiml", FORM)
        assert (await http(port, "POST", "/twiml", body, {"X-Twilio-Signature": good}))[0] == 200
        assert (await http(port, "POST", "/twiml", body))[0] == 403
        assert (
            await http(port, "POST", "/twiml", body, {"X-Twilio-Signature": "AAAA" + good[4:]})
        )[0] == 403
        tampered = urlencode({**FORM, "From": "+19990000000"}).encode()
        assert (await http(port, "POST", "/twiml", tampered, {"X-Twilio-Signature": good}))[
            0
        ] == 403


async def test_signatures_off_accepts_unsigned_requests_even_with_a_token() -> None:
    """TWILIO_SIGNATURES=off: the operator said explicitly that unsigned requests are wanted."""
    async with edge(twilio_auth_token=TOKEN, twilio_signatures="off") as port:
        assert (await http(port, "POST", "/twiml", urlencode(FORM).encode()))[0] == 200
        async with connect(f"ws://127.0.0.1:{port}/media"):
            pass


async def test_signed_media_handshake_accepted_unsigned_refused() -> None:
    validator = RequestValidator(TOKEN)
    async with edge(twilio_auth_token=TOKEN) as port:
        url = f"ws://127.0.0.1:{port}/media"
        sig = validator.compute_signature("wss://gw.example.com/media", {})
        async with connect(url, additional_headers={"X-Twilio-Signature": sig}) as ws:
            await ws.send(
                json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
            )
        for headers in ({}, {"X-Twilio-Signature": sig[:-4] + "AAA="}):
            with pytest.raises(InvalidStatus) as err:
                async with connect(url, additional_headers=headers):
                    pass
            assert err.value.response.status_code == 403


FMT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}


async def _one_started(port: int) -> bool:
    """Whether a new socket is refused now (a stream has started on the one-call edge)."""
    try:
        async with connect(f"ws://127.0.0.1:{port}/media"):
            return False
    except InvalidStatus:
        return True


async def test_oversized_messages_close_with_1009_and_calls_are_capped() -> None:
    async with edge(max_message_bytes=2048, max_calls=1) as port:
        url = f"ws://127.0.0.1:{port}/media"
        async with connect(url) as ws:
            await ws.send("x" * 5000)
            with pytest.raises(ConnectionClosed) as err:
                await asyncio.wait_for(ws.recv(), 5)
            assert err.value.rcvd is not None and err.value.rcvd.code == 1009
        async with connect(url) as ws:
            # Only started streams count against MAX_CALLS.
            inner = {"streamSid": "MZ1", "callSid": "CA" + "a" * 32, "mediaFormat": FMT}
            await ws.send(json.dumps({"event": "start", "sequenceNumber": "1", "start": inner}))
            await wait_for(lambda: _one_started(port), timeout=10)
            with pytest.raises(InvalidStatus) as err2:
                async with connect(url):
                    pass
            assert err2.value.response.status_code == 503


# Every webhook passes the same guards and is refused alike (a callback once answered 400 where
# /twiml answered 413 or 411).
WEBHOOKS = ("/twiml", "/stream-status", "/connect-action", "/amd", "/call-status")


async def test_body_too_large_is_refused() -> None:
    async with edge() as port:
        for path in WEBHOOKS:
            status, _ = await http(port, "POST", path, b"a=" + b"x" * 70000)
            assert status == 413, path


async def test_without_public_url_the_request_says_what_twilio_signed() -> None:
    """No PUBLIC_URL: the webhook and the stream URL come from the Host the request was sent to,
    and the scheme a TLS-terminating proxy reports, because that is the URL Twilio signed."""
    validator = RequestValidator(TOKEN)
    async with edge(twilio_auth_token=TOKEN, public_url="") as port:
        body = urlencode(FORM).encode()
        direct = validator.compute_signature(f"http://127.0.0.1:{port}/twiml", FORM)
        status, twiml = await http(port, "POST", "/twiml", body, {"X-Twilio-Signature": direct})
        assert status == 200 and f'url="ws://127.0.0.1:{port}/media"'.encode() in twiml
        proxied = {"Host": "voice.example.org", "X-Forwarded-Proto": "https"}
        sig = validator.compute_signature("https://voice.example.org/twiml?x=1", FORM)
        status, twiml = await http(
            port, "POST", "/twiml?x=1", body, {**proxied, "X-Twilio-Signature": sig}
        )
        assert status == 200 and b'url="wss://voice.example.org/media"' in twiml
        # Signed over the other URL: refused.
        wrong = {**proxied, "X-Twilio-Signature": direct}
        assert (await http(port, "POST", "/twiml", body, wrong))[0] == 403
        media_sig = validator.compute_signature("wss://voice.example.org/media", {})
        status, _ = await http(
            port, "GET", "/media", headers={**proxied, "X-Twilio-Signature": media_sig}
        )
        assert status != 403  # past the signature (not a WebSocket upgrade, so not 101 either)
        status, _ = await http(
            port, "GET", "/media", headers={**proxied, "X-Twilio-Signature": sig}
        )
        assert status == 403
        sig = validator.compute_signature(f"ws://127.0.0.1:{port}/media", {})
        async with connect(
            f"ws://127.0.0.1:{port}/media", additional_headers={"X-Twilio-Signature": sig}
        ):
            pass
        status, _ = await http(port, "GET", "/twiml", headers={"Host": "bad host<>"})
        assert status == 400


async def test_a_repeated_form_field_is_signed_with_every_value() -> None:
    validator = RequestValidator(TOKEN)
    async with edge(twilio_auth_token=TOKEN) as port:
        pairs = [*FORM.items(), ("Tag", "b"), ("Tag", "a")]

        class Multi(dict):  # type: ignore[type-arg]
            def getlist(self, name: str) -> list[str]:
                return [v for k, v in pairs if k == name]

        sig = validator.compute_signature(f"{PUBLIC}/twiml", Multi(pairs))
        status, _ = await http(
            port, "POST", "/twiml", urlencode(pairs).encode(), {"X-Twilio-Signature": sig}
        )
        assert status == 200


async def test_a_chunked_webhook_body_gets_411() -> None:
    async with edge() as port:
        for path in WEBHOOKS:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            body = urlencode(FORM).encode()
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n".encode()
                + b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
                + f"{len(body):x}\r\n".encode()
                + body
                + b"\r\n0\r\n\r\n"
            )
            raw = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert raw.split(b" ", 2)[1] == b"411", path


def test_a_wss_public_url_is_the_https_one() -> None:
    settings = load_settings(public_url="wss://gw.example.com/")
    assert settings.public_twiml_url() == "https://gw.example.com/twiml"
    assert settings.public_media_url() == "wss://gw.example.com/media"


async def test_a_media_flood_is_limited_but_stop_and_key_presses_are_never_dropped() -> None:
    server = fakeredis.FakeServer()
    async with edge(server, max_messages_per_second=10) as port:  # a burst of 20 frames
        sid, call = "MZ" + "a" * 32, "CA" + "b" * 32
        payload = base64.b64encode(b"\xff" * 160).decode()
        fmt = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
        async with connect(f"ws://127.0.0.1:{port}/media") as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1"}))
            await ws.send(
                json.dumps(
                    {
                        "event": "start",
                        "sequenceNumber": "1",
                        "streamSid": sid,
                        "start": {"streamSid": sid, "callSid": call, "mediaFormat": fmt},
                    }
                )
            )
            for n in range(200):
                media = {
                    "track": "inbound",
                    "chunk": str(n + 1),
                    "timestamp": str(20 * n),
                    "payload": payload,
                }
                await ws.send(
                    json.dumps(
                        {
                            "event": "media",
                            "sequenceNumber": str(n + 2),
                            "streamSid": sid,
                            "media": media,
                        }
                    )
                )
            await ws.send(
                json.dumps(
                    {
                        "event": "dtmf",
                        "sequenceNumber": "202",
                        "streamSid": sid,
                        "dtmf": {"track": "inbound_track", "digit": "7"},
                    }
                )
            )
            await ws.send(
                json.dumps(
                    {
                        "event": "stop",
                        "sequenceNumber": "203",
                        "streamSid": sid,
                        "stop": {"accountSid": "AC1", "callSid": call},
                    }
                )
            )
        redis = fakeredis.FakeAsyncRedis(server=server)
        keys = CallKeys.for_call(call)

        async def ended() -> list:  # type: ignore[type-arg]
            entries = [decode_inbound(f) for _, f in await redis.xrange(keys.in_pcmu)]
            return entries if entries and isinstance(entries[-1], StreamEnd) else []

        inbound = await wait_for(ended, timeout=10)
    frames = [e for e in inbound if isinstance(e, InboundFrame)]
    assert 15 <= len(frames) <= 40  # the flood was cut to the bucket
    assert inbound[-1].reason == "stop"
    controls = [decode_control(f) for _, f in await redis.xrange(keys.ctl)]
    assert DtmfPressed("7") in controls


async def test_a_second_stream_on_the_same_call_is_refused_not_fed_the_first_ones_replies() -> None:
    server = fakeredis.FakeServer()
    call = "CA" + "c" * 32
    fmt = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}

    def start(sid: str) -> str:
        inner = {"streamSid": sid, "callSid": call, "mediaFormat": fmt}
        return json.dumps(
            {"event": "start", "sequenceNumber": "1", "streamSid": sid, "start": inner}
        )

    async with edge(server) as port:
        url = f"ws://127.0.0.1:{port}/media"
        async with connect(url) as ws:
            await ws.send(start("MZ" + "1" * 32))
            await ws.send(
                json.dumps(
                    {
                        "event": "stop",
                        "sequenceNumber": "2",
                        "streamSid": "MZ" + "1" * 32,
                        "stop": {},
                    }
                )
            )
        redis = fakeredis.FakeAsyncRedis(server=server)
        keys = CallKeys.for_call(call)
        await wait_for(lambda: redis.hget(keys.meta, b"ended"), timeout=10)
        async with connect(url) as ws:
            await ws.send(start("MZ" + "2" * 32))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert (await redis.hget(keys.meta, b"stream_sid")) == b"MZ" + b"1" * 32


async def test_a_shared_key_signature_is_checked_with_its_secret_and_algorithm() -> None:
    """A Webhook Rule makes Twilio sign with a SharedKey (HMAC-SHA256) and name it in
    X-Twilio-Webhooks-Signature-Settings; without the header the Auth Token (SHA-1) applies."""
    secret = "shared-key-secret-0123456789"
    settings_header = "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"
    body = urlencode(FORM).encode()
    url = f"{PUBLIC}/twiml"
    sha256 = RequestValidator(secret).compute_signature(url, FORM, "HMAC_SHA256")
    shared = {"X-Twilio-Webhooks-Signature-Settings": settings_header}
    async with edge(twilio_auth_token=TOKEN, twilio_shared_key_secret=secret) as port:
        good = {**shared, "X-Twilio-Signature": sha256}
        assert (await http(port, "POST", "/twiml", body, good))[0] == 200
        # The same secret with SHA-1, or the Auth Token's signature under the header: refused.
        sha1 = RequestValidator(secret).compute_signature(url, FORM)
        assert (await http(port, "POST", "/twiml", body, {**shared, "X-Twilio-Signature": sha1}))[
            0
        ] == 403
        token_sig = RequestValidator(TOKEN).compute_signature(url, FORM)
        with_token = {**shared, "X-Twilio-Signature": token_sig}
        assert (await http(port, "POST", "/twiml", body, with_token))[0] == 403
        # No header: the Auth Token, as before.
        assert (await http(port, "POST", "/twiml", body, {"X-Twilio-Signature": token_sig}))[
            0
        ] == 200
        # An algorithm the validator does not know: refused.
        odd = {"X-Twilio-Webhooks-Signature-Settings": "key=k,algorithm=HMAC_MD5"}
        assert (await http(port, "POST", "/twiml", body, {**odd, "X-Twilio-Signature": sha256}))[
            0
        ] == 403
    # The edge has no SharedKey secret: a request signed with one is refused, not trusted.
    async with edge(twilio_auth_token=TOKEN) as port:
        assert (await http(port, "POST", "/twiml", body, good))[0] == 403


async def test_stream_status_callbacks_are_signed_counted_and_checked() -> None:
    validator = RequestValidator(TOKEN)
    url = f"{PUBLIC}/stream-status"
    form = {
        "AccountSid": "AC" + "0" * 32,
        "CallSid": "CA" + "d" * 32,
        "StreamSid": "MZ" + "d" * 32,
        "StreamEvent": "stream-error",
        "StreamError": "Stream - WebSocket - Handshake Error",
        "Timestamp": "2026-11-25T17:00:00Z",
    }
    metrics_port = free_port()
    async with edge(
        twilio_auth_token=TOKEN, metrics_port=metrics_port, metrics_host="127.0.0.1"
    ) as port:
        body = urlencode(form).encode()
        sig = validator.compute_signature(url, form)
        before = (await http(metrics_port, "GET", "/metrics"))[1]
        assert (await http(port, "POST", "/stream-status", body, {"X-Twilio-Signature": sig}))[
            0
        ] == 204
        after = (await http(metrics_port, "GET", "/metrics"))[1]
        line = b'gateway_stream_events_total{event="stream-error"} '
        count = float(after.split(line)[1].split(b"\n")[0])
        assert count == (float(before.split(line)[1].split(b"\n")[0]) if line in before else 0) + 1
        assert (await http(port, "POST", "/stream-status", body))[0] == 403
        bad = {**form, "StreamEvent": "stream-exploded"}
        bad_sig = validator.compute_signature(url, bad)
        status, _ = await http(
            port, "POST", "/stream-status", urlencode(bad).encode(), {"X-Twilio-Signature": bad_sig}
        )
        assert status == 400
        assert (await http(port, "GET", "/stream-status"))[0] == 405


class LifecycleDownRedis(fakeredis.FakeAsyncRedis):
    """Redis refusing the lifecycle write of the first call (a failover, a full pool)."""

    failures = 1

    async def xadd(self, name, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        key = name if isinstance(name, bytes) else str(name).encode()
        if key.startswith(b"gw:calls") and self.failures:
            self.failures -= 1
            raise RedisConnectionError("Too many connections")
        return await super().xadd(name, *args, **kwargs)


async def test_a_call_redis_cannot_register_is_hung_up_and_the_next_one_served() -> None:
    settings = load_settings(edge_host="127.0.0.1", edge_port=0)
    client = LifecycleDownRedis(server=fakeredis.FakeServer())
    async with running_edge(settings, client) as port:
        url = f"ws://127.0.0.1:{port}/media"
        first = await place_call(url, speech("Hi."), hold_after_s=0.2, wait_for_reply=False)
        assert first.closed_by_gateway and first.close_code == 1011
        second = await place_call(url, speech("Hi."), hold_after_s=0.2, wait_for_reply=False)
        assert not second.closed_by_gateway
        assert await client.hget(CallKeys.for_call(second.call_sid).meta, b"stream_sid")
