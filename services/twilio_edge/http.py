"""HTTP beside the WebSocket on one port: Twilio's POST webhooks and health (never metrics:
like every service's, the edge's ``/metrics`` is on its own ``METRICS_PORT``).

The edge is a ``websockets`` server. Its HTTP parser reads request heads only and refuses any
request with a body, but Twilio's voice webhook is a form POST. :class:`EdgeConnection` takes the
body off a POST before the parser sees it (keeping it for ``/twiml``), so everything else,
including the limits on head size, stays websockets' own.
"""

from __future__ import annotations

import http
from urllib.parse import parse_qsl

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Response

MAX_BODY_BYTES = 64 * 1024
_MAX_HEAD_BYTES = 16 * 1024


class EdgeConnection(ServerConnection):
    """A server connection that accepts a bounded request body on POST."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._sniff: bytearray | None = bytearray()
        self.http_body: bytes = b""
        self.body_too_large = False
        self.length_required = False  # a chunked body, which a webhook never sends
        self._discard = False

    def data_received(self, data: bytes) -> None:
        if self._discard:
            return  # the rest of a refused body; the connection closes after the 413
        if self._sniff is None:
            super().data_received(data)
            return
        self._sniff += data
        head_end = self._sniff.find(b"\r\n\r\n")
        if head_end < 0:
            if len(self._sniff) > _MAX_HEAD_BYTES:
                self._pass_through(bytes(self._sniff))
            return
        head = bytes(self._sniff[: head_end + 4])
        if not head.startswith(b"POST "):
            self._pass_through(bytes(self._sniff))
            return
        lines = head.split(b"\r\n")
        length = 0
        kept = []
        for line in lines:
            name, sep, value = line.partition(b":")
            header = name.strip().lower() if sep else b""
            if header == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    length = MAX_BODY_BYTES + 1
                continue
            if header == b"transfer-encoding":
                self.length_required = True
                continue
            kept.append(line)
        if length > MAX_BODY_BYTES or self.length_required:
            self.body_too_large = not self.length_required
            self._pass_through(b"\r\n".join(kept))
            self._discard = True
            return
        body_start = head_end + 4
        if len(self._sniff) < body_start + length:
            return  # wait for the rest of the body
        self.http_body = bytes(self._sniff[body_start : body_start + length])
        rest = bytes(self._sniff[body_start + length :])
        self._pass_through(b"\r\n".join(kept) + rest)

    def _pass_through(self, data: bytes) -> None:
        self._sniff = None
        super().data_received(data)

    def form(self) -> Form:
        """The POST body as form fields (Twilio's webhook parameters)."""
        try:
            return Form(parse_qsl(self.http_body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            return Form([])


class Form(dict[str, str]):
    """Form fields, each name's last value as a dict, keeping every value of a repeated name
    too: Twilio's signature covers them all (``RequestValidator`` reads ``getlist``)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        super().__init__(pairs)
        self._all: dict[str, list[str]] = {}
        for name, value in pairs:
            self._all.setdefault(name, []).append(value)

    def getlist(self, name: str) -> list[str]:
        return self._all.get(name, [])


def respond(
    status: http.HTTPStatus, body: bytes | str, content_type: str = "text/plain; charset=utf-8"
) -> Response:
    data = body.encode() if isinstance(body, str) else body
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(data))),
            ("Connection", "close"),
        ]
    )
    return Response(status.value, status.phrase, headers, data)
