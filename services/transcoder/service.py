"""The transcoder's asyncio shell: one reader over every owned call, one round trip per batch.

Each owned call is a :class:`_CallPump` (its pure :class:`~shared.transcode.CallTranscoder` and
its cursors in ``in.pcmu`` and ``out.pcm``), registered with the instance's one
:class:`~shared.runtime.stream_reader.SharedReader`: one ``XREAD`` reads every call's input, each
call converts its entries, and every result goes out under its input's entry ID in one pipeline
that carries the next read too. Where to resume after a restart or takeover is the last ID
already written, so no acknowledgement traffic is needed per frame and no frame is processed
twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import redis.asyncio as aioredis

from shared.runtime.claims import Claim, OwnedCalls, stage_claims
from shared.runtime.lifecycle import run_service, serve_stage
from shared.runtime.observability import (
    ACTIVE_CALLS,
    CALLS,
    FRAMES,
    call_context,
    reject,
)
from shared.runtime.redis_io import is_duplicate_id, last_entry_id
from shared.runtime.settings import Settings, settings_or_exit
from shared.runtime.stream_reader import CallReading, Read, SharedReader, Writes
from shared.streams import TRANSCODER_GROUP, CallKeys, KeyExpiry, StreamEntryError
from shared.transcode import CallTranscoder

log = logging.getLogger("gateway.transcoder")

# A live Twilio stream sends 50 frames a second even in silence; this long without any input
# means the edge died without ending the call.
CALL_SILENT_LIMIT_S = 30.0


class Transcoder:
    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.reader = SharedReader(redis, "transcoder", batch_s=settings.redis_batch_ms / 1000)
        claims = stage_claims(
            redis,
            TRANSCODER_GROUP,
            settings.consumer_name,
            settings.owner_idle_ms,
            settings.lifecycle_partitions,
        )
        self.owned = OwnedCalls(claims, self.run_call)

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        return [self.owned.run()]

    def calls_held(self) -> int:
        return len(self.owned.tasks)

    def unready(self) -> str | None:
        return None

    async def stop(self) -> None:
        await self.owned.stop(hand_over=True)
        await self.reader.stop()

    async def run_call(self, claim: Claim) -> None:
        call = claim.call
        keys = CallKeys.for_call(call.call_sid)
        with call_context(call.call_sid, call.stream_sid):
            if not await self.redis.exists(keys.meta):
                log.info("call's keys are gone (expired); nothing to do")
                return
            ACTIVE_CALLS.inc()
            try:
                outcome = await self._serve(keys)
                CALLS.labels(outcome).inc()
            finally:
                ACTIVE_CALLS.dec()

    async def _serve(self, keys: CallKeys) -> str:
        pump = _CallPump(keys, self.settings, await _resume(self.redis, keys))
        self.reader.add(pump)
        try:
            return await pump.outcome
        finally:
            self.reader.remove(pump)


async def _resume(redis: aioredis.Redis, keys: CallKeys) -> dict[bytes, bytes]:
    """Where to go on: after the last entry already written (by us or a dead predecessor)."""
    return {
        keys.in_pcmu: await last_entry_id(redis, keys.in_pcm) or b"0-0",
        keys.out_pcm: await last_entry_id(redis, keys.out_pcmu) or b"0-0",
    }


class _CallPump(CallReading):
    """One call's entries through its :class:`CallTranscoder`, a batch at a time."""

    def __init__(self, keys: CallKeys, settings: Settings, cursors: dict[bytes, bytes]) -> None:
        super().__init__(keys.call_sid, cursors, CALL_SILENT_LIMIT_S)
        self.core = CallTranscoder(settings.pcm_rate)
        self.targets = {keys.in_pcmu: keys.in_pcm, keys.out_pcm: keys.out_pcmu}
        self.convert = {keys.in_pcmu: self.core.inbound, keys.out_pcm: self.core.outbound}
        self.direction = {keys.in_pcmu: FRAMES.labels("in"), keys.out_pcm: FRAMES.labels("out")}
        self.maxlen = settings.stream_maxlen
        self.expire_s = settings.call_max_seconds
        self.expiry = KeyExpiry()
        # Past the batch whose writes are in flight; the cursors move there once they landed.
        self.following: dict[bytes, bytes] | None = None
        self.reread = False  # the last batch's writes failed: read it again even if it ended

    @property
    def done(self) -> bool:
        return self.core.ended_in and self.core.ended_out

    def read_from(self) -> dict[bytes, bytes]:
        return self.following or self.cursors

    def wants_entries(self) -> bool:
        # Not once the call is over, or its end would wait for the read that rides with it.
        return self.reread or not self.done

    def take(self, read: Read, writes: Writes) -> None:
        self.reread = False
        following = dict(self.cursors)
        for stream, entries in read:
            target = self.targets[stream]
            convert = self.convert[stream]
            for entry_id, fields in entries:
                try:
                    out = convert(fields)
                except StreamEntryError as exc:
                    reject(f"transcoder_{exc.reason}")
                    log.warning(
                        "skipping undecodable entry %r: %s",
                        entry_id,
                        exc,
                        extra={"call_sid": self.call_id},
                    )
                    continue
                writes.xadd(target, out, entry_id, self.maxlen)
            self.direction[stream].inc(len(entries))
            if self.expiry.first_write(target):
                writes.expire(target, self.expire_s)
            following[stream] = entries[-1][0]
        self.following = following

    def written(self, results: list[Any]) -> None:
        # Only now move the cursors: a failed round trip re-reads the same batch.
        if self.following is not None:
            self.cursors, self.following = self.following, None
        for result in results:
            if isinstance(result, Exception):
                if is_duplicate_id(result):
                    reject("transcoder_duplicate")  # written before a restart; skipped
                else:
                    log.error("redis refused a write: %s", result, extra={"call_sid": self.call_id})
        if self.done:
            self.end("completed")

    def unwritten(self) -> None:
        # Cursors are kept and writes are idempotent (mirrored IDs): the batch is read again.
        self.following = None
        self.reread = True
        self.expiry = KeyExpiry()  # its expiry may not have been set either


async def run_transcoder(
    settings: Settings, stop: asyncio.Event, redis: aioredis.Redis | None = None
) -> None:
    async def build(client: aioredis.Redis) -> Transcoder:
        log.info("transcoder ready", extra={"consumer": settings.consumer_name})
        return Transcoder(settings, client)

    await serve_stage("transcoder", settings, stop, build, redis)


def main(settings: Settings | None = None) -> None:
    settings = settings or settings_or_exit("transcoder")
    run_service("transcoder", settings, lambda stop: run_transcoder(settings, stop))
