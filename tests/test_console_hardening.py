"""The console's security headers on every response, and its deadline over a request's head and
body, against the console as it runs (uvicorn on 127.0.0.1) over a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from services.console.hardening import DOCS_POLICY, PAGE_POLICY, REQUEST_TIMEOUT_S
from shared.runtime.observability import REJECTED
from tests.conftest import RedisServer
from tests.console_stack import TOKEN, console_alone

pytestmark = [pytest.mark.redis_server]

COMMON = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


@pytest.fixture
async def console(redis_server: RedisServer) -> AsyncIterator[str]:
    async with console_alone(redis_server.url) as (url, _):
        yield url


async def test_every_response_carries_the_security_headers(console: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=console, trust_env=False, timeout=10) as client:
        responses = {
            "page": await client.get("/"),
            "script": await client.get("/static/console.js"),
            "health": await client.get("/healthz"),
            "refused": await client.get("/api/calls"),
            "api": await client.get("/api/calls", headers=auth),
            "not found": await client.get("/nowhere"),
            "invalid": await client.get("/api/calls?limit=0", headers=auth),
            "too large": await client.post(
                "/api/calls/outbound", headers=auth, content=b"x" * (1 << 20)
            ),
            "openapi": await client.get("/openapi.json"),
            "swagger": await client.get("/docs-assets/swagger-ui-bundle.js"),
        }
        docs = await client.get("/docs")
    statuses = {name: r.status_code for name, r in responses.items()}
    assert statuses == {
        "page": 200,
        "script": 200,
        "health": 200,
        "refused": 401,
        "api": 200,
        "not found": 404,
        "invalid": 422,
        "too large": 413,
        "openapi": 200,
        "swagger": 200,
    }
    for name, response in [*responses.items(), ("docs", docs)]:
        for header, value in COMMON.items():
            assert response.headers.get(header) == value, (name, header)
        policy = DOCS_POLICY if name == "docs" else PAGE_POLICY
        assert response.headers.get("content-security-policy") == policy, name
    assert "default-src 'self'" in PAGE_POLICY and "frame-ancestors 'none'" in PAGE_POLICY
    assert "script-src" not in DOCS_POLICY and "frame-ancestors 'none'" in DOCS_POLICY
    # Nothing inline for the policy to refuse: the pages load their scripts from files.
    for page in (responses["page"], docs):
        assert docs.status_code == 200 and "<script>" not in page.text and "style=" not in page.text


async def trickle(url: str, head: bytes, then: bytes) -> tuple[float, bytes]:
    """Send ``head`` at once, then ``then`` a byte a second; how long until the console closed
    the connection, and what it answered."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()

    async def drip() -> None:
        writer.write(head)
        for byte in then:
            await writer.drain()
            await asyncio.sleep(1.0)  # the client under test is slow on purpose
            writer.write(bytes([byte]))

    dripping = asyncio.create_task(drip())
    answer = b""
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S + 20):
            while chunk := await reader.read(4096):
                answer += chunk
    except (ConnectionError, OSError):
        pass
    elapsed = time.monotonic() - started
    dripping.cancel()
    await asyncio.gather(dripping, return_exceptions=True)
    writer.close()
    return elapsed, answer


async def test_a_request_that_trickles_in_is_dropped_at_the_deadline(console: str) -> None:
    before = REJECTED.labels("console_request_too_slow")._value.get()
    host = console.removeprefix("http://").encode()
    head_trickle = trickle(console, b"", b"GET /healthz HTTP/1.1\r\nHost: " + host * 10)
    body = b'{"to": "+15550100"}' * 5
    body_trickle = trickle(
        console,
        b"POST /api/calls/outbound HTTP/1.1\r\nHost: "
        + host
        + f"\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode(),
        body,
    )
    idle = trickle(console, b"", b"")  # connects, sends nothing
    (head_s, head_answer), (body_s, _), (idle_s, _) = await asyncio.gather(
        head_trickle, body_trickle, idle
    )
    # Dropped at the 10 s deadline (loosely: a loaded machine), not when the trickle ends
    # (60 s and more away).
    for elapsed in (head_s, body_s, idle_s):
        assert REQUEST_TIMEOUT_S - 0.5 <= elapsed < REQUEST_TIMEOUT_S + 5, (head_s, body_s, idle_s)
    assert head_answer.startswith(b"HTTP/1.1 408 "), head_answer[:100]
    head_lines = head_answer.lower().split(b"\r\n")
    assert b"x-frame-options: deny" in head_lines
    assert b"content-security-policy: " + PAGE_POLICY.lower().encode() in head_lines
    assert REJECTED.labels("console_request_too_slow")._value.get() >= before + 3


async def test_a_kept_alive_client_is_not_cut_by_the_deadline(console: str) -> None:
    """The deadline bounds each request, not the connection: requests on one connection over
    more than the deadline all get answers."""
    async with httpx.AsyncClient(base_url=console, trust_env=False, timeout=10) as client:
        started = time.monotonic()
        answered = 0
        while time.monotonic() - started < REQUEST_TIMEOUT_S + 1:
            response = await client.get("/healthz")
            assert response.status_code == 200
            answered += 1
            await asyncio.sleep(1.0)  # a client polling once a second, as the page does
    assert answered >= REQUEST_TIMEOUT_S
