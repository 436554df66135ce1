"""What the console's HTTP server does to every response and every request, apart from the API.

* :class:`SecurityHeaders` (ASGI, outermost, so error pages get them too): a Content Security
  Policy that lets the page load only its own files and be framed by nobody, with
  ``X-Frame-Options: DENY`` for browsers that predate ``frame-ancestors``, ``nosniff``, and no
  ``Referer`` (the page's address may carry the token in its fragment once; a fragment is never
  sent, but nothing else of the console should leak either). The page plays a recording from a
  ``blob:`` URL (an ``<audio src>`` cannot carry the bearer token), hence ``media-src blob:``.
  Swagger UI at ``/docs`` gets its own policy: it draws its icons from ``data:`` URLs (seen
  refused in chromium without ``img-src data:``); its script is its own vendored bundle and
  ``/static/docs.js``, nothing inline.
* :class:`GuardedH11Protocol` (uvicorn's h11 protocol): a request's head and body must arrive
  within ``REQUEST_TIMEOUT_S`` of the connection's being ready for it (opened, or done with
  the previous response; idle time counts, uvicorn's keep-alive ends that first), else the
  connection is dropped (``408`` when nothing was answered yet) and counted as
  ``gateway_rejected_total{reason="console_request_too_slow"}``. uvicorn bounds only the idle
  time between requests (``timeout_keep_alive``): without this, a client trickling one byte a
  second holds a connection for hours. The edge drops such a client at 10 s (websockets'
  ``open_timeout``); the console does the same.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from shared.runtime.observability import reject

REQUEST_TIMEOUT_S = 10.0

PAGE_POLICY = (
    "default-src 'self'; media-src 'self' blob:; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
DOCS_POLICY = (
    "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
DOCS_PATHS = frozenset({"/docs"})
_COMMON = (
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)


class SecurityHeaders:
    """Sets the console's security headers on every HTTP response of ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = DOCS_POLICY if scope.get("path") in DOCS_PATHS else PAGE_POLICY

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = policy
                for name, value in _COMMON:
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


_TOO_SLOW_BODY = b"the request was too slow\n"
_TOO_SLOW = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    + f"Content-Security-Policy: {PAGE_POLICY}\r\n".encode()
    + b"".join(f"{name}: {value}\r\n".encode() for name, value in _COMMON)
    + f"content-length: {len(_TOO_SLOW_BODY)}\r\nconnection: close\r\n\r\n".encode()
    + _TOO_SLOW_BODY
)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with one deadline over each request's head and body."""

    request_timeout_s = REQUEST_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._request_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # the first request, which may never come

    def data_received(self, data: bytes) -> None:
        if self._request_timer is None and self.conn.their_state is h11.IDLE:
            self._arm()
        super().data_received(data)
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._disarm()  # all of it came (or the connection is done with)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
            self._arm()  # the next request on a kept-alive connection (or one pipelined)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._request_timer = self.loop.call_later(self.request_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _too_slow(self) -> None:
        self._request_timer = None
        if self.transport.is_closing():
            return
        reject("console_request_too_slow")
        if self.conn.our_state is h11.IDLE:
            # Its head never came whole: say why. (A body that stops coming is the app's
            # request; closing ends it with http.disconnect.)
            self.transport.write(_TOO_SLOW)
        self.transport.close()
