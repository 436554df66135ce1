"""One public address in front of several edges, as a load balancer puts them behind Twilio's
webhook and stream URLs: each TCP connection goes to the first edge that accepts it, in order,
so an edge that has died is passed over and the next request reaches a live one.

Bytes are relayed untouched (the Host header, and so Twilio's signed URL, stay the balancer's);
when either side closes or breaks, so does the other, as a real balancer does when a backend
dies. For the tests and the demo of a call surviving its edge; nothing here is on the audio path
of a real deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence


class Balancer:
    """Listens on ``host``:``port`` (0: a free port) and relays to ``backends`` (host, port)."""

    def __init__(self, backends: Sequence[tuple[str, int]], host: str = "127.0.0.1", port: int = 0):
        self.backends = list(backends)
        self.host = host
        self.port = port
        self.connections: list[int] = [0] * len(self.backends)  # accepted per backend
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task[None]] = set()
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()

    async def start(self) -> Balancer:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._relays):
            task.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def cut(self) -> int:
        """A network cut: every connection relayed now is dropped at once, on both sides, with
        no WebSocket close and no TCP goodbye (a reset). Returns how many were cut."""
        cut = 0
        for pair in list(self._open):
            for writer in pair:
                writer.transport.abort()
            cut += 1
        return cut

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        try:
            for index, (host, port) in enumerate(self.backends):
                try:
                    up_reader, up_writer = await asyncio.open_connection(host, port)
                except OSError:
                    continue  # that edge is down: the next one
                self.connections[index] += 1
                pair = (writer, up_writer)
                self._open.add(pair)
                try:
                    await _relay(reader, writer, up_reader, up_writer)
                finally:
                    self._open.discard(pair)
                return
        finally:
            self._relays.discard(task)
            writer.close()


async def _relay(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()

    directions = [
        asyncio.create_task(pipe(reader, up_writer)),
        asyncio.create_task(pipe(up_reader, writer)),
    ]
    try:
        await asyncio.wait(directions, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in directions:
            task.cancel()
        await asyncio.gather(*directions, return_exceptions=True)
        up_writer.close()  # and the caller's side is closed by _accept: a backend that died
        # ends its clients' connections with no WebSocket close frame, as Twilio sees it then
