"""The end-of-call reports' sender, beside the tool calls in the tool runner.

Reports arrive on ``gw:reports`` (one per ended call, written by its worker) and are taken
through one consumer group, as tool calls are: an instance keeps the reports it is sending
pending under its name; one that dies leaves them pending, and another takes them over
(``XAUTOCLAIM``) after ``OWNER_IDLE_MS``; a restarted instance with the same ``CONSUMER_NAME``
sends its own pending ones again at once. A report is acknowledged only after a 2xx (or a
refusal for good), so it is delivered at least once; the receiver deduplicates on its
``Idempotency-Key``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from prometheus_client import Counter

from shared import call_view as cv
from shared.backoff import Backoff
from shared.call_report import (
    ReportRequest,
    build_report,
    decode_report_request,
    delivered,
    report_body,
    report_headers,
)
from shared.runtime.observability import call_context, reject
from shared.runtime.redis_io import RETRYABLE, ensure_group, is_nogroup, read_group
from shared.runtime.settings import Settings
from shared.streams import REPORTS_GROUP, REPORTS_STREAM, CallKeys, StreamEntryError

log = logging.getLogger("gateway.reports")

REPORTS = Counter(
    "gateway_reports_total",
    "End-of-call reports, by outcome (delivered, refused: a 4xx for good, retried: a try that "
    "failed and will be repeated, gone: the call's keys expired first)",
    ["outcome"],
)
READ_COUNT = 16
BLOCK_MS = 1000
REQUEST_TIMEOUT_S = 10.0


class ReportSender:
    def __init__(self, settings: Settings, redis: aioredis.Redis, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.redis = redis
        self.http = http
        self.url = settings.post_call_webhook_url
        self.consumer = settings.consumer_name
        self.idle_ms = settings.owner_idle_ms
        secret = settings.tools_signing_secret
        self.secret = secret.get_secret_value() if secret else None
        self.recordings = Path(settings.recordings_dir) if settings.recordings_dir else None
        self.sending: dict[bytes, asyncio.Task[None]] = {}

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        return [self._take(), self._keep()] if self.url else []

    async def stop(self) -> None:
        """Stop; reports being sent stay pending and are sent again (at least once)."""
        for task in self.sending.values():
            task.cancel()
        if self.sending:
            await asyncio.wait(list(self.sending.values()), timeout=1.0)

    async def _take(self) -> None:
        backoff = Backoff()
        start = b"0"  # our own pending reports first (a restart), then new ones
        while True:
            try:
                await ensure_group(self.redis, REPORTS_STREAM, REPORTS_GROUP)
                while True:
                    reply = await read_group(
                        self.redis,
                        REPORTS_GROUP,
                        self.consumer,
                        {REPORTS_STREAM: start},
                        count=READ_COUNT,
                        block=None if start != b">" else BLOCK_MS,
                    )
                    entries = reply[0][1] if reply else []
                    for entry_id, fields in entries:
                        self._start(entry_id, fields)
                    if start != b">":  # our pending ones, page by page, then new ones
                        start = entries[-1][0] if entries else b">"
                    backoff.reset()
            except RETRYABLE as exc:
                log.warning("redis unavailable (%s)", exc)
            except Exception as exc:  # NOGROUP after Redis lost its data, a client fault
                if not is_nogroup(exc):
                    reject("report_loop_error")
                    log.warning("report loop error: %r", exc)
            start = b"0"
            await asyncio.sleep(backoff.next_delay())

    async def _keep(self) -> None:
        """Refresh the reports being sent, and take over a dead instance's."""
        while True:
            await asyncio.sleep(self.idle_ms / 4000)
            try:
                if self.sending:
                    await self.redis.xclaim(
                        REPORTS_STREAM,
                        REPORTS_GROUP,
                        self.consumer,
                        0,
                        list(self.sending),
                        justid=True,
                    )
                reply: Any = await self.redis.xautoclaim(
                    REPORTS_STREAM,
                    REPORTS_GROUP,
                    self.consumer,
                    self.idle_ms,
                    "0-0",
                    count=READ_COUNT,
                )
                for entry_id, fields in reply[1]:
                    log.info("took over a report %r", entry_id)
                    self._start(entry_id, fields)
            except RETRYABLE as exc:
                log.warning("redis unavailable (%s)", exc)
            except Exception as exc:  # NOGROUP: _take recreates the group
                if not is_nogroup(exc):
                    reject("report_keep_error")
                    log.warning("report upkeep error: %r", exc)

    def _start(self, entry_id: bytes, fields: dict[bytes, bytes] | None) -> None:
        if entry_id in self.sending:
            return
        task = asyncio.create_task(self._send(entry_id, fields), name=f"report-{entry_id!r}")
        self.sending[entry_id] = task
        task.add_done_callback(lambda _: self.sending.pop(entry_id, None))

    async def _send(self, entry_id: bytes, fields: dict[bytes, bytes] | None) -> None:
        try:
            request = decode_report_request(fields or {})
        except StreamEntryError as exc:
            reject(f"report_{exc.reason}")
            await self._ack(entry_id)
            return
        with call_context(request.call_sid, ""):
            outcome = await self._deliver(request)
            REPORTS.labels(outcome).inc()
            log.info("report %s", outcome)
            await self._ack(entry_id)

    async def _deliver(self, request: ReportRequest) -> str:
        backoff = Backoff(base_s=0.2, cap_s=30.0)
        while True:
            try:
                report = await self._build(request)
            except RETRYABLE as exc:
                log.warning("redis unavailable (%s)", exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            if report is None:
                return "gone"
            body = report_body(report)
            headers = report_headers(request.call_sid, body, self.secret, int(time.time()))
            try:
                response = await self.http.post(
                    self.url, content=body, headers=headers, timeout=REQUEST_TIMEOUT_S
                )
                verdict = delivered(response.status_code)
                status = str(response.status_code)
            except httpx.HTTPError as exc:  # refused, reset, timed out: try again
                verdict, status = None, type(exc).__name__
            if verdict is not None:
                return "delivered" if verdict else "refused"
            REPORTS.labels("retried").inc()
            delay = backoff.next_delay()
            log.info("report not delivered (%s); again in %.1fs", status, delay)
            await asyncio.sleep(delay)

    async def _build(self, request: ReportRequest) -> dict[str, Any] | None:
        keys = CallKeys.for_call(request.call_sid)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.meta)
        pipe.xrange(keys.events)
        meta, events = await pipe.execute()
        origin = cv.Origin.from_meta(request.call_sid, meta)
        if origin is None:
            return None
        path = self.recordings / f"{request.call_sid}.wav" if self.recordings else None
        return build_report(
            origin,
            meta,
            cv.decode_events(events),
            request,
            self.settings.prices,
            str(path) if path is not None and path.is_file() else None,
        )

    async def _ack(self, entry_id: bytes) -> None:
        backoff = Backoff()
        while True:
            try:
                await self.redis.xack(REPORTS_STREAM, REPORTS_GROUP, entry_id)
                return
            except RETRYABLE as exc:
                log.warning("redis unavailable (%s)", exc)
                await asyncio.sleep(backoff.next_delay())
