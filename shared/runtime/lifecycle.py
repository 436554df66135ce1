"""The one lifecycle every stage shares, from process start to a clean stop.

A stage (edge, transcoder, worker, ...) is built once Redis answers, runs a few long-lived loops
and, on SIGTERM, stops cleanly: it hands its calls over and flushes what it still has to write.
What is the same for every stage lives here, once: the Redis client, the wait for it at start
(which a SIGTERM ends at once: a stage that never got going has nothing to hand over), the
metrics and health server on ``METRICS_PORT``, the rule that a loop ending by itself is a bug,
and the bound on a clean stop (:data:`STOP_GRACE_S`, inside the 5 s docs/reliability.md promises and
supervisord's ``stopwaitsecs``), after which whatever is left is cancelled.

Readiness (``/readyz``, :class:`Readiness`) and load (``gateway_stage_calls``,
``gateway_saturation``, :func:`watch_loop`) are the lifecycle's too: a stage is ready only
once built, while Redis answers, while it reports no reason of its own (:meth:`Stage.unready`),
and never again from the moment SIGTERM sets ``stop`` (the signal handler sets it; the readiness
reads it, before any of the stop's work has run).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis

from shared.loop_load import LoopLag
from shared.runtime.observability import (
    LOOP_LAG,
    SATURATION,
    STAGE_CALLS,
    register_settings_secrets,
    serve_metrics,
    setup_logging,
)
from shared.runtime.redis_io import answers, connect, prepare
from shared.runtime.settings import Settings

log = logging.getLogger("gateway.lifecycle")

STOP_GRACE_S = 4.0  # a clean stop's bound; the process is gone well within 5 s of SIGTERM
T = TypeVar("T")


def wall_clock_us() -> int:
    """Microseconds since the epoch: the clock that entries carry from one process to another
    (every stage reads the same one on a box; across hosts it is as good as their NTP)."""
    return time.time_ns() // 1000


class Stage(Protocol):
    """What a service is once built: its loops, its load, its own reason not to take new calls
    and its clean stop. (Its health is the lifecycle's: whether Redis answers.)"""

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        """The stage's long-lived work; none of it ends by design."""
        ...

    def calls_held(self) -> int:
        """How many calls (the tool runner: tool calls) this instance holds now."""
        ...

    def unready(self) -> str | None:
        """Why this instance should get no new calls now (a short reason), or None."""
        ...

    async def stop(self) -> None:
        """Stop taking work, hand calls over, flush writes (bounded by the lifecycle)."""
        ...


class Readiness:
    """Whether a stage takes new calls: ``/readyz``'s answer.

    Not ready while starting (no stage built yet), from the moment ``stop`` is set (SIGTERM),
    while the stage gives a reason of its own, or while Redis does not answer.
    """

    def __init__(self, stop: asyncio.Event, redis: aioredis.Redis) -> None:
        self.stop = stop
        self.redis = redis
        self.stage: Stage | None = None

    async def reason(self) -> str | None:
        """None when ready, else why not (``starting``, ``stopping``, the stage's own reason,
        ``redis_unreachable``)."""
        if self.stop.is_set():
            return "stopping"
        if self.stage is None:
            return "starting"
        own = self.stage.unready()
        if own is not None:
            return own
        if not await answers(self.redis):
            return "redis_unreachable"
        return None


async def watch_loop(lag: LoopLag, on_tick: Callable[[LoopLag], None] | None = None) -> None:
    """Measure the running loop's lag for ever: a timer every ``lag.interval_s``, how late it
    fired fed to ``lag`` (shared/loop_load.py has the formula). ``on_tick`` runs after each."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + lag.interval_s
        await asyncio.sleep(lag.interval_s)
        lag.observe(loop.time() - due)
        if on_tick is not None:
            on_tick(lag)


def _export_lag(name: str) -> Callable[[LoopLag], None]:
    lag_gauge, saturation_gauge = LOOP_LAG.labels(name), SATURATION.labels(name)

    def export(lag: LoopLag) -> None:
        lag_gauge.set(lag.lag_s)
        saturation_gauge.set(lag.saturation)

    return export


async def until_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """``work``'s result, or None (and ``work`` cancelled) once ``stop`` is set first."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return None


async def serve_stage(
    name: str,
    settings: Settings,
    stop: asyncio.Event,
    build: Callable[[aioredis.Redis], Awaitable[Stage]],
    redis: aioredis.Redis | None = None,
) -> None:
    """Run one stage until ``stop``: ``build`` gets the prepared Redis client and returns the
    stage, ready to serve (it may wait for Redis; a stop meanwhile ends the process at once)."""
    own_redis = redis is None
    client = redis or connect(settings)
    metrics = None
    readiness = Readiness(stop, client)
    watcher = asyncio.ensure_future(watch_loop(LoopLag(), _export_lag(name)))
    try:
        if settings.metrics_port:
            # Up from the start, before Redis answers: /healthz then says 503, not "no one".
            metrics = await serve_metrics(
                settings.metrics_host,
                settings.metrics_port,
                lambda: answers(client),
                readiness.reason,
            )

        async def started() -> Stage:
            await prepare(client)
            return await build(client)

        stage = await until_stopped(started(), stop)
        if stage is None:
            log.info("%s: stopped before it was ready", name)
            return
        readiness.stage = stage
        STAGE_CALLS.labels(name).set_function(stage.calls_held)
        tasks = [asyncio.ensure_future(loop) for loop in stage.loops()]
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({*tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        crashed = [task for task in tasks if task in done]
        if crashed:
            # A loop that ends is a bug (a call's audio would have nowhere to go): cancel the
            # rest and let the supervisor restart the process.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            crashed[0].result()
            raise RuntimeError(f"{name}: a loop of the stage ended")
        log.info("%s: stopping", name)
        try:
            # A stage that drains (the worker) says for how long, on top of the clean stop.
            grace = STOP_GRACE_S + float(getattr(stage, "drain_seconds", 0.0))
            await asyncio.wait_for(stage.stop(), grace)
        except TimeoutError:
            log.warning("%s: clean stop took over %.1fs; the rest is left", name, grace)
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=0.5)
    finally:
        watcher.cancel()
        with contextlib.suppress(KeyError):  # a stage that never got built has none
            STAGE_CALLS.remove(name)
        if metrics is not None:
            metrics.close()
        if own_redis:
            await client.aclose()


def run_service(
    service: str, settings: Settings, serve: Callable[[asyncio.Event], Awaitable[None]]
) -> None:
    """A service's process: JSON logs, secrets registered, SIGTERM/SIGINT set ``stop``, and the
    event loop on uvloop (a dependency: the loop's own overhead per message is a large share of a
    20 ms frame's cost)."""
    setup_logging(service, settings.log_level)
    register_settings_secrets(settings)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    try:
        import uvloop
    except ImportError:  # pragma: no cover - plain asyncio still works
        asyncio.run(main())
        return
    uvloop.run(main())
