"""The console's process: the FastAPI app on uvicorn, over one Redis client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable

import redis.asyncio as aioredis
import uvicorn

from services.console.app import create_app
from services.console.hardening import GuardedH11Protocol, SecurityHeaders
from shared.runtime.lifecycle import run_service
from shared.runtime.redis_io import connect
from shared.runtime.settings import EXIT_CONFIG_ERROR, Settings

log = logging.getLogger("gateway.console")


async def run_console(
    settings: Settings,
    stop: asyncio.Event,
    on_listening: Callable[[int], None] | None = None,
    redis: aioredis.Redis | None = None,
) -> None:
    """Serve until ``stop`` is set; ``on_listening`` gets the bound port (tests bind port 0)."""
    own_redis = redis is None
    redis = redis or connect(settings)
    app = SecurityHeaders(create_app(settings, redis, stop.is_set))  # outermost: error pages too
    config = uvicorn.Config(
        app,
        http=GuardedH11Protocol,  # a deadline over each request's head and body
        host=settings.console_host,
        port=settings.console_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=2,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    # The process's SIGTERM/SIGINT set ``stop`` (run_service); uvicorn must not take them over.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the console's server stopped at start")
            await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        log.info("console listening", extra={"port": port, "host": settings.console_host})
        if on_listening:
            on_listening(port)
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({stopper, task}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        if own_redis:
            await redis.aclose()


def main(settings: Settings) -> None:
    if settings.console_token is None or not settings.console_token.get_secret_value():
        print(
            "console: configuration error: CONSOLE_TOKEN is not set (every /api request must "
            "carry it as a bearer token; make run makes one up)",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_CONFIG_ERROR)
    run_service("console", settings, lambda stop: run_console(settings, stop))
