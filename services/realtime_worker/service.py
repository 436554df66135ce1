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
from shared.realtime_handshake import DialectMemory
from shared.runtime.claims import Claim, OwnedCalls, stage_claims
from shared.runtime.lifecycle import run_service, serve_stage
from shared.runtime.observability import (
    ACTIVE_CALLS,
    CALLS,
    FRAMES,
    HOP_LATENCY,
    call_context,
    reject,
)
from shared.runtime.redis_io import BatchedStreamWriter, hash_fields
from shared.runtime.settings import Settings, settings_or_exit
from shared.runtime.stream_reader import SharedReader
from shared.streams import WORKER_GROUP, CallKeys

log = logging.getLogger("gateway.worker")

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

    async def run_call(self, claim: Claim) -> None:
        started = claim.call
        with call_context(started.call_sid, started.stream_sid):
            meta = await hash_fields(self.redis, CallKeys.for_call(started.call_sid).meta)
            if not meta:
                log.info("call's keys are gone (expired); nothing to do")
                return
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

    # --- the stage's lifecycle ------------------------------------------------------------------
    def loops(self) -> list[Coroutine[Any, Any, None]]:
        return [self.writer.run(), self.owned.run()]

    def calls_held(self) -> int:
        return len(self.owned.tasks)

    def unready(self) -> str | None:
        return None

    async def stop(self) -> None:
        await self.owned.stop(hand_over=True)
        await self.reader.stop()
        await asyncio.wait_for(self.writer.flush(), 1.0)


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
