"""One reader per stage instance over the input streams of all of its calls.

Each call a stage serves registers a :class:`CallReading` (its streams, where it is in each, what
to do with what was read). The reader reads every registered call's streams with one blocking
``XREAD`` naming them all, hands each call its entries, and sends the writes the calls queued in
one pipeline that also carries the next read: one round trip per batch for all calls. A lane
sends at most one round trip per ``batch_s`` (``REDIS_BATCH_MS``) and otherwise never sleeps
while anything is ready, so under load a read comes back with entries for many calls and the
round trips per frame fall as calls rise; with no call registered nothing is read at all.

A Redis Cluster refuses a command whose keys span slots, and each call's keys share one slot of
their own (the CallSid hash tag), so calls are read in lanes, one per slot (calls that share a
slot share a read): on a cluster, reading stays what it was, one read per call.

Guarantees to a call: its entries come in order, ``ctl``-like streams before the others of the same
read as the call lists them; an exception in its :meth:`CallReading.take` ends that call alone
(its :attr:`CallReading.outcome` raises it); a call that does not want entries (busy, backed up)
is left out of the reads until it does, without holding back the others; a call with no entry for
``silent_limit_s`` of successful reads is ended as ``"abandoned"`` (a Redis outage is not silence).
A call registered while a read is in flight joins the next one (at once under load, within
:data:`BLOCK_MS` when every other call of its lane is silent).
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.backoff import Backoff
from shared.runtime.observability import reject
from shared.runtime.redis_io import SOCKET_TIMEOUT_S, is_transient, streams_arg
from shared.runtime.resp import Command, RoundTrips, round_trips, xadd_command, xread_command

log = logging.getLogger("gateway.reader")

Entries = Sequence[tuple[bytes, dict[bytes, bytes]]]
Read = list[tuple[bytes, Entries]]  # one call's part of a reply: (stream, entries) in order

READ_COUNT = 64  # entries per stream per read
# A read blocks at most this long: also how late a call registered during a read of silent calls
# joins the reads.
BLOCK_MS = 250
# How often a lane looks for calls whose input fell silent (their limits are tens of seconds).
SILENCE_CHECK_S = 1.0


class Writes:
    """The writes one call queues while taking its entries: sent in the batch's pipeline (with
    every other call's and the next read), in the order queued."""

    __slots__ = ("commands",)

    def __init__(self) -> None:
        self.commands: list[Command] = []

    def xadd(
        self, stream: bytes, fields: Any, entry_id: bytes | None = None, maxlen: int | None = None
    ) -> None:
        """``XADD stream [MAXLEN ~ maxlen] entry_id|* fields``."""
        self.commands.append(xadd_command(stream, fields, entry_id, maxlen))

    def expire(self, key: bytes, seconds: int) -> None:
        self.commands.append(("EXPIRE", key, seconds))

    def hset(self, key: bytes, mapping: dict[bytes, bytes]) -> None:
        self.commands.append(("HSET", key, *[x for pair in mapping.items() for x in pair]))

    def __len__(self) -> int:
        return len(self.commands)


# How long a blocking read's reply may take past its BLOCK before the connection counts as dead.
def _reply_within(block_ms: int) -> float:
    return block_ms / 1000 + SOCKET_TIMEOUT_S


class CallReading(ABC):
    """One call's part in the shared read; each stage subclasses it.

    ``cursors``: where the next read of each stream starts (the reader never moves them; the
    subclass does, in :meth:`take` or :meth:`written`).
    """

    def __init__(self, call_id: str, cursors: dict[bytes, bytes], silent_limit_s: float) -> None:
        self.call_id = call_id
        self.cursors = dict(cursors)
        self.silent_limit_s = silent_limit_s
        self.last_entry_at = time.monotonic()
        self.outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.owned: dict[bytes, CallReading] = dict.fromkeys(self.cursors, self)
        self.lane: object = None  # set by the reader

    @property
    def active(self) -> bool:
        return not self.outcome.done()

    def read_from(self) -> dict[bytes, bytes]:
        """The streams to read for this call next (always those of ``cursors``), and from
        where."""
        return self.cursors

    def wants_entries(self) -> bool:
        """Whether the next read should include this call."""
        return True

    @abstractmethod
    def take(self, read: Read, writes: Writes) -> None:
        """Act on what was read for this call (in order), queueing any writes on ``writes``.
        Synchronous: nothing here may wait for another call."""

    def written(self, results: list[Any]) -> None:  # noqa: B027  # a hook: nothing by default
        """The round trip that carried :meth:`take`'s writes went through (``results``: the
        replies to those writes, errors included)."""

    def unwritten(self) -> None:  # noqa: B027  # a hook: nothing by default
        """The round trip that carried :meth:`take`'s writes failed: they will be read again."""

    def end(self, outcome: str) -> None:
        if not self.outcome.done():
            self.outcome.set_result(outcome)

    def fail(self, exc: BaseException) -> None:
        if not self.outcome.done():
            self.outcome.set_exception(exc)


