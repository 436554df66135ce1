"""The console over the real stack, for the API and page tests: a real redis-server, the edge,
transcoder and worker in-process, the emulator, the Twilio REST stand-in, and the console."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import redis.asyncio as aioredis

from services.console.service import run_console
from shared.runtime.settings import load_settings
from sim.twilio_rest import TwilioRestStandIn
from tests.conftest import free_port
from tests.stack import InProcessStack, in_process_stack

TOKEN = "console-test-token-5f2c"
AUTH_TOKEN = "twilio-test-auth-token-91ab"
ACCOUNT_SID = "AC" + "0" * 31 + "1"
FROM_NUMBER = "+15550009999"


@dataclass
class ConsoleStack:
    stack: InProcessStack
    rest: TwilioRestStandIn
    console_url: str
    redis: aioredis.Redis

    def client(self, token: str | None = TOKEN) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(
            base_url=self.console_url, headers=headers, timeout=20, trust_env=False
        )


@contextlib.asynccontextmanager
async def console_stack(redis_url: str, **overrides: Any) -> AsyncIterator[ConsoleStack]:
    edge_port = free_port()
    rest_kwargs = overrides.pop("rest", {})
    async with TwilioRestStandIn(ACCOUNT_SID, AUTH_TOKEN, **rest_kwargs) as rest:
        settings: dict[str, Any] = {
            "edge_port": edge_port,
            "public_url": f"http://127.0.0.1:{edge_port}",
            "twilio_auth_token": AUTH_TOKEN,
            "twilio_account_sid": ACCOUNT_SID,
            "twilio_from_number": FROM_NUMBER,
            "twilio_api_base": rest.base_url,
            "console_token": TOKEN,
            "console_host": "127.0.0.1",
            "console_port": 0,
            **overrides,
        }
        async with in_process_stack(lambda: aioredis.from_url(redis_url), **settings) as stack:
            stop = asyncio.Event()
            port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            redis = aioredis.from_url(redis_url)
            task = asyncio.create_task(run_console(stack.settings, stop, port.set_result, redis))
            try:
                console_port = await asyncio.wait_for(port, 10)
                yield ConsoleStack(stack, rest, f"http://127.0.0.1:{console_port}", stack.redis)
            finally:
                stop.set()
                await asyncio.wait_for(task, 15)
                await redis.aclose()


@contextlib.asynccontextmanager
async def console_alone(
    redis_url: str, **overrides: Any
) -> AsyncIterator[tuple[str, aioredis.Redis]]:
    """The console by itself over ``redis_url`` (calls written there by the test, not served by
    any stage); yields its URL and a client."""
    settings = load_settings(
        redis_url=redis_url,
        console_token=TOKEN,
        console_host="127.0.0.1",
        console_port=0,
        **overrides,
    )
    stop = asyncio.Event()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    redis = aioredis.from_url(redis_url)
    task = asyncio.create_task(run_console(settings, stop, port.set_result))
    try:
        yield f"http://127.0.0.1:{await asyncio.wait_for(port, 10)}", redis
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await redis.aclose()


async def sse_events(
    client: httpx.AsyncClient,
    call_sid: str,
    last_event_id: str | None = None,
    until_kind: str = "ended",
    timeout: float = 30.0,
) -> list[dict[str, Any]]:
    """Read the call's server-sent events until one of ``until_kind`` (or the stream's end)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[dict[str, Any]] = []

    async def read() -> None:
        async with client.stream(
            "GET", f"/api/calls/{call_sid}/events", headers=headers
        ) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            current: dict[str, Any] = {}
            async for line in response.aiter_lines():
                if not line:
                    if "data" in current:
                        events.append(current)
                        if current["event"] == until_kind:
                            return
                    current = {}
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "id":
                    current["id"] = value
                elif name == "event":
                    current["event"] = value
                elif name == "data":
                    current["data"] = json.loads(value)

    await asyncio.wait_for(read(), timeout)
    return events
