"""Which instance of a stage serves which call: per-call streams, calls assigned by consumer group.

Why this pattern (docs/architecture.md, "Who serves which call") rather than partitioned
streams: a call's frames must be handled in order by one transcoder and one worker, each holding
per-call state (resampler history, the OpenAI socket). With a consumer group on the lifecycle
stream, Redis itself hands each new call to exactly one instance; the instance owns the call while
the lifecycle entry stays pending under its name; ownership moves by ``XAUTOCLAIM`` once the owner
stops refreshing it, and a restarted instance with the same consumer name re-reads its own pending
entries at once. Scaling out is starting another process: no shard map to rebalance. Per-call
streams need not cost a read per call: each stage reads all of its calls' streams in one
``XREAD`` (:mod:`shared.runtime.stream_reader`; per slot on a cluster); the choice stays behind
:class:`OwnedCalls`.

Lease timing: an owner refreshes its claims every ``idle_ms / 4``; another instance takes a call
over after ``idle_ms`` without a refresh. Work on a lost call stops at the next refresh.

Hand-over on a clean stop (SIGTERM): a peer takes the calls at once, not after ``idle_ms``.
Redis has no verb that gives a pending entry back to the group for the next ``XREADGROUP >``,
and a copy of the lifecycle entry would reach every stage's group, not only ours. So the
stopping instance (1) makes its entries look idle for ``10 * idle_ms`` (``XCLAIM ... IDLE``): any
peer's next ``XAUTOCLAIM`` pass takes them, the fallback; and (2) adds one note per entry to the
group's hand-over stream (:func:`~shared.streams.handover_stream`, same cluster slot), which each
instance reads in the same blocking ``XREADGROUP`` as new calls: the note wakes one blocked peer,
which ``XCLAIM``s that entry (only if still idle past ``idle_ms``, so a call already taken is not
taken twice) and starts it. Notes are spread over the peers as Redis serves blocked readers in
turn. The stopping instance first stops its own reading, so it cannot be handed its own notes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from shared.backoff import Backoff
from shared.runtime.observability import RECOVERED, reject
from shared.runtime.redis_io import RETRYABLE, ensure_group, fields_arg, is_nogroup, read_group
from shared.streams import (
    HANDOVER_MAXLEN,
    LIFECYCLE_STREAM,
    CallStarted,
    StreamEntryError,
    decode_handover,
    decode_lifecycle,
    encode_handover,
    handover_stream,
    lifecycle_streams,
)

log = logging.getLogger("gateway.claims")


Entry = tuple[bytes, dict[bytes, bytes] | None]  # a stream entry as redis-py gives it


async def hand_over(
    redis: aioredis.Redis,
    stream: bytes,
    group: bytes,
    consumer: str,
    idle_ms: int,
    entry_ids: list[bytes],
) -> None:
    """Give ``consumer``'s pending ``entry_ids`` of ``stream`` to the group's other consumers:
    each looks idle for ``10 * idle_ms`` (any peer's next ``XAUTOCLAIM`` takes it) and a note on
    the group's hand-over stream wakes a blocked peer to take it now
    (:func:`claim_handed_over`). Call once ``consumer`` reads no more."""
    if not entry_ids:
        return
    await redis.xclaim(
        stream, group, consumer, 0, list[Any](entry_ids), idle=idle_ms * 10, justid=True
    )
    notes = handover_stream(stream, group)
    pipe = redis.pipeline(transaction=False)
    for entry_id in entry_ids:
        pipe.xadd(
            notes,
            fields_arg(encode_handover(entry_id)),
            maxlen=HANDOVER_MAXLEN,
            approximate=True,
        )
    await pipe.execute()


async def claim_handed_over(
    redis: aioredis.Redis,
    stream: bytes,
    group: bytes,
    consumer: str,
    idle_ms: int,
    notes: list[Entry],
) -> list[Entry]:
    """The entries of ``stream`` these hand-over notes name, now ``consumer``'s: only those
    still idle past ``idle_ms`` (a peer that took one first keeps it). The notes are
    acknowledged; an undecodable one is counted and dropped."""
    entry_ids: list[bytes] = []
    for _, fields in notes:
        try:
            entry_ids.append(decode_handover(fields or {}))
        except StreamEntryError as exc:
            reject(f"handover_{exc.reason}")
            log.warning("undecodable hand-over note: %s", exc)
    taken: list[Entry] = []
    if entry_ids:
        reply: Any = await redis.xclaim(stream, group, consumer, idle_ms, list[Any](entry_ids))
        taken = reply
    if notes:
        await redis.xack(handover_stream(stream, group), group, *[n for n, _ in notes])
    return taken


@dataclass(frozen=True, slots=True)
class Claim:
    entry_id: bytes
    call: CallStarted
    recovered: bool  # taken over from another instance, or re-read after our own restart


# What a call's run returns when the call is not over but moves to another instance (a draining
# worker): its claim is handed over rather than released.
HANDED_OVER = "handed_over"

RunCall = Callable[[Claim], Awaitable[object]]


class CallClaims:
    """The Redis side of call ownership for one stage (consumer group) and one instance."""

    def __init__(
        self,
        redis: aioredis.Redis,
        group: bytes,
        consumer: str,
        idle_ms: int,
        stream: bytes = LIFECYCLE_STREAM,
    ) -> None:
        self.redis = redis
        self.group = group
        self.consumer = consumer
        self.idle_ms = idle_ms
        self.stream = stream
        self.handover = handover_stream(stream, group)

    async def ensure_group(self) -> None:
        await ensure_group(self.redis, self.stream, self.group)
        await ensure_group(self.redis, self.handover, self.group)

    def _decode(self, entries: list[Entry], recovered: bool) -> tuple[list[Claim], list[bytes]]:
        claims: list[Claim] = []
        junk: list[bytes] = []
        for entry_id, fields in entries:
            if not fields:  # deleted or trimmed while pending
                junk.append(entry_id)
                continue
            try:
                claims.append(Claim(entry_id, decode_lifecycle(fields), recovered))
            except StreamEntryError as exc:
                reject(f"lifecycle_{exc.reason}")
                log.warning("undecodable lifecycle entry %r: %s", entry_id, exc)
                junk.append(entry_id)
        return claims, junk

    async def _read(self, start: bytes, block_ms: int | None, recovered: bool) -> list[Claim]:
        # Always with COUNT: BLOCK without COUNT misbehaves on some servers (fakeredis moves
        # entries to the pending list without returning them; docs/realtime.md, hazards).
        reply = await read_group(
            self.redis,
            self.group,
            self.consumer,
            {self.stream: start, self.handover: start},
            count=64,
            block=block_ms,
        )
        claims: list[Claim] = []
        for name, entries in reply or []:
            if _name(name) == self.handover:
                claims.extend(await self._take_handed_over(entries))
                continue
            got, junk = self._decode(entries, recovered)
            claims.extend(got)
            if junk:
                await self.redis.xack(self.stream, self.group, *junk)
        return claims

    async def _take_handed_over(self, notes: list[Entry]) -> list[Claim]:
        taken = await claim_handed_over(
            self.redis, self.stream, self.group, self.consumer, self.idle_ms, notes
        )
        claims, junk = self._decode(taken, recovered=True)
        if junk:
            await self.redis.xack(self.stream, self.group, *junk)
        return claims

    async def pending_mine(self) -> list[Claim]:
        """Calls pending under this consumer's name: ours from before a restart."""
        return await self._read(b"0", None, recovered=True)

    async def take_unassigned(self, block_ms: int) -> list[Claim]:
        """Wait up to ``block_ms`` for calls not yet given to any instance of this stage."""
        return await self._read(b">", block_ms, recovered=False)

    async def refresh(self, entry_ids: list[bytes]) -> set[bytes]:
        """Renew our claims; return the entries that another instance has taken from us."""
        if not entry_ids:
            return set()
        pending = await self.redis.xpending_range(
            self.stream,
            self.group,
            min="-",
            max="+",
            count=max(1000, 2 * len(entry_ids)),
            consumername=self.consumer,
        )
        still_mine = {p["message_id"] for p in pending}
        lost = {e for e in entry_ids if e not in still_mine}
        keep = [e for e in entry_ids if e in still_mine]
        if keep:
            await self.redis.xclaim(
                self.stream, self.group, self.consumer, 0, list[Any](keep), justid=True
            )
        return lost

    async def take_over(self) -> list[Claim]:
        """Claim calls whose owner has not refreshed them for ``idle_ms``."""
        claims: list[Claim] = []
        start = b"0-0"
        while True:
            reply = await self.redis.xautoclaim(
                self.stream, self.group, self.consumer, self.idle_ms, start, count=64
            )
            start, entries = reply[0], reply[1]
            got, junk = self._decode(entries, recovered=True)
            claims.extend(got)
            if junk:
                await self.redis.xack(self.stream, self.group, *junk)
            if start in (b"0-0", "0-0") or not entries:
                return claims

    async def release(self, entry_id: bytes) -> None:
        """The call is over for this stage."""
        await self.redis.xack(self.stream, self.group, entry_id)

    async def hand_over(self, entry_ids: list[bytes]) -> None:
        """Give our calls to the peers: each looks abandoned (any peer's next ``XAUTOCLAIM``
        pass takes it) and a note on the hand-over stream wakes a blocked peer to take it now.
        Call only once this instance reads no more (it could be handed its own notes)."""
        await hand_over(self.redis, self.stream, self.group, self.consumer, self.idle_ms, entry_ids)


class OwnedCalls:
    """Runs one task per call this instance owns, for the lifetime of its claim.

    One control loop per lifecycle partition (a blocking group read cannot span cluster slots).
    ``run_call`` returns when the call is over for this stage (the claim is then released); it is
    cancelled when the claim is lost or the service stops (the claim then stays pending for a
    successor).
    """

    def __init__(self, claims: CallClaims | Sequence[CallClaims], run_call: RunCall) -> None:
        self.partitions = [claims] if isinstance(claims, CallClaims) else list(claims)
        self.run_call = run_call
        self.tasks: dict[str, asyncio.Task[None]] = {}  # by CallSid
        self.owned: dict[str, tuple[CallClaims, bytes]] = {}
        self._successors: dict[str, tuple[CallClaims, Claim]] = {}  # waiting for a task to stop
        self._stopping = False
        self._setup_done = 0
        self._loops: list[asyncio.Future[None]] = []
        self._keeping: asyncio.Future[None] | None = None  # refreshing the claims while draining
        self._refreshing = asyncio.Lock()  # a drained call's hand-over waits for a refresh
        self.ready = asyncio.Event()

    def _start(self, claims: CallClaims, claim: Claim) -> None:
        if self._stopping:
            # Stopping: take nothing (not even our own calls, handed over a moment ago and
            # idle enough for a take-over pass of our own); another instance runs them.
            return
        sid = claim.call.call_sid
        running = self.tasks.get(sid)
        if running is not None:
            if self.owned[sid][1] != claim.entry_id:
                # A new lifecycle entry for a call in hand: the edge announced it again because
                # Redis lost it. The old task's streams and claim are gone; the new one starts
                # once the old one has stopped, rather than when this claim would go idle.
                self._successors[sid] = (claims, claim)
                running.cancel()
            return
        if claim.recovered:
            RECOVERED.inc()
            log.info("took over call %s", sid, extra={"call_sid": sid})
        self.owned[sid] = (claims, claim.entry_id)
        self.tasks[sid] = asyncio.create_task(self._run(claims, claim), name=f"call-{sid}")

    async def _run(self, claims: CallClaims, claim: Claim) -> None:
        sid = claim.call.call_sid
        try:
            if await self.run_call(claim) == HANDED_OVER:
                # Only once this instance reads no more (stop_taking): it is not handed its own.
                # Not while a refresh is under way, which would make the entry look busy again
                # (the peer's XCLAIM would skip it); and no refresh renews it afterwards.
                async with self._refreshing:
                    self.owned.pop(sid, None)
                    await claims.hand_over([claim.entry_id])
                return
            backoff = Backoff()
            while True:
                try:
                    await claims.release(claim.entry_id)
                    break
                except RETRYABLE as exc:
                    log.warning("release failed, retrying: %s", exc)
                    await asyncio.sleep(backoff.next_delay())
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in one call must not stop the others; the claim is kept
            log.exception("call task failed", extra={"call_sid": sid})
            reject("call_task_crash")
        finally:
            self.tasks.pop(sid, None)
            self.owned.pop(sid, None)
            successor = self._successors.pop(sid, None)
            if successor is not None and not self._stopping:
                self._start(*successor)

    def _entries(self, claims: CallClaims) -> dict[bytes, str]:
        return {entry: sid for sid, (c, entry) in self.owned.items() if c is claims}

    async def run(self) -> None:
        """Serve calls until cancelled; survives Redis going away and coming back empty."""
        self._loops = [asyncio.ensure_future(self._run_partition(c)) for c in self.partitions]
        await asyncio.gather(*self._loops)

    async def _run_partition(self, claims: CallClaims) -> None:
        backoff = Backoff()
        refresh_s = claims.idle_ms / 4000
        block_ms = max(100, min(1000, claims.idle_ms // 4))
        next_refresh = 0.0
        need_setup = True
        first_setup = True
        while not self._stopping:
            try:
                if need_setup:
                    await claims.ensure_group()
                    for claim in await claims.pending_mine():
                        self._start(claims, claim)
                    need_setup = False
                    if first_setup:
                        first_setup = False
                        self._setup_done += 1
                        if self._setup_done == len(self.partitions):
                            self.ready.set()
                t0 = time.monotonic()
                arrived = await claims.take_unassigned(block_ms)
                for claim in arrived:
                    self._start(claims, claim)
                now = time.monotonic()
                if now >= next_refresh:
                    next_refresh = now + refresh_s
                    entries = self._entries(claims)
                    for entry_id in await claims.refresh(list(entries)):
                        task = self.tasks.get(entries[entry_id])
                        if task:
                            log.warning("lost claim on a call; stopping its work")
                            task.cancel()
                    for claim in await claims.take_over():
                        self._start(claims, claim)
                elif not arrived and now - t0 < block_ms / 2000:
                    # An empty answer long before the block ran out: a server that does not
                    # block (fakeredis) must not turn this loop into a busy loop. Real Redis
                    # answers early only with entries, and a call that arrives is taken up
                    # at once, never after a nap.
                    await asyncio.sleep(block_ms / 1000)
                backoff.reset()
            except RETRYABLE as exc:
                delay = backoff.next_delay()
                log.warning("redis unavailable (%s); retrying in %.2fs", exc, delay)
                need_setup = True
                await asyncio.sleep(delay)
            except Exception as exc:  # this loop must outlive any Redis or client fault
                need_setup = True
                if is_nogroup(exc):
                    log.warning("consumer group missing (Redis lost its data?); recreating")
                    continue
                # e.g. a cluster client re-discovering nodes, or a transport closed under us.
                reject("claims_loop_error")
                delay = backoff.next_delay()
                log.warning("claims loop error (%r); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)

    async def stop_taking(self, grace_s: float = 2.0) -> None:
        """Take no more calls (stop reading) but keep the claims on the calls held, refreshed,
        while they drain; :meth:`stop` ends that too."""
        if self._stopping:
            return
        self._stopping = True
        for loop in self._loops:  # a read under way could be handed our own notes
            loop.cancel()
        if self._loops:
            await asyncio.wait(self._loops, timeout=grace_s)
        self._keeping = asyncio.ensure_future(self._keep_claims())

    async def _keep_claims(self) -> None:
        while self.tasks:
            for claims in self.partitions:
                try:
                    async with self._refreshing:
                        entries = self._entries(claims)
                        lost = await claims.refresh(list(entries))
                except Exception as exc:  # e.g. Redis away: the next round tries again
                    log.warning("could not refresh the claims of the calls held: %r", exc)
                    continue
                for entry_id in lost:
                    task = self.tasks.get(entries[entry_id])
                    if task:
                        log.warning("lost claim on a call; stopping its work")
                        task.cancel()
            await asyncio.sleep(self.partitions[0].idle_ms / 4000)

    async def stop(self, hand_over: bool = True, grace_s: float = 2.0) -> None:
        """Stop serving: stop reading, cancel call tasks and (by default) hand them to another
        instance at once (:meth:`CallClaims.hand_over`)."""
        await self.stop_taking(grace_s)
        if self._keeping is not None:
            self._keeping.cancel()
        by_partition = {id(c): (c, list(self._entries(c))) for c in self.partitions}
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=grace_s)
            for task in stuck:  # left to the process's exit; their claims are handed over
                log.warning(
                    "call task did not stop in %.1fs, waiting in %s", grace_s, _awaiting(task)
                )
        if not hand_over:
            return
        for claims, entry_ids in by_partition.values():
            if entry_ids:
                try:
                    await claims.hand_over(entry_ids)
                except Exception as exc:  # e.g. the partition's node lost its data
                    log.warning("could not hand calls over: %r", exc)


def _name(name: bytes | str) -> bytes:
    return name.encode() if isinstance(name, str) else name


def _awaiting(task: asyncio.Task[None]) -> str:
    """Where a suspended task waits, innermost frames last (for a task that ignores cancel)."""
    where = []
    coro: object = task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            where.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return " > ".join(where[-6:])


def stage_claims(
    redis: aioredis.Redis, group: bytes, consumer: str, idle_ms: int, partitions: int
) -> list[CallClaims]:
    """One :class:`CallClaims` per lifecycle partition, for one stage's instance."""
    return [
        CallClaims(redis, group, consumer, idle_ms, stream)
        for stream in lifecycle_streams(partitions)
    ]
