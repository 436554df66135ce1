"""What a resumption needs from Redis: the answer to Twilio's ``<Connect action>`` (a grant only
for a stream known to have broken, once per break), and, before a resumed stream plays anything,
where the caller's hearing stopped, what is left of the reply, which replies a barge-in cleared,
and where the call's inbound entry IDs go on. The decisions are :mod:`shared.resumption`'s; this
reads and writes the entries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from shared.resumption import (
    HEARD_STALE_US,
    AfterStream,
    ReplayFinder,
    after_stream,
    cleared_responses,
    grant_fields,
    granted_field,
    last_mark,
    new_grant,
)
from shared.runtime.redis_io import fields_arg, hash_fields
from shared.streams import CallKeys, OutboundChunk

# Marks come back every 100 ms of reply, so the newest is nearly always in the first page; the
# bound keeps a call full of other control entries from costing a long scan.
_CTL_PAGE = 200
_CTL_PAGES = 5
_OUT_PAGE = 64
# How long an action request for a stream that shows no break waits for the evidence: a killed
# edge's last word goes stale HEARD_STALE_US after it (plus its write interval, a second).
BREAK_WAIT_S = HEARD_STALE_US / 1e6 + 1.5
_BREAK_POLL_S = 0.25


@dataclass(frozen=True, slots=True)
class ActionAnswer:
    """What the ``<Connect action>`` answers: ``answer`` (:data:`AfterStream`), the call's hash
    as last read, and the grant when the answer is ``resume``."""

    answer: AfterStream
    meta: dict[bytes, bytes]
    grant: str | None = None


async def answer_action(
    redis: aioredis.Redis, keys: CallKeys, call_status: str, now_us: Callable[[], int]
) -> ActionAnswer:
    """Decide the action's answer (:func:`~shared.resumption.after_stream`): a stream that shows
    no break yet is watched for up to :data:`BREAK_WAIT_S`; a grant is given by whichever edge
    sets the break's ``granted:`` field first, so a second request for the same break is hung up.
    Raises redis' errors (the caller hangs up)."""
    deadline = time.monotonic() + BREAK_WAIT_S
    while True:
        meta = await hash_fields(redis, keys.meta)
        answer = after_stream(meta, call_status, now_us())
        if answer != "not_broken" or time.monotonic() >= deadline:
            break
        await asyncio.sleep(_BREAK_POLL_S)
    if answer != "resume":
        return ActionAnswer(answer, meta)
    grant = new_grant()
    if not await redis.hsetnx(keys.meta, granted_field(meta), grant):
        return ActionAnswer("already_granted", meta)
    await redis.hset(keys.meta, mapping=fields_arg(grant_fields(grant, now_us())))
    return ActionAnswer("resume", meta, grant)


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where the resumed stream's reader starts (``cursors`` for ``cmd`` and ``out.pcmu``),
    the rest of the chunk that was playing (``first``), the cleared replies, the last mark
    heard (for the log) and the first millisecond of the new stream's ``in.pcmu`` IDs."""

    cursors: dict[bytes, bytes]
    first: OutboundChunk | None
    cleared: set[str]
    mark: tuple[str, int] | None
    inbound_ms: int


def _ms_of(entry_id: bytes) -> int:
    return int(entry_id.partition(b"-")[0])


async def _pages_newest_first(
    redis: aioredis.Redis, stream: bytes, page: int, pages: int | None = None
) -> Any:
    """Yield ``stream``'s entries newest first, a page at a time (at most ``pages``)."""
    high = b"+"
    read = 0
    while pages is None or read < pages:
        entries: Any = await redis.xrevrange(stream, max=high, min=b"-", count=page)
        read += 1
        if not entries:
            return
        yield entries
        if len(entries) < page:
            return
        high = b"(" + entries[-1][0]  # exclusive: the page after the oldest one read


async def resume_point(redis: aioredis.Redis, keys: CallKeys, now_ms: int) -> ResumePoint:
    mark = None
    async for page in _pages_newest_first(redis, keys.ctl, _CTL_PAGE, _CTL_PAGES):
        mark = last_mark(page)
        if mark is not None:
            break
    finder = ReplayFinder(mark)
    replay = None
    async for page in _pages_newest_first(redis, keys.out_pcmu, _OUT_PAGE):
        replay = finder.older(page)
        if replay is not None:
            break
    replay = replay or finder.exhausted()
    commands: Any = await redis.xrange(keys.cmd)
    inbound_ms = now_ms
    try:
        info: Any = await redis.xinfo_stream(keys.in_pcmu)
    except ResponseError:
        info = None  # no such stream: the first stream never wrote a frame
    if info:
        # IDs must keep rising whatever this edge's clock says against the first edge's (and
        # past any entry Redis has seen, trimmed or not).
        inbound_ms = max(now_ms, _ms_of(info["last-generated-id"]) + 1)
    cmd_cursor = commands[-1][0] if commands else b"0-0"
    return ResumePoint(
        {keys.cmd: cmd_cursor, keys.out_pcmu: replay.cursor},
        replay.first,
        cleared_responses(commands),
        mark,
        inbound_ms,
    )