class _Lane:
    def __init__(self) -> None:
        self.calls: dict[str, CallReading] = {}
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.trips: RoundTrips | None = None  # the lane's own connection, while it runs
        self.silence_checked_at = 0.0
        self.trip_at = 0.0  # when its last round trip was sent (loop time)


class SharedReader:
    """Reads for every :class:`CallReading` registered with it; see the module's docstring."""

    def __init__(
        self, redis: aioredis.Redis, name: str, block_ms: int = BLOCK_MS, batch_s: float = 0.0
    ) -> None:
        self.redis = redis
        self.name = name
        self.block_ms = block_ms
        self.batch_s = batch_s  # REDIS_BATCH_MS: at most one round trip per lane this often
        self._keyslot = getattr(redis, "keyslot", None)  # a cluster client's
        self._lanes: dict[object, _Lane] = {}
        self.reads = 0  # round trips that carried a read, for tests and benchmarks

    def add(self, call: CallReading) -> None:
        """Start reading for ``call`` (from its cursors)."""
        lane_key: object = None
        if self._keyslot is not None:
            lane_key = self._keyslot(next(iter(call.cursors)))
        call.lane = lane_key
        lane = self._lanes.get(lane_key)
        if lane is None:
            lane = self._lanes[lane_key] = _Lane()
        lane.calls[call.call_id] = call
        lane.wake.set()
        if lane.task is None:
            lane.task = asyncio.create_task(self._serve(lane_key, lane), name=f"{self.name}-read")

    def remove(self, call: CallReading) -> None:
        """Stop reading for ``call``; entries already read for it are dropped (its cursors say
        where a successor starts)."""
        call.end("removed")
        if not call.outcome.cancelled():
            call.outcome.exception()  # retrieved: the call's task reported it or is gone
        lane = self._lanes.get(call.lane)
        if lane is not None and lane.calls.get(call.call_id) is call:
            del lane.calls[call.call_id]
            lane.wake.set()

    def wake(self, call: CallReading) -> None:
        """``call`` wants entries again after a pause: let its lane know if it is waiting."""
        lane = self._lanes.get(call.lane)
        if lane is not None:
            lane.wake.set()

    async def stop(self) -> None:
        """Stop every lane (the stage is stopping; its calls were handed over)."""
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def calls(self) -> int:
        return sum(len(lane.calls) for lane in self._lanes.values())

    # --- one lane's loop --------------------------------------------------------------------------
    def _owners(self, lane: _Lane) -> tuple[dict[bytes, bytes], dict[bytes, CallReading]]:
        streams: dict[bytes, bytes] = {}
        owners: dict[bytes, CallReading] = {}
        for call in lane.calls.values():  # every read: kept to two dict updates a call
            if not call.outcome.done() and call.wants_entries():
                streams.update(call.read_from())
                owners.update(call.owned)
        return streams, owners

    async def _serve(self, lane_key: object, lane: _Lane) -> None:
        lane.trips = round_trips(self.redis, "read")
        try:
            await self._loop(lane, lane.trips)
        finally:
            lane.trips.close()
            lane.task = None
            if self._lanes.get(lane_key) is lane and not lane.calls:
                del self._lanes[lane_key]
            elif lane.calls:  # cancelled or crashed with calls left: they end with it
                for call in list(lane.calls.values()):
                    call.fail(RedisConnectionError(f"{self.name}: the shared read stopped"))

    async def _loop(self, lane: _Lane, trips: RoundTrips) -> None:
        backoff = Backoff()
        ahead: tuple[dict[bytes, CallReading], Any] | None = None  # read with the last writes
        while lane.calls:
            if ahead is not None:
                owners, reply = ahead
                ahead = None
            else:
                await self._pace(lane)
                lane.wake.clear()
                streams, owners = self._owners(lane)
                if not streams:  # every call is busy: wait for one to want entries
                    try:
                        await asyncio.wait_for(lane.wake.wait(), self.block_ms / 1000)
                    except TimeoutError:
                        pass
                    continue
                try:
                    read = xread_command(streams, self.block_ms, READ_COUNT)
                    [reply] = await trips.execute([read], _reply_within(self.block_ms))
                    if isinstance(reply, Exception):
                        raise reply
                except Exception as exc:
                    if not is_transient(exc) and await self._isolate(owners, exc):
                        continue  # the call whose streams Redis refused is ended; read on
                    delay = backoff.next_delay()
                    log.warning("redis read failed (%r); retrying in %.2fs", exc, delay)
                    await asyncio.sleep(delay)
                    continue
                self.reads += 1
            backoff.reset()
            ahead = await self._handle(lane, trips, owners, reply, backoff)

    async def _handle(
        self,
        lane: _Lane,
        trips: RoundTrips,
        owners: dict[bytes, CallReading],
        reply: Any,
        backoff: Backoff,
    ) -> tuple[dict[bytes, CallReading], Any] | None:
        """Hand one reply to its calls, send their writes with the next read; that read's reply."""
        now = time.monotonic()
        reads: dict[str, tuple[CallReading, Read]] = {}
        for stream, entries in reply:
            call = owners.get(stream)
            if call is None or not call.active or not entries:
                continue  # removed during the read: its successor re-reads from its cursors
            reads.setdefault(call.call_id, (call, []))[1].append((stream, entries))
        if now - lane.silence_checked_at >= SILENCE_CHECK_S:
            lane.silence_checked_at = now
            self._end_silent(owners, reads, now)
        commands: list[Command] = []
        taken: list[tuple[CallReading, int, int]] = []
        queued = 0
        for call, read in reads.values():
            call.last_entry_at = now
            writes = Writes()
            try:
                call.take(read, writes)
            except Exception as exc:  # a bug or bad state in one call must not touch the others
                log.exception("a call failed on its entries", extra={"call_sid": call.call_id})
                reject(f"{self.name}_call_failed")
                call.fail(exc)
                continue  # its half-queued writes go with it
            commands += writes.commands
            taken.append((call, queued, queued + len(writes)))
            queued += len(writes)
        if not queued:
            for call, _, _ in taken:
                call.written([])
            return None
        # The next read rides in the same round trip as these writes: a batch costs one send to
        # Redis rather than two (a loopback send runs Redis's side of TCP too).
        await self._pace(lane)
        streams, next_owners = self._owners(lane)
        if streams:
            commands.append(xread_command(streams, self.block_ms, READ_COUNT))
        try:
            results = await trips.execute(commands, _reply_within(self.block_ms))
        except Exception as exc:  # not only "server away": the batch is read and sent again
            await self._unwritten(taken, exc, backoff)
            return None
        ahead = results.pop() if streams else None
        for result in results:
            if is_transient(result):
                # A node failing over answered some writes with "not now": the batch is read
                # and written again (what did land is refused as a duplicate, by its ID).
                await self._unwritten(taken, RedisConnectionError(str(result)), backoff)
                return None
        for call, start, stop in taken:
            call.written(results[start:stop])
        if not streams:
            return None
        self.reads += 1
        if isinstance(ahead, BaseException):
            return None  # read again at the top of the loop
        return next_owners, ahead or []

    async def _pace(self, lane: _Lane) -> None:
        """Wait out what is left of ``batch_s`` since the lane's last round trip: under load the
        next one carries every frame that arrived meanwhile (with calls' frame clocks at random
        phases, a read sent at once finds one frame). Idle, the read goes at once and blocks."""
        loop = asyncio.get_running_loop()
        wait = lane.trip_at + self.batch_s - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        lane.trip_at = loop.time()

    @staticmethod
    def _end_silent(
        owners: dict[bytes, CallReading], reads: dict[str, tuple[CallReading, Read]], now: float
    ) -> None:
        for call in {id(c): c for c in owners.values()}.values():
            if call.call_id not in reads and call.active:
                if now - call.last_entry_at > call.silent_limit_s:
                    log.warning(
                        "no input for %.0fs; giving the call up",
                        call.silent_limit_s,
                        extra={"call_sid": call.call_id},
                    )
                    call.end("abandoned")

    async def _isolate(self, owners: dict[bytes, CallReading], exc: BaseException) -> bool:
        """A read refused as a whole (e.g. one call's key holds something else than a stream):
        read each call alone to find the ones Redis refuses, and end those; whether any was."""
        found = False
        for call in {id(c): c for c in owners.values()}.values():
            try:
                await self.redis.xread(streams_arg(call.read_from()), count=1)
            except Exception as refused:
                if is_transient(refused):
                    return found  # not this call's fault (Redis away): the loop retries
                found = True
                reject(f"{self.name}_bad_stream")
                log.warning(
                    "redis refuses to read a call's streams (%r); ending it",
                    refused,
                    extra={"call_sid": call.call_id},
                )
                call.fail(refused)
        return found

    async def _unwritten(
        self, taken: list[tuple[CallReading, int, int]], exc: BaseException, backoff: Backoff
    ) -> None:
        for call, _, _ in taken:
            call.unwritten()
        delay = backoff.next_delay()
        log.warning("redis unavailable (%s); retrying in %.2fs", exc, delay)
        await asyncio.sleep(delay)
