"""Opening one Realtime session: the socket, driven by the pure :mod:`shared.realtime_handshake`.

The handshake decides (which event to send, whether the session is ready, whether to try the
other dialect or give up); this shell only connects, moves messages and closes.
"""

from __future__ import annotations

import asyncio
import logging

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from shared.realtime_dialect import RealtimeDialect
from shared.realtime_handshake import (
    DialectMemory,
    Dropped,
    Ignored,
    Ready,
    RealtimeHandshake,
    Refused,
    SendText,
    SwitchDialect,
)
from shared.runtime.observability import BETA_RETIRED, reject
from shared.runtime.settings import Settings

log = logging.getLogger("gateway.worker")


class SessionRefused(Exception):
    """The server will not accept our session (every dialect allowed refused, auth, a bad
    update): reconnecting would be refused the same way."""


async def connect(
    settings: Settings, handshake: RealtimeHandshake, api_key: str
) -> ClientConnection:
    request = handshake.connect_request(settings.realtime_url, settings.realtime_model, api_key)
    return await websockets.connect(
        request.url,
        additional_headers=request.headers,
        max_size=16 * 1024 * 1024,
        # Base64 audio barely compresses; deflate cost more CPU than the whole hop.
        compression=None,
        open_timeout=settings.realtime_open_timeout_ms / 1000,
        ping_interval=20,
        ping_timeout=20,
        # A close waits for the server's close frame, which may sit behind reply audio nobody
        # reads any more (the call was handed over or hung up): don't hold the call's task, or
        # a shutdown, for websockets' default 10 s.
        close_timeout=1.0,
    )


async def open_session(
    settings: Settings,
    handshake: RealtimeHandshake,
    api_key: str,
    dialects: DialectMemory | None = None,
) -> tuple[ClientConnection, RealtimeDialect]:
    """A configured session, switching dialects when the handshake says so; ``dialects`` (the
    process's memory) learns of a retired beta and of the dialect accepted.

    Raises :class:`SessionRefused`, or what connecting raises (OSError, TimeoutError,
    InvalidHandshake, ConnectionClosed) for a failure worth retrying later.
    """
    timeout = settings.realtime_open_timeout_ms / 1000
    while True:
        ws = await connect(settings, handshake, api_key)
        try:
            step = await asyncio.wait_for(_handshake(ws, handshake), timeout)
        except BaseException:
            await ws.close()
            raise
        if isinstance(step, Ready):
            if dialects is not None:
                dialects.accepted(step.dialect)
            return ws, step.dialect
        await ws.close()
        if isinstance(step, Refused):
            raise SessionRefused(step.reason)
        assert isinstance(step, SwitchDialect)
        if step.beta_retired:
            BETA_RETIRED.inc()
            if dialects is None or dialects.learn(step):  # once per process
                log.warning(
                    "the Realtime API retired the beta dialect (combo B); going on with GA "
                    "(combo A) for this and later calls: %s",
                    step.reason,
                )
        else:
            log.warning("realtime dialect switch to %s: %s", step.dialect.combo.name, step.reason)
        handshake = handshake.next_attempt()


async def _handshake(ws: ClientConnection, handshake: RealtimeHandshake) -> object:
    try:
        while True:
            for step in handshake.receive(await ws.recv()):
                if isinstance(step, SendText):
                    await ws.send(step.text)
                elif isinstance(step, Ignored):
                    reject("realtime_bad_event")
                else:
                    return step
    except ConnectionClosed as exc:  # while waiting or while sending the update
        code = exc.rcvd.code if exc.rcvd else 1006
        step = handshake.closed(code, exc.rcvd.reason if exc.rcvd else "")
        if isinstance(step, Dropped):
            raise  # an ordinary drop: the caller retries with backoff
        return step
