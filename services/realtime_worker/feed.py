"""How the worker reads a call's input streams: the one place entries are read from Redis.

Today one blocking ``XREAD`` per call over its ``ctl`` and ``in.pcm`` (both in the call's hash
slot), handing each batch to the call
(:meth:`~services.realtime_worker.call.RealtimeCall.on_entries`).
Reading all of an instance's calls at once changes this module alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from shared.backoff import Backoff
from shared.runtime.redis_io import RETRYABLE, outlasting_cancel

if TYPE_CHECKING:
    from services.realtime_worker.call import RealtimeCall

log = logging.getLogger("gateway.worker")

READ_COUNT = 64
BLOCK_MS = 1000
# A live Twilio stream sends 50 frames a second even in silence; this long without any input
# means the edge died without ending the call.
CALL_SILENT_LIMIT_S = 30.0


async def feed(redis: aioredis.Redis, call: RealtimeCall) -> str:
    """Feed the call until its entries end it (the reason) or its input falls silent."""
    silent_since = time.monotonic()
    backoff = Backoff()
    while True:
        try:
            reply: Any = await outlasting_cancel(
                redis.xread(call.streams(), count=READ_COUNT, block=BLOCK_MS)  # type: ignore[arg-type]
            )
        except RETRYABLE as exc:
            log.warning("redis unavailable (%s)", exc)
            await asyncio.sleep(backoff.next_delay())
            continue
        backoff.reset()
        now = time.monotonic()
        if not reply:
            if now - silent_since > CALL_SILENT_LIMIT_S:
                return "abandoned"
            continue
        silent_since = now
        for stream, entries in reply:
            ended = await call.on_entries(stream, entries)
            if ended:
                return ended
        await call.save_cursors_now_and_then()
