"""Every Redis verb the console uses, behind one typed object: what its routes read and write.

The routes see calls (hashes, stream entries) and never a Redis client; how a call's keys are
read in one round trip lives here. Stream entries are ``(entry ID, fields)`` pairs of bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from shared.runtime.redis_io import RETRYABLE, fields_arg, hash_fields
from shared.streams import (
    DIALED_STREAM,
    META_DIALED_FROM,
    META_DIALED_TO,
    META_DIALED_US,
    META_ENDED,
    CallDialed,
    CallEvent,
    CallKeys,
    HangUp,
)

Entry = tuple[bytes, dict[bytes, bytes]]
SUMMARY_EVENTS = 20  # first and last entries of a call's events read for its line in the list


class ConsoleStore:
    """The console's view of Redis (a bytes client)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def answers(self, timeout_s: float = 1.0) -> bool:
        """Whether Redis answers a PING in time."""
        try:
            return bool(await asyncio.wait_for(self.redis.ping(), timeout_s))
        except (*RETRYABLE, TimeoutError):
            return False

    async def newest(self, streams: Sequence[bytes], high: str, limit: int) -> list[list[Entry]]:
        """Up to ``limit`` entries of each stream, newest first, below ``high``."""
        pipe = self.redis.pipeline(transaction=False)
        for stream in streams:
            pipe.xrevrange(stream, max=high, min="-", count=limit)
        pages: list[list[Entry]] = await pipe.execute()
        return pages

    async def heads(
        self, call_sids: Sequence[str]
    ) -> list[tuple[dict[bytes, bytes], list[Entry], list[Entry]]]:
        """For each call: its hash, its first and its last ``SUMMARY_EVENTS`` events."""
        pipe = self.redis.pipeline(transaction=False)
        for call_sid in call_sids:
            keys = CallKeys.for_call(call_sid)
            pipe.hgetall(keys.meta)
            pipe.xrange(keys.events, count=SUMMARY_EVENTS)
            pipe.xrevrange(keys.events, count=SUMMARY_EVENTS)
        replies: list[Any] = await pipe.execute()
        return [(replies[i], replies[i + 1], replies[i + 2]) for i in range(0, len(replies), 3)]

    async def meta(self, keys: CallKeys) -> dict[bytes, bytes]:
        return await hash_fields(self.redis, keys.meta)

    async def streams(
        self, keys: CallKeys
    ) -> tuple[list[Entry], list[Entry], list[Entry], list[Entry]]:
        """A call's events, commands, caller audio and reply audio, as the streams hold them."""
        pipe = self.redis.pipeline(transaction=False)
        for key in (keys.events, keys.cmd, keys.in_pcmu, keys.out_pcmu):
            pipe.xrange(key)
        events, commands, inbound, outbound = await pipe.execute()
        return events, commands, inbound, outbound

    async def events_after(self, keys: CallKeys, cursor: bytes, block_ms: int) -> list[Entry]:
        """A call's events after ``cursor``, waiting up to ``block_ms`` for some."""
        reply: Any = await self.redis.xread({keys.events: cursor}, count=200, block=block_ms)
        entries: list[Entry] = reply[0][1] if reply else []
        return entries

    async def is_over(self, keys: CallKeys) -> bool:
        """The call has ended, or its keys are gone."""
        return not await self.redis.exists(keys.meta) or await self.redis.hexists(
            keys.meta, META_ENDED
        )

    async def record_dialed(self, dialed: CallDialed, *, meta_ttl_s: int, keep_ms: int) -> None:
        """A placed call: its hash (who, when) and its entry in the list of placed calls, which
        keeps it no longer than ``keep_ms``."""
        keys = CallKeys.for_call(dialed.call_sid)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(
            keys.meta,
            mapping={
                META_DIALED_US: dialed.created_us,
                META_DIALED_TO: dialed.to,
                META_DIALED_FROM: dialed.from_,
            },
        )
        pipe.expire(keys.meta, meta_ttl_s)
        pipe.xadd(
            DIALED_STREAM,
            fields_arg(dialed.encode()),
            minid=str(dialed.created_us // 1000 - keep_ms),
            approximate=True,
        )
        await pipe.execute()

    async def hang_up(self, keys: CallKeys) -> None:
        """A supervisor's hang-up: the command the edge carries out, and the call's event."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(keys.cmd, fields_arg(HangUp("supervisor_hung_up").encode()))
        supervisor = CallEvent("supervisor", {"action": "hangup"}).encode()
        pipe.xadd(keys.events, fields_arg(supervisor))
        await pipe.execute()
