"""The transcoder's asyncio shell: one task per owned call, one blocking read per batch.

For each call it reads both of its input streams (``in.pcmu`` and ``out.pcm``) in one blocking
``XREAD`` (both keys share the call's hash slot), hands the entries to the pure
:class:`~shared.transcode.CallTranscoder`, and writes every result in one pipeline under the
input's entry ID. Where to resume after a restart or takeover is the last ID already written,
so no acknowledgement traffic is needed per frame and no frame is processed twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.backoff import Backoff
from shared.runtime.claims import Claim, OwnedCalls, stage_claims
from shared.runtime.lifecycle import run_service, serve_stage
from shared.runtime.observability import (
    ACTIVE_CALLS,
    CALLS,
    FRAMES,
    call_context,
    reject,
)
from shared.runtime.redis_io import (
    RETRYABLE,
    is_duplicate_id,
    is_transient,
    last_entry_id,
)
from shared.runtime.settings import Settings, settings_or_exit
from shared.streams import TRANSCODER_GROUP, CallKeys, KeyExpiry, StreamEntryError
from shared.transcode import CallTranscoder

log = logging.getLogger("gateway.transcoder")

READ_COUNT = 64
BLOCK_MS = 1000
# A live Twilio stream sends 50 frames a second even in silence; this long without any input
# means the edge died without ending the call.
CALL_SILENT_LIMIT_S = 30.0


class Transcoder:
    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis
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

    async def stop(self) -> None:
        await self.owned.stop(hand_over=True)

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
        pump = _CallPump(self.redis, keys, self.settings)
        await pump.resume()
        backoff = Backoff()
        task = asyncio.current_task()
        while not pump.done:
            if task is not None and task.cancelling():
                # Python 3.11's asyncio.wait_for (inside redis-py) can swallow a cancel that
                # lands as its inner await completes; the request is still counted here.
                raise asyncio.CancelledError
            try:
                got_input = await pump.step()
            except RETRYABLE as exc:
                # Cursors are kept and writes are idempotent (mirrored IDs): just try again.
                delay = backoff.next_delay()
                log.warning("redis unavailable (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            if not got_input and pump.silent_for() > CALL_SILENT_LIMIT_S:
                log.warning("no input for %.0fs; giving the call up", CALL_SILENT_LIMIT_S)
                return "abandoned"
        return "completed"


class _CallPump:
    """Moves one call's entries through its :class:`CallTranscoder`, a batch at a time."""

    def __init__(self, redis: aioredis.Redis, keys: CallKeys, settings: Settings) -> None:
        self.redis = redis
        self.core = CallTranscoder(settings.pcm_rate)
        self.targets = {keys.in_pcmu: keys.in_pcm, keys.out_pcm: keys.out_pcmu}
        self.convert = {keys.in_pcmu: self.core.inbound, keys.out_pcm: self.core.outbound}
        self.direction = {keys.in_pcmu: FRAMES.labels("in"), keys.out_pcm: FRAMES.labels("out")}
        self.cursors: dict[bytes, bytes] = {}
        self.maxlen = settings.stream_maxlen
        self.expire_s = settings.call_max_seconds
        self.expiry = KeyExpiry()
        self.last_input = time.monotonic()
        # The next batch, read in the round trip that wrote the last one (None: read it now).
        self._prefetched: list[Any] | None = None

    @property
    def done(self) -> bool:
        return self.core.ended_in and self.core.ended_out

    def silent_for(self) -> float:
        return time.monotonic() - self.last_input

    async def resume(self) -> None:
        """Continue after the last entry already written (by us or a dead predecessor)."""
        for source, target in self.targets.items():
            self.cursors[source] = await last_entry_id(self.redis, target) or b"0-0"

    async def step(self) -> bool:
        """Convert one batch of input; ``False`` when none came within ``BLOCK_MS``."""
        reply: Any
        if self._prefetched is not None:
            reply, self._prefetched = self._prefetched, None
        else:
            reply = await self.redis.xread(
                self.cursors,  # type: ignore[arg-type]  # bytes keys work; the stubs say str
                count=READ_COUNT,
                block=BLOCK_MS,
            )
        if not reply:
            return False
        self.last_input = time.monotonic()
        pipe = self.redis.pipeline(transaction=False)
        for stream, entries in reply:
            target = self.targets[stream]
            convert = self.convert[stream]
            for entry_id, fields in entries:
                try:
                    out = convert(fields)
                except StreamEntryError as exc:
                    reject(f"transcoder_{exc.reason}")
                    log.warning("skipping undecodable entry %r: %s", entry_id, exc)
                    continue
                pipe.xadd(target, out, id=entry_id, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
            self.direction[stream].inc(len(entries))
            if self.expiry.first_write(target):
                pipe.expire(target, self.expire_s)
        following = dict(self.cursors)
        for stream, entries in reply:
            following[stream] = entries[-1][0]
        # The next read rides in the same round trip as this batch's writes: a frame costs one
        # send to Redis rather than two, which is most of this stage's CPU (a loopback send runs
        # Redis's side of TCP too). Not once the call is over, or its end would wait BLOCK_MS.
        read_ahead = not self.done
        if read_ahead:
            pipe.xread(following, count=READ_COUNT, block=BLOCK_MS)  # type: ignore[arg-type]
        results = await pipe.execute(raise_on_error=False)
        if read_ahead:
            *results, ahead = results
        for result in results:
            if is_transient(result):
                # A node failing over answered some writes with "not now": do the batch again
                # (what did land is refused as a duplicate, by its mirrored ID).
                raise RedisConnectionError(f"write not taken: {result}")
        # Only now move the cursors: a failed round trip re-reads the same batch.
        self.cursors = following
        if read_ahead and not isinstance(ahead, BaseException):
            self._prefetched = ahead or []  # [] (nothing within BLOCK_MS) counts as a read
        for result in results:
            if isinstance(result, Exception):
                if is_duplicate_id(result):
                    reject("transcoder_duplicate")  # written before a restart; skipped
                else:
                    log.error("redis refused a write: %s", result)
        return True


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
