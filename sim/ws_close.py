"""A server connection that finishes a close the client started within tens of milliseconds.

The live API closes at once when its client closes. websockets' server answers a client's close
frame as soon as it reads it, but the answer queues behind whatever audio is already in the
socket's buffers; a client that stopped reading (the official ``openai`` client stops consuming
after it decides to close, and its websockets pauses reading once 16 messages are queued) never
reaches it and waits out its 10 s close timeout, as the server does for the client's TCP close.
The server cannot make a client read, so once the client's close frame is in and the connection
has not ended :data:`CLOSE_GRACE_S` later, it drops the TCP connection: the client's close then
returns at once (it has said all it meant to say; what it has not read is of no use to it).
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.server import ServerConnection

# A client that reads promptly completes the handshake in about a millisecond on loopback; the
# grace leaves room for a loaded machine while staying far below the 100 ms the issue allows.
CLOSE_GRACE_S = 0.05


class PromptCloseConnection(ServerConnection):
    """``serve(..., create_connection=PromptCloseConnection)``."""

    _close_watch: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.protocol.close_rcvd is not None and self._close_watch is None:
            self._close_watch = self.loop.call_later(CLOSE_GRACE_S, self._end_unless_closed)

    def _end_unless_closed(self) -> None:
        if not self.connection_lost_waiter.done():
            self.transport.abort()
