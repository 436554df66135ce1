"""The edge's HTTP side and handshake rules: TwiML webhook, health, metrics, signatures, limits."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import fakeredis
import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from services.twilio_edge.service import run_edge
from shared.settings import load_settings

TOKEN = "0123456789abcdef0123456789abcdef"
PUBLIC = "https://gw.example.com"


@contextlib.asynccontextmanager
async def edge(**over: object) -> AsyncIterator[int]:
    settings = load_settings(
        **{"edge_host": "127.0.0.1", "edge_port": 0, "public_url": PUBLIC, **over}
    )
    stop = asyncio.Event()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    task = asyncio.create_task(run_edge(settings, stop, port.set_result, redis=redis))
    try:
        yield await asyncio.wait_for(port, 10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


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
        assert '<Stream url="wss://gw.example.com/media">' in text
        for name in ("From", "To", "CallSid"):
            assert f'<Parameter name="{name}" value="{FORM[name]}"/>' in text
        status, body = await http(port, "GET", "/twiml?" + urlencode(FORM))
        assert status == 200 and b"+15550001111" in body


async def test_healthz_metrics_and_unknown_paths() -> None:
    async with edge() as port:
        assert (await http(port, "GET", "/healthz"))[0] == 200
        status, body = await http(port, "GET", "/metrics")
        assert status == 200 and b"gateway_rejected_total" in body
        assert (await http(port, "GET", "/nope"))[0] == 404


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


async def test_oversized_messages_close_with_1009_and_calls_are_capped() -> None:
    async with edge(max_message_bytes=2048, max_calls=1) as port:
        url = f"ws://127.0.0.1:{port}/media"
        async with connect(url) as ws:
            await ws.send("x" * 5000)
            with pytest.raises(ConnectionClosed) as err:
                await asyncio.wait_for(ws.recv(), 5)
            assert err.value.rcvd is not None and err.value.rcvd.code == 1009
        async with connect(url):
            with pytest.raises(InvalidStatus) as err2:
                async with connect(url):
                    pass
            assert err2.value.response.status_code == 503


async def test_body_too_large_is_refused() -> None:
    async with edge() as port:
        status, _ = await http(port, "POST", "/twiml", b"a=" + b"x" * 70000)
        assert status == 413
