"""One reader per edge process over every call's reply streams (``cmd`` and ``out.pcmu``).

Each Media Stream registers a :class:`ReplyReading` (its two streams and where it is in each;
a resumed stream starts past the first stream's cursors). The reader reads every registered
call with one blocking ``XREAD`` naming all their streams, hands each call its entries with
:meth:`ReplyReading.take` (synchronous: it turns them into the Twilio messages to send, which
the call's own sender task sends), and reads again at once: while anything is ready the loop
never sleeps, so under load one round trip carries many calls' replies, and with no call
registered nothing is read at all.

Sending stays per call: a Twilio socket that is slow or closing (websockets then waits out its
close timeout) holds up its own call alone. A call whose sender is behind by
:data:`BACKLOG_LIMIT` messages is left out of the reads (its cursors do not move) until it
catches up. On a Redis Cluster a command's keys must share a slot and each call's keys have one
of their own (the CallSid hash tag), so calls are read in lanes, one per slot.

A call registered while a read of silent calls is in flight joins the next one, within
:data:`BLOCK_MS`; under load the read in flight returns at once and it joins at once.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from shared.backoff import Backoff
from shared.runtime.observability import reject
from shared.runtime.redis_io import RETRYABLE, outlasting_cancel

log = logging.getLogger("gateway.edge")

Entries = Sequence[tuple[bytes, dict[bytes, bytes]]]
READ_COUNT = 64  # entries per stream per read
# How long a read of silent calls blocks: how late a call added meanwhile joins the reads, and
# how often an edge whose calls are all silent reads (with no call it does not read at all).
BLOCK_MS = 100
BACKLOG_LIMIT = 256  # messages a call's sender may be behind before its reads pause


class ReplyReading(ABC):
    """One call's part in the shared read: ``cursors`` (stream -> last entry ID taken) say where
    its next read starts; :meth:`take` moves them."""

    def __init__(self, cursors: dict[bytes, bytes]) -> None:
        self.cursors = dict(cursors)
        self.lane: object = None  # set by the reader

    def wants_entries(self) -> bool:
        """Whether the next read should include this call (False: its sender is behind)."""
        return True

    @abstractmethod
    def take(self, read: list[tuple[bytes, Entries]]) -> None:
        """Act on the entries read for this call, per stream in the order read."""


class _Lane:
    def __init__(self) -> None:
        self.calls: dict[int, ReplyReading] = {}
        self.joined = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class ReplyReader:
    """Reads for every :class:`ReplyReading` added; see the module's docstring."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._keyslot = getattr(redis, "keyslot", None)  # a cluster client's
        self._lanes: dict[object, _Lane] = {}
        self.reads = 0  # round trips, for tests and benchmarks

    def add(self, call: ReplyReading) -> None:
        lane_key: object = None
        if self._keyslot is not None:
            lane_key = self._keyslot(next(iter(call.cursors)))
        call.lane = lane_key
        lane = self._lanes.get(lane_key)
        if lane is None:
            lane = self._lanes[lane_key] = _Lane()
        lane.calls[id(call)] = call
        lane.joined.set()
        if lane.task is None:
            lane.task = asyncio.create_task(self._serve(lane_key, lane), name="edge-replies")

    def remove(self, call: ReplyReading) -> None:
        """Stop reading for ``call``; what was read for it and not yet taken is dropped."""
        lane = self._lanes.get(call.lane)
        if lane is not None:
            lane.calls.pop(id(call), None)

    @property
    def calls(self) -> int:
        return sum(len(lane.calls) for lane in self._lanes.values())

    async def stop(self) -> None:
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, lane_key: object, lane: _Lane) -> None:
        try:
            await self._loop(lane)
        finally:
            lane.task = None
            if self._lanes.get(lane_key) is lane:  # no call left, or the edge stops
                del self._lanes[lane_key]

    async def _loop(self, lane: _Lane) -> None:
        backoff = Backoff()
        while lane.calls:
            lane.joined.clear()
            streams: dict[bytes, bytes] = {}
            owners: dict[bytes, ReplyReading] = {}
            for call in lane.calls.values():
                if call.wants_entries():
                    for stream, cursor in call.cursors.items():
                        streams[stream] = cursor
                        owners[stream] = call
            if not streams:  # every call's sender is behind: let them catch up
                try:
                    await asyncio.wait_for(lane.joined.wait(), BLOCK_MS / 1000)
                except TimeoutError:
                    pass
                continue
            try:
                reply: Any = await outlasting_cancel(
                    self.redis.xread(streams, count=READ_COUNT, block=BLOCK_MS)  # type: ignore[arg-type]  # bytes keys work
                )
            except RETRYABLE as exc:
                log.warning("redis unavailable for replies: %s", exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            except Exception as exc:  # a client fault must not leave every caller in silence
                reject("edge_reply_read_error")
                log.warning("reading replies failed (%r); retrying", exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            self.reads += 1
            backoff.reset()
            reads: dict[int, tuple[ReplyReading, list[tuple[bytes, Entries]]]] = {}
            for stream, entries in reply or ():
                owner = owners.get(stream)
                if owner is None or id(owner) not in lane.calls or not entries:
                    continue  # removed during the read
                reads.setdefault(id(owner), (owner, []))[1].append((stream, entries))
            for taker, read in reads.values():
                try:
                    taker.take(read)
                except Exception:  # a bug in one call's handling must not touch the others
                    log.exception("a call failed on its replies")
                    reject("edge_reply_take_failed")
                    self.remove(taker)
