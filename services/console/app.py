"""The console's HTTP API (FastAPI) and page: calls live and recent, read from Redis.

The console reads Redis only; what it changes goes through Redis too (a supervisor's hang-up is a
``hangup`` command on the call's ``cmd`` stream, which the edge carries out) or through Twilio's
REST API (placing an outbound call). Every ``/api`` route needs ``Authorization: Bearer
<CONSOLE_TOKEN>``; ``/healthz`` and the page's own files, which hold no call data, are open.

The routes live in routers with their dependencies (:mod:`services.console.deps`): the open
pages (:mod:`~services.console.pages`), reading calls (:mod:`~services.console.calls`), changing
them (:mod:`~services.console.actions`); every Redis verb in :mod:`~services.console.store`.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from pathlib import Path

import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.console import actions, calls, pages
from services.console.deps import Console
from services.console.store import ConsoleStore
from shared.runtime.redis_io import RETRYABLE
from shared.runtime.settings import Settings

log = logging.getLogger("gateway.console")

MAX_BODY_BYTES = 16 * 1024


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await _too_large(scope, receive, send, self.limit)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _BodyTooLarge:
            await _too_large(scope, receive, send, self.limit)


class _BodyTooLarge(Exception):
    pass


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    response = JSONResponse({"detail": f"request body larger than {limit} bytes"}, status_code=413)
    await response(scope, receive, send)


async def _redis_away(request: Request, exc: Exception) -> JSONResponse:
    log.warning("redis unavailable: %s", exc)
    return JSONResponse({"detail": "the console cannot reach Redis right now"}, 503)


def _swagger_assets() -> Path | None:
    """The vendored Swagger UI's files, when installed (nothing from the internet)."""
    try:
        # Imported by name: an optional package that ships no types; its one attribute is a path.
        bundle = importlib.import_module("swagger_ui_bundle")
    except ImportError:  # pragma: no cover - a test dependency; /openapi.json still works
        return None
    return Path(str(bundle.swagger_ui_path))


def create_app(
    settings: Settings, redis: aioredis.Redis, stopping: Callable[[], bool] = lambda: False
) -> FastAPI:
    """The console's app; ``stopping`` says the process got SIGTERM (``/readyz`` then fails)."""
    token = settings.console_token.get_secret_value().encode() if settings.console_token else b""
    if not token:
        raise ValueError("CONSOLE_TOKEN is required")
    app = FastAPI(
        title="Voice gateway console",
        description="Calls live and recent, outbound calls, recordings. Every /api route needs "
        "`Authorization: Bearer <CONSOLE_TOKEN>`.",
        version="1",
        docs_url=None,  # served by pages.docs from the vendored Swagger UI
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.mount("/static", StaticFiles(directory=pages.STATIC), name="static")
    swagger = _swagger_assets()
    if swagger is not None:
        app.mount("/docs-assets", StaticFiles(directory=swagger))
    app.state.console = Console(
        settings=settings,
        store=ConsoleStore(redis),
        token=token,
        recordings=Path(settings.recordings_dir) if settings.recordings_dir else None,
        stopping=stopping,
        have_swagger=swagger is not None,
    )
    for error in RETRYABLE:
        app.add_exception_handler(error, _redis_away)
    app.include_router(pages.router)
    app.include_router(calls.router)
    app.include_router(actions.router)
    return app
