"""The tool runner's asyncio shell: the model's HTTP tool calls, run apart from the audio path.

Calls arrive on ``gw:tools`` (written by the worker that holds the call) and are taken through
one consumer group, so any instance may run any call. An instance keeps the calls it is running
pending under its name, refreshing them while they run; one that dies stops refreshing, and
another takes its calls over (``XAUTOCLAIM``) after ``OWNER_IDLE_MS`` and runs them again, with
the same ``Idempotency-Key``. A restarted instance with the same ``CONSUMER_NAME`` re-runs its
own pending calls at once. The answer goes to the call's ``ctl`` stream, which the worker
holding the call already reads, and the entry is acknowledged only then.

A slow or failing tool costs its call ``timeout_ms`` and nothing else: each call is its own
task, and the audio never passes through here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

import httpx
import redis.asyncio as aioredis
from prometheus_client import Counter, Histogram

from services.tool_runner.reports import ReportSender
from shared.agent import Tool
from shared.backoff import Backoff
from shared.runtime.lifecycle import run_service, serve_stage
from shared.runtime.observability import call_context, label, reject
from shared.runtime.redis_io import RETRYABLE, ensure_group, is_nogroup
from shared.runtime.settings import Settings
from shared.streams import (
    TOOL_CALLS_STREAM,
    TOOL_RUNNER_GROUP,
    CallKeys,
    StreamEntryError,
    ToolCall,
    ToolResult,
    decode_tool_call,
)
from shared.tool_requests import (
    RETRY_STATUSES,
    ToolAnswer,
    answer,
    build_request,
    check_arguments,
    failure,
    timed_out,
)

log = logging.getLogger("gateway.tools")

TOOL_CALLS = Counter(
    "gateway_tool_calls_total", "Tool calls run, by tool and outcome", ["tool", "outcome"]
)
TOOL_SECONDS = Histogram(
    "gateway_tool_seconds",
    "How long a tool call took, retries included",
    ["tool"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0),
)
READ_COUNT = 16
BLOCK_MS = 1000
MAX_CONCURRENT = 256  # calls one instance runs at once


class ToolRunner:
    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.tools: dict[str, Tool] = {t.name: t for t in settings.agent.tools if t.kind == "http"}
        self.consumer = settings.consumer_name
        self.idle_ms = settings.owner_idle_ms
        secret = settings.tools_signing_secret
        self.secret = secret.get_secret_value() if secret else None
        self.http = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        self.running: dict[bytes, asyncio.Task[None]] = {}  # by entry ID
        self.slots = asyncio.Semaphore(MAX_CONCURRENT)
        # End-of-call reports (POST_CALL_WEBHOOK_URL), sent from here too.
        self.reports = ReportSender(settings, redis, self.http)

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        return [self._take(), self._keep(), *self.reports.loops()]

    async def stop(self) -> None:
        """Stop taking calls; the ones still running stay pending for another instance."""
        await self.reports.stop()
        for task in self.running.values():
            task.cancel()
        if self.running:
            await asyncio.wait(list(self.running.values()), timeout=1.0)
        if self.running:
            # Idle at once: another instance takes them at its next pass.
            try:
                await self.redis.xclaim(
                    TOOL_CALLS_STREAM,
                    TOOL_RUNNER_GROUP,
                    self.consumer,
                    0,
                    list(self.running),
                    idle=self.idle_ms * 10,
                    justid=True,
                )
            except RETRYABLE as exc:
                log.warning("could not hand tool calls over: %s", exc)
        await self.http.aclose()

    # --- taking calls ----------------------------------------------------------------------------
    async def _take(self) -> None:
        """New calls, and after (re)start our own pending ones; survives Redis faults."""
        backoff = Backoff()
        start = b"0"  # first our own pending calls (a restart), then new ones
        while True:
            try:
                await ensure_group(self.redis, TOOL_CALLS_STREAM, TOOL_RUNNER_GROUP)
                while True:
                    reply: Any = await self.redis.xreadgroup(
                        TOOL_RUNNER_GROUP,  # type: ignore[arg-type]
                        self.consumer,
                        {TOOL_CALLS_STREAM: start},
                        count=READ_COUNT,
                        block=None if start == b"0" else BLOCK_MS,
                    )
                    entries = reply[0][1] if reply else []
                    for entry_id, fields in entries:
                        await self._start(entry_id, fields)
                    if start == b"0" and not entries:
                        start = b">"
                    elif start == b"0":
                        start = entries[-1][0]  # the rest of our pending ones
                    backoff.reset()
            except RETRYABLE as exc:
                log.warning("redis unavailable (%s)", exc)
            except Exception as exc:  # NOGROUP after Redis lost its data, a client fault
                if not is_nogroup(exc):
                    reject("tool_runner_loop_error")
                    log.warning("tool call loop error: %r", exc)
            start = b"0"
            await asyncio.sleep(backoff.next_delay())

    async def _keep(self) -> None:
        """Refresh the calls we run (so nobody takes them) and take over dead instances'."""
        backoff = Backoff()
        while True:
            await asyncio.sleep(self.idle_ms / 4000)
            try:
                if self.running:
                    await self.redis.xclaim(
                        TOOL_CALLS_STREAM,
                        TOOL_RUNNER_GROUP,
                        self.consumer,
                        0,
                        list(self.running),
                        justid=True,
                    )
                reply: Any = await self.redis.xautoclaim(
                    TOOL_CALLS_STREAM,
                    TOOL_RUNNER_GROUP,
                    self.consumer,
                    self.idle_ms,
                    "0-0",
                    count=READ_COUNT,
                )
                for entry_id, fields in reply[1]:
                    if entry_id not in self.running:
                        log.info("took over a tool call %r", entry_id)
                        await self._start(entry_id, fields)
                backoff.reset()
            except RETRYABLE as exc:
                log.warning("redis unavailable (%s)", exc)
                await asyncio.sleep(backoff.next_delay())
            except Exception as exc:  # NOGROUP: _take recreates the group
                if not is_nogroup(exc):
                    reject("tool_runner_keep_error")
                    log.warning("tool call upkeep error: %r", exc)

    async def _start(self, entry_id: bytes, fields: dict[bytes, bytes] | None) -> None:
        if entry_id in self.running:
            return
        try:
            if not fields:
                raise StreamEntryError("deleted")
            call = decode_tool_call(fields)
        except StreamEntryError as exc:
            reject(f"tool_call_{exc.reason}")
            log.warning("undecodable tool call %r: %s", entry_id, exc)
            await self._ack(entry_id)
            return
        await self.slots.acquire()
        task = asyncio.create_task(self._run(entry_id, call), name=f"tool-{call.call_id}")
        self.running[entry_id] = task
        task.add_done_callback(lambda _: self._done(entry_id))

    def _done(self, entry_id: bytes) -> None:
        self.running.pop(entry_id, None)
        self.slots.release()

    # --- one call ---------------------------------------------------------------------------------
    async def _run(self, entry_id: bytes, call: ToolCall) -> None:
        with call_context(call.call_sid, call.stream_sid):
            started = time.monotonic()
            tool = self.tools.get(call.name)
            if tool is None:
                result = failure(f"there is no HTTP tool named {call.name!r}")
            else:
                checked = check_arguments(tool, call.arguments)
                if isinstance(checked, ToolAnswer):
                    result = checked  # not sent anywhere: the model is told what is wrong
                else:
                    result = await self._call(tool, call, checked)
            seconds = time.monotonic() - started
            name = label(call.name)
            TOOL_CALLS.labels(name, result.outcome).inc()
            TOOL_SECONDS.labels(name).observe(seconds)
            log.info(
                "tool call done",
                extra={"tool": call.name, "outcome": result.outcome, "ms": round(seconds * 1000)},
            )
            await self._answer(call, result, int(seconds * 1000))
            await self._ack(entry_id)

    async def _call(self, tool: Tool, call: ToolCall, arguments: dict[str, Any]) -> ToolAnswer:
        """POST the call; connection errors and 502/503/504 are retried with backoff until the
        tool's ``timeout_ms`` is spent."""
        deadline = time.monotonic() + tool.timeout_ms / 1000
        backoff = Backoff(base_s=0.1, cap_s=1.0)
        request = build_request(tool, call, arguments, self.secret, int(time.time()))
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return timed_out(tool.timeout_ms)
            try:
                response = await self.http.post(
                    request.url, content=request.body, headers=request.headers, timeout=left
                )
                body = await response.aread()
            except httpx.TimeoutException:
                return timed_out(tool.timeout_ms)
            except httpx.TransportError as exc:  # refused, reset, DNS: worth another try
                log.info("tool %s unreachable (%s); retrying", call.name, type(exc).__name__)
            else:
                if response.status_code not in RETRY_STATUSES:
                    return answer(response.status_code, body)
                log.info("tool %s answered %d; retrying", call.name, response.status_code)
                last = answer(response.status_code, body)
                if deadline - time.monotonic() < 0.05:
                    return last
            await asyncio.sleep(min(backoff.next_delay(), max(0.0, deadline - time.monotonic())))

    async def _answer(self, call: ToolCall, result: ToolAnswer, duration_ms: int) -> None:
        """To the call's ``ctl``, which its worker reads; retried while Redis is away. A call
        whose keys are gone (it ended long ago) gets nothing: writing would recreate them."""
        keys = CallKeys.for_call(call.call_sid)
        entry = ToolResult(call.call_id, call.name, result.output, result.outcome, duration_ms)
        backoff = Backoff()
        while True:
            try:
                if not await self.redis.exists(keys.meta):
                    reject("tool_result_call_gone")
                    log.info("the call is gone; its tool result is dropped")
                    return
                await self.redis.xadd(keys.ctl, entry.encode())  # type: ignore[arg-type]
                return
            except RETRYABLE as exc:
                log.warning("could not write a tool result (%s); retrying", exc)
                await asyncio.sleep(backoff.next_delay())

    async def _ack(self, entry_id: bytes) -> None:
        try:
            await self.redis.xack(TOOL_CALLS_STREAM, TOOL_RUNNER_GROUP, entry_id)
        except RETRYABLE as exc:  # left pending: run again later, same Idempotency-Key
            log.warning("could not acknowledge a tool call: %s", exc)


async def run_tool_runner(
    settings: Settings, stop: asyncio.Event, redis: aioredis.Redis | None = None
) -> None:
    async def build(client: aioredis.Redis) -> ToolRunner:
        runner = ToolRunner(settings, client)
        log.info("tool runner ready", extra={"tools": sorted(runner.tools)})
        return runner

    await serve_stage("tool_runner", settings, stop, build, redis)


def main(settings: Settings) -> None:
    run_service("tool_runner", settings, lambda stop: run_tool_runner(settings, stop))
