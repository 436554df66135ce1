"""A small HTTP tool server for the tests and the demo: what an operator's tool endpoint does.

``python -m sim.tool_server --port 8099 [--secret S]``. Every request is recorded (method, path,
headers, raw body) and, with a secret, its ``X-Gateway-Signature`` checked (401 if wrong). The
path says how it answers:

* ``/order``: ``{"order": <arguments.order_id>, "status": "shipped", "eta": "tomorrow"}``
* ``/slow?ms=N``: the same after N ms
* ``/fail``: HTTP 500
* ``/flaky?times=N``: 503 for the first N requests of a call_id, then as ``/order``
* ``/big``: a 100 KiB answer
* ``/trickle?ms=N``: a 2xx's headers at once, then its body one byte every N ms (default 1000)
* ``/huge?mb=N``: a 2xx answer of N MiB (default 100), written as fast as it is read
* anything else: 404

How many body bytes each trickled or huge answer got written before it ended (finished, or the
gateway dropped the connection) is in ``sent``, in the order they ended.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

SIGNATURE_HEADER = "x-gateway-signature"


def signature_ok(secret: str, header: str, body: bytes, now_s: int) -> bool:
    """The receiver's recipe from docs/agent.md, written out here on its own (not the gateway's
    code): HMAC-SHA256 of "<t>.<raw body>", and t within 5 minutes of now."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    if not fields.get("t", "").isdigit() or abs(now_s - int(fields["t"])) > 300:
        return False
    mac = hmac.new(secret.encode(), fields["t"].encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest(mac.hexdigest(), fields.get("v1", ""))


@dataclass
class ToolRequestSeen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ToolServer:
    host: str = "127.0.0.1"
    port: int = 0
    secret: str | None = None
    requests: list[ToolRequestSeen] = field(default_factory=list)
    _server: asyncio.AbstractServer | None = None
    _seen: asyncio.Condition = field(default_factory=asyncio.Condition)
    _tries: dict[str, int] = field(default_factory=dict)
    sent: list[int] = field(default_factory=list)  # body bytes of each streamed answer

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> ToolServer:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sockets: Any = getattr(self._server, "sockets", ())
        self.port = int(sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[ToolRequestSeen]:
        async with asyncio.timeout(timeout), self._seen:
            await self._seen.wait_for(lambda: len(self.requests) >= count)
        return self.requests

    async def wait_sent(self, count: int, timeout: float = 10.0) -> list[int]:
        """Until ``count`` streamed answers have ended; their body bytes written."""
        async with asyncio.timeout(timeout), self._seen:
            await self._seen.wait_for(lambda: len(self.sent) >= count)
        return self.sent

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            seen = ToolRequestSeen(method, target, headers, body, time.time())
            async with self._seen:
                self.requests.append(seen)
                self._seen.notify_all()
            path = urlsplit(seen.path).path
            if path in ("/trickle", "/huge"):
                await self._stream(seen, writer)
                return
            status, answer = await self._answer(seen)
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(answer)}\r\nConnection: close\r\n\r\n".encode()
                + answer
            )
            await writer.drain()
        except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()

    async def _stream(self, seen: ToolRequestSeen, writer: asyncio.StreamWriter) -> None:
        """A body that takes its time or is huge: each piece is drained before the next, so
        ``sent`` counts what the peer's socket took (the loopback buffers hold a few MiB)."""
        query = parse_qs(urlsplit(seen.path).query)
        if urlsplit(seen.path).path == "/trickle":
            every, piece, total = int(query.get("ms", ["1000"])[0]) / 1000, b"x", 60
        else:
            every, piece, total = 0.0, b"x" * 65536, int(query.get("mb", ["100"])[0]) * 16
        written = 0
        try:
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                + f"Content-Length: {len(piece) * total}\r\nConnection: close\r\n\r\n".encode()
            )
            for _ in range(total):
                await writer.drain()
                if every:
                    await asyncio.sleep(every)
                writer.write(piece)
                written += len(piece)
            await writer.drain()
        except OSError:
            pass
        finally:
            async with self._seen:
                self.sent.append(written)
                self._seen.notify_all()

    async def _answer(self, seen: ToolRequestSeen) -> tuple[int, bytes]:
        if self.secret is not None:
            signature = seen.headers.get(SIGNATURE_HEADER, "")
            if not signature_ok(self.secret, signature, seen.body, int(time.time())):
                return 401, b'{"error": "bad signature"}'
        parts = urlsplit(seen.path)
        query = parse_qs(parts.query)
        try:
            request = json.loads(seen.body or b"{}")
        except ValueError:
            return 400, b'{"error": "not JSON"}'
        arguments = request.get("arguments") or {}
        found = json.dumps(
            {"order": arguments.get("order_id", ""), "status": "shipped", "eta": "tomorrow"}
        ).encode()
        if parts.path == "/order":
            return 200, found
        if parts.path == "/slow":
            await asyncio.sleep(int(query.get("ms", ["1000"])[0]) / 1000)
            return 200, found
        if parts.path == "/fail":
            return 500, b'{"error": "the order system is down"}'
        if parts.path == "/flaky":
            key = str(request.get("call_id"))
            self._tries[key] = self._tries.get(key, 0) + 1
            if self._tries[key] <= int(query.get("times", ["1"])[0]):
                return 503, b'{"error": "try again"}'
            return 200, found
        if parts.path == "/big":
            return 200, b'"' + b"x" * (100 * 1024) + b'"'
        return 404, b'{"error": "no such tool"}'


async def _main(args: argparse.Namespace) -> None:
    server = await ToolServer(args.host, args.port, args.secret).start()
    print(json.dumps({"msg": "tool server listening", "url": server.url}), flush=True)
    await asyncio.Future()


def main() -> None:
    parser = argparse.ArgumentParser(description="A local HTTP tool server for the demo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--secret")
    try:
        asyncio.run(_main(parser.parse_args()))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
