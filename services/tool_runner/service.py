"""The tool runner's asyncio shell: the model's HTTP tool calls, run apart from the audio path.

Calls arrive on ``gw:tools`` (written by the worker that holds the call) and are taken through
one consumer group, so any instance may run any call. An instance keeps the calls it is running
pending under its name, refreshing them while they run; one that dies stops refreshing, and
another takes its calls over (``XAUTOCLAIM``) after ``OWNER_IDLE_MS`` and runs them again, with
the same ``Idempotency-Key``. A restarted instance with the same ``CONSUMER_NAME`` re-runs its
own pending calls at once. On SIGTERM it takes no more calls, gives the ones running up to
:data:`FINISH_S` to finish, and hands the rest to a peer at once
(:func:`~shared.runtime.claims.hand_over`), which runs them again with the same key. The answer
goes to the call's ``ctl`` stream, which the worker holding the call already reads, and the entry
is acknowledged only then.

A slow or failing tool costs its call ``timeout_ms`` and nothing else: each call is its own
task, and the audio never passes through here. ``timeout_ms`` is one deadline over the whole
call (connecting, sending, the answer's headers and every byte of its body, the retries): a tool
that trickles its answer is cut at the deadline like one that never answers (httpx's own timeout
bounds each read, not the request). The body is read as it arrives and never past 64 KiB; a longer
one is not used (see :mod:`shared.tool_requests`).
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
from shared.runtime.claims import claim_handed_over, hand_over
from shared.runtime.lifecycle import run_service, serve_stage
from shared.runtime.observability import call_context, label, reject
from shared.runtime.redis_io import RETRYABLE, ensure_group, fields_arg, is_nogroup, read_group
from shared.runtime.settings import Settings
from shared.streams import (
    TOOL_CALLS_STREAM,
    TOOL_RUNNER_GROUP,
    CallKeys,
    StreamEntryError,
    ToolCall,
    ToolResult,
    decode_tool_call,
    handover_stream,
)
from shared.tool_requests import (
    RETRY_STATUSES,
    CappedBody,
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
# On SIGTERM, how long the calls under way may take to finish before they are handed over
# (within the lifecycle's STOP_GRACE_S, and at most half of OWNER_IDLE_MS, so that no peer
# takes a call over while it still runs here).
FINISH_S = 2.0


class ToolRunner:
    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.tools: dict[str, Tool] = {t.name: t for t in settings.agent.tools if t.kind == "http"}
        self.consumer = settings.consumer_name
        self.idle_ms = settings.owner_idle_ms
        secret = settings.tools_signing_secret
        self.secret = secret.get_secret_value() if secret else None
        # No httpx timeout: its timeouts bound each read, and _call's deadline bounds the whole.
        # Identity: the body is read raw and capped as it arrives; a compressed answer would be
        # inflated by httpx a network chunk at a time, megabytes from a few kilobytes.
        self.http = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=None,
            headers={"Accept-Encoding": "identity"},
        )
        self.running: dict[bytes, asyncio.Task[None]] = {}  # by entry ID
        self.slots = asyncio.Semaphore(MAX_CONCURRENT)
        # End-of-call reports (POST_CALL_WEBHOOK_URL), sent from here too.
        self.reports = ReportSender(settings, redis, self.http)
        self.handover = handover_stream(TOOL_CALLS_STREAM, TOOL_RUNNER_GROUP)
        self._loops: set[asyncio.Task[Any]] = set()  # _take and _keep, stopped first on SIGTERM

    def _loop_started(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._loops.add(task)

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        return [self._take(), self._keep(), *self.reports.loops()]

    def calls_held(self) -> int:
        return len(self.running)

    def unready(self) -> str | None:
        return "busy" if len(self.running) >= MAX_CONCURRENT else None

    async def stop(self) -> None:
        """Take no more calls; let the running ones finish within :data:`FINISH_S`; hand the
        rest to another instance at once."""
        await self.reports.stop()
        for loop in self._loops:  # no new calls, and no hand-over note read by ourselves
            loop.cancel()
        if self._loops:
            await asyncio.wait(self._loops, timeout=1.0)
        if self.running:
            try:
                await self._refresh()  # their idle clock starts again while they finish
            except RETRYABLE as exc:
                log.warning("could not refresh tool calls: %s", exc)
            finish_s = min(FINISH_S, self.idle_ms / 2000)
            await asyncio.wait(list(self.running.values()), timeout=finish_s)
        # Captured before cancelling: a cancelled task leaves ``running`` as it ends.
        unfinished = list(self.running)
        for task in self.running.values():
            task.cancel()
        if self.running:
            await asyncio.wait(list(self.running.values()), timeout=1.0)
        if unfinished:
            log.info("handing %d tool call(s) over", len(unfinished))
            try:
                await hand_over(
                    self.redis,
                    TOOL_CALLS_STREAM,
                    TOOL_RUNNER_GROUP,
                    self.consumer,
                    self.idle_ms,
                    unfinished,
                )
            except RETRYABLE as exc:  # they go to a peer after OWNER_IDLE_MS instead
                log.warning("could not hand tool calls over: %s", exc)
        await self.http.aclose()

    async def _refresh(self) -> None:
        if self.running:
            await self.redis.xclaim(
                TOOL_CALLS_STREAM,
                TOOL_RUNNER_GROUP,
                self.consumer,
                0,
                list(self.running),
                justid=True,
            )

    # --- taking calls ----------------------------------------------------------------------------
    async def _take(self) -> None:
        """New calls, calls a stopping peer handed over, and after (re)start our own pending
        ones; survives Redis faults."""
        self._loop_started()
        backoff = Backoff()
        while True:
            try:
                await ensure_group(self.redis, TOOL_CALLS_STREAM, TOOL_RUNNER_GROUP)
                await ensure_group(self.redis, self.handover, TOOL_RUNNER_GROUP)
                # Our own pending entries of both streams first (a restart), then new ones.
                cursors = {TOOL_CALLS_STREAM: b"0", self.handover: b"0"}
                while True:
                    history = cursors[TOOL_CALLS_STREAM] != b">"
                    reply = await read_group(
                        self.redis,
                        TOOL_RUNNER_GROUP,
                        self.consumer,
                        cursors,
                        count=READ_COUNT,
                        block=None if history else BLOCK_MS,
                    )
                    entries: list[Any] = []
                    more = False
                    for name, got in reply or []:
                        stream = name.encode() if isinstance(name, str) else name
                        if history and got:
                            cursors[stream], more = got[-1][0], True
                        if stream == self.handover:
                            entries += await claim_handed_over(
                                self.redis,
                                TOOL_CALLS_STREAM,
                                TOOL_RUNNER_GROUP,
                                self.consumer,
                                self.idle_ms,
                                got,
                            )
                        else:
                            entries += got
                    for entry_id, fields in entries:
                        await self._start(entry_id, fields)
                    if history and not more:
                        cursors = dict.fromkeys(cursors, b">")
                    backoff.reset()
            except RETRYABLE as exc:
                log.warning("redis unavailable (%s)", exc)
            except Exception as exc:  # NOGROUP after Redis lost its data, a client fault
                if not is_nogroup(exc):
                    reject("tool_runner_loop_error")
                    log.warning("tool call loop error: %r", exc)
            await asyncio.sleep(backoff.next_delay())

    async def _keep(self) -> None:
        """Refresh the calls we run (so nobody takes them) and take over dead instances'."""
        self._loop_started()
        backoff = Backoff()
        while True:
            await asyncio.sleep(self.idle_ms / 4000)
            try:
                await self._refresh()
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
        tool's ``timeout_ms`` is spent. The deadline covers each attempt whole, body included."""
        deadline = time.monotonic() + tool.timeout_ms / 1000
        backoff = Backoff(base_s=0.1, cap_s=1.0)
        request = build_request(tool, call, arguments, self.secret, int(time.time()))
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return timed_out(tool.timeout_ms)
            try:
                async with asyncio.timeout(left):
                    result = await self._post(call.name, request.url, request.body, request.headers)
            except (TimeoutError, httpx.TimeoutException):
                return timed_out(tool.timeout_ms)
            except httpx.TransportError as exc:  # refused, reset, DNS: worth another try
                log.info("tool %s unreachable (%s); retrying", call.name, type(exc).__name__)
            else:
                if result.status not in RETRY_STATUSES:
                    return result
                log.info("tool %s answered %d; retrying", call.name, result.status)
                if deadline - time.monotonic() < 0.05:
                    return result
            await asyncio.sleep(min(backoff.next_delay(), max(0.0, deadline - time.monotonic())))

    async def _post(self, name: str, url: str, body: bytes, headers: dict[str, str]) -> ToolAnswer:
        """One attempt. A 2xx answer's body is read as it arrives, as :class:`CappedBody` keeps
        it (the cap and a byte more at most: reading stops there and the connection is dropped);
        other statuses' bodies are not read, the model is told the status alone."""
        async with self.http.stream("POST", url, content=body, headers=headers) as response:
            status = response.status_code
            if not 200 <= status < 300:
                return answer(status, b"")
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                # Identity was asked for; inflating it here would undo the cap.
                reject("tool_answer_encoded")
                return failure(f"the tool's answer was {encoding}-encoded", status)
            capped = CappedBody()
            async for chunk in response.aiter_raw():
                if not capped.take(chunk):
                    reject("tool_answer_too_large")
                    log.warning("tool %s answered more than 64 KiB; not used", name)
                    break
            return answer(status, capped.body())

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
                await self.redis.xadd(keys.ctl, fields_arg(entry.encode()))
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
