"""What the edge lends the parts that serve one of its routes: a small interface, no service.

A leaf of this package, like the realtime worker's ``interfaces`` (httpcore's ``interfaces.py``
is the model): the outbound-call callbacks (:mod:`services.twilio_edge.outbound`) depend on
:class:`CallbackHost` and never on :class:`~services.twilio_edge.service.Edge`, which imports
them: no import cycle.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import redis.asyncio as aioredis
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from services.twilio_edge.http import Form
from shared.runtime.settings import Settings


class CallbackHost(Protocol):
    """What a Twilio callback's handler may use: the edge's settings and Redis, its set of
    background tasks (REST requests under way, awaited when it stops), and its webhook guards."""

    @property
    def settings(self) -> Settings: ...

    @property
    def redis(self) -> aioredis.Redis: ...

    @property
    def background(self) -> set[asyncio.Task[None]]: ...

    def signed_callback(self, conn: ServerConnection, request: Request) -> Form | Response:
        """The callback's form (a signed POST), or the response that refuses it."""
        ...
