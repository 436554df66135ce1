"""The realtime worker's asyncio shell: the process-wide pieces beside one object per call.

:class:`RealtimeWorker` holds what every call shares (Redis, the batched writer, the settings,
the claims on calls, the shared reader of every call's input, the metrics): it is the calls'
:class:`~services.realtime_worker.interfaces.CallHost`. Each owned call is a
:class:`~services.realtime_worker.pipeline.CallPipeline` with its model session:
:class:`~services.realtime_worker.call.RealtimeCall` (combos A and B) or, with
``REALTIME_SCHEMA=live``, :class:`~services.realtime_worker.live_call.LiveCall` (combo C), fed
with its entries by :mod:`services.realtime_worker.feed`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import redis.asyncio as aioredis

from services.realtime_worker.call import RealtimeCall
from services.realtime_worker.live_call import LiveCall
from services.realtime_worker.pipeline import CallPipeline
from shared.drain import WorkerDrain, peers_alive
from shared.realtime_handshake import DialectMemory
from shared.runtime.claims import Claim, OwnedCalls, stage_claims
from shared.runtime.lifecycle import run_service, serve_stage, wall_clock_us
from shared.runtime.observability import (
    ACTIVE_CALLS,
    CALLS,
    FRAMES,
    HOP_LATENCY,
    call_context,
    reject,
)
from shared.runtime.redis_io import RETRYABLE, BatchedStreamWriter, hash_fields
from shared.runtime.settings import Settings, settings_or_exit
from shared.runtime.stream_reader import SharedReader
from shared.streams import WORKER_GROUP, WORKERS_ALIVE, CallKeys

log = logging.getLogger("gateway.worker")

# While draining, how often the worker looks for a live peer and for its calls' ends.
DRAIN_POLL_S = 0.25
# Past the bound, how long the calls get to move at their next frame boundary before the rest
# are cancelled and handed over as they are.
DRAIN_LAST_MOVES_S = 0.5

_EMULATOR_KEY = "sk-local-emulator"


class RealtimeWorker:
    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis
        batch_s = settings.redis_batch_ms / 1000
        self.writer = BatchedStreamWriter(redis, settings.stream_maxlen, batch_s=batch_s)
        # Every call's input, in one read.
        self.reader = SharedReader(redis, "worker", batch_s=batch_s)
        claims = stage_claims(
            redis,
            WORKER_GROUP,
            settings.consumer_name,
            settings.owner_idle_ms,
            settings.lifecycle_partitions,
        )
        self.owned = OwnedCalls(claims, self.run_call)
        key = settings.openai_api_key
        self.api_key = key.get_secret_value() if key else _EMULATOR_KEY
        self.config = settings.session_config()
        self.tools = {tool.name: tool for tool in settings.agent.tools}
        self.live = settings.realtime_schema == "live"
        # What the server's answers taught this process: under auto the combo it accepted last
        # time is tried first; once it said the beta is retired, combo B opens GA directly.
        self.dialects = DialectMemory()
        self.hop_in = HOP_LATENCY.labels("edge_to_openai")
        self.frames_in = FRAMES.labels("worker_in")
        self.frames_out = FRAMES.labels("worker_out")
        self.drain = WorkerDrain(settings.worker_drain_seconds * 1_000_000)
        self.peers = False  # whether another worker is alive (looked up while draining)
        self.drain_seconds = float(settings.worker_drain_seconds)  # the lifecycle's stop bound

    async def run_call(self, claim: Claim) -> str | None:
        started = claim.call
        with call_context(started.call_sid, started.stream_sid):
            meta = await hash_fields(self.redis, CallKeys.for_call(started.call_sid).meta)
            if not meta:
                log.info("call's keys are gone (expired); nothing to do")
                return None
            try:
                config = self.config.with_overrides(started.custom_parameters)
            except ValueError as exc:
                reject("worker_bad_parameters")
                log.warning("ignoring invalid per-call parameters: %s", exc)
                config = self.config
            call: CallPipeline
            if self.live:
                call = LiveCall(self, started, meta, self.settings.live_config_for(config))
            else:
                call = RealtimeCall(self, started, meta, config)
            ACTIVE_CALLS.inc()
            outcome = "completed"
            try:
                outcome = await call.run(claim.recovered)
            finally:
                ACTIVE_CALLS.dec()
                CALLS.labels(outcome).inc()
            return outcome

    # --- the stage's lifecycle ------------------------------------------------------------------
    def loops(self) -> list[Coroutine[Any, Any, None]]:
        return [self.writer.run(), self.owned.run(), self._beat()]

    async def _beat(self) -> None:
        """This worker is alive (:data:`~shared.streams.WORKERS_ALIVE`), every lease / 4,
        until it drains: a draining worker takes no calls, so it is no peer to hand them to."""
        lease_ms = self.settings.owner_idle_ms
        name = self.settings.consumer_name
        while not self.drain.draining:
            now_ms = wall_clock_us() // 1000
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.zadd(WORKERS_ALIVE, {name: now_ms})
                pipe.zremrangebyscore(WORKERS_ALIVE, "-inf", now_ms - 100 * lease_ms)
                await pipe.execute()
            except RETRYABLE as exc:
                log.warning("could not say this worker is alive: %s", exc)
            await asyncio.sleep(lease_ms / 4000)

    def calls_held(self) -> int:
        return len(self.owned.tasks)

    def unready(self) -> str | None:
        return None

    async def stop(self) -> None:
        """Drain (each call moves to a peer at a quiet moment, bounded by WORKER_DRAIN_SECONDS:
        :mod:`shared.drain`), then hand over whatever is left and flush."""
        self.drain.begin(wall_clock_us())
        try:
            await self.redis.zrem(WORKERS_ALIVE, self.settings.consumer_name)
        except RETRYABLE as exc:
            log.warning("could not say this worker is draining: %s", exc)
        await self.owned.stop_taking()
        if self.settings.worker_drain_seconds > 0:  # 0: every call is handed over at once
            await self._drain()
        left = len(self.owned.tasks)
        await self.owned.stop(hand_over=True)
        if left:
            log.warning("drain over: handed %d call(s) over as they were", left)
        await self.reader.stop()
        await asyncio.wait_for(self.writer.flush(), 1.0)

    async def _drain(self) -> None:
        """Until the calls have moved or ended, or the bound (and a moment for the last moves)
        has passed. Each call moves itself at its next frame boundary (the pipeline asks the
        drain); this loop only keeps ``peers`` current."""
        alone_logged = False
        while self.owned.tasks:
            now_us = wall_clock_us()
            deadline = self.drain.deadline_us()
            assert deadline is not None
            if now_us >= deadline + DRAIN_LAST_MOVES_S * 1e6:
                return
            self.peers = await self._peers_alive()
            if not self.peers and not alone_logged:
                alone_logged = True
                log.warning(
                    "draining with no other worker alive: keeping %d call(s) until they end or "
                    "WORKER_DRAIN_SECONDS (%ss) pass",
                    len(self.owned.tasks),
                    self.settings.worker_drain_seconds,
                )
            await asyncio.wait(list(self.owned.tasks.values()), timeout=DRAIN_POLL_S)

    async def _peers_alive(self) -> bool:
        settings = self.settings
        try:
            beats: Any = await self.redis.zrange(WORKERS_ALIVE, 0, -1, withscores=True)
        except RETRYABLE as exc:  # Redis away: nobody to hand to that we can see
            log.warning("could not look for a live peer: %s", exc)
            return False
        now_ms = wall_clock_us() // 1000
        return peers_alive(beats, settings.consumer_name, now_ms, settings.owner_idle_ms)


async def run_worker(
    settings: Settings, stop: asyncio.Event, redis: aioredis.Redis | None = None
) -> None:
    async def build(client: aioredis.Redis) -> RealtimeWorker:
        log.info(
            "realtime worker ready",
            extra={"consumer": settings.consumer_name, "realtime_url": settings.realtime_url},
        )
        return RealtimeWorker(settings, client)

    await serve_stage("realtime_worker", settings, stop, build, redis)


def main(settings: Settings | None = None) -> None:
    settings = settings or settings_or_exit("realtime_worker", checks=(Settings.keyless_worker,))
    run_service("realtime_worker", settings, lambda stop: run_worker(settings, stop))
