"""/readyz and the load metrics every stage exports, from the one lifecycle they share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from shared.loop_load import FRAME_S, LoopLag
from shared.runtime.lifecycle import serve_stage, watch_loop
from shared.runtime.settings import load_settings
from tests.conftest import free_port, wait_for


async def _get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return int(data.split(b" ", 2)[1]), data.partition(b"\r\n\r\n")[2].decode()


def _sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


# --- the load core -------------------------------------------------------------------------------


def test_loop_lag_smooths_lateness_and_caps_saturation_at_one() -> None:
    lag = LoopLag(interval_s=0.1, tau_s=2.0)
    assert lag.alpha == pytest.approx(1 - 2.718281828459045 ** (-0.05))
    lag.observe(-0.001)  # a timer a hair early counts as on time
    assert lag.lag_s == 0.0 and lag.saturation == 0.0
    for _ in range(200):  # ten time constants: the mean has converged
        lag.observe(FRAME_S / 2)
    assert lag.lag_s == pytest.approx(FRAME_S / 2, rel=1e-3)
    assert lag.saturation == pytest.approx(0.5, rel=1e-3)
    lag.observe(10.0)  # one long stall: saturated, not above 1
    assert lag.saturation == 1.0
    with pytest.raises(ValueError, match="positive"):
        LoopLag(interval_s=0)


async def test_saturation_rises_while_the_loop_is_blocked_and_falls_after() -> None:
    lag = LoopLag(interval_s=0.01, tau_s=0.02)
    ticks: asyncio.Queue[float] = asyncio.Queue()
    watcher = asyncio.create_task(watch_loop(lag, lambda got: ticks.put_nowait(got.saturation)))

    async def ticks_until(done: Any, limit: int = 500) -> float:
        for _ in range(limit):
            value = await asyncio.wait_for(ticks.get(), 5)
            if done(value):
                return value
        raise AssertionError(f"saturation stayed at {lag.saturation:.2f}")

    async def block_the_loop() -> None:
        while True:
            time.sleep(0.05)  # deliberately blocking: 50 ms of work the loop cannot interleave
            await asyncio.sleep(0)

    try:
        await ticks_until(lambda s: s < 0.5)  # idle: nowhere near a frame late
        blocker = asyncio.create_task(block_the_loop())
        assert await ticks_until(lambda s: s == 1.0, limit=50) == 1.0
        blocker.cancel()
        await asyncio.gather(blocker, return_exceptions=True)
        assert await ticks_until(lambda s: s < 0.5) < 0.5
    finally:
        watcher.cancel()


# --- /readyz through serve_stage ------------------------------------------------------------------


class _Stage:
    def __init__(self) -> None:
        self.held = 0
        self.reason: str | None = None
        self.stopping = asyncio.Event()
        self.release = asyncio.Event()

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        return [asyncio.Event().wait()]

    def calls_held(self) -> int:
        return self.held

    def unready(self) -> str | None:
        return self.reason

    async def stop(self) -> None:
        self.stopping.set()
        await self.release.wait()  # a drain under way


async def test_readyz_follows_the_stage_and_fails_at_once_on_sigterm(
    real_redis: aioredis.Redis,
) -> None:
    port = free_port()
    settings = load_settings(metrics_host="127.0.0.1", metrics_port=port)
    stage = _Stage()
    built = asyncio.Event()
    go_on = asyncio.Event()
    stop = asyncio.Event()

    async def build(_: aioredis.Redis) -> _Stage:
        built.set()
        await go_on.wait()
        return stage

    served = asyncio.create_task(serve_stage("probe_stage", settings, stop, build, real_redis))
    try:
        await asyncio.wait_for(built.wait(), 5)
        assert await _get(port, "/readyz") == (503, "not ready: starting\n")
        assert (await _get(port, "/healthz"))[0] == 200
        go_on.set()
        await wait_for(lambda: _status(port, "/readyz", 200))
        stage.held, stage.reason = 3, "max_calls"
        assert await _get(port, "/readyz") == (503, "not ready: max_calls\n")
        metrics = (await _get(port, "/metrics"))[1]
        assert _sample(metrics, "gateway_stage_calls", stage="probe_stage") == 3
        saturation = _sample(metrics, "gateway_saturation", stage="probe_stage")
        assert saturation is not None and 0 <= saturation <= 1
        stage.reason = None
        assert (await _get(port, "/readyz"))[0] == 200

        stop.set()  # what SIGTERM's handler does; nothing of the stop has run yet
        assert await _get(port, "/readyz") == (503, "not ready: stopping\n")
        await asyncio.wait_for(stage.stopping.wait(), 5)
        assert await _get(port, "/readyz") == (503, "not ready: stopping\n")
        assert (await _get(port, "/healthz"))[0] == 200  # unchanged: the process is healthy
        stage.release.set()
        await asyncio.wait_for(served, 5)
    finally:
        stop.set()
        go_on.set()
        stage.release.set()
        await asyncio.gather(served, return_exceptions=True)


async def test_a_built_stage_is_not_ready_while_redis_does_not_answer() -> None:
    from shared.runtime.lifecycle import Readiness

    client = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        readiness = Readiness(asyncio.Event(), client)
        readiness.stage = _Stage()
        assert await readiness.reason() == "redis_unreachable"
    finally:
        await client.aclose()


async def _status(port: int, path: str, want: int) -> bool:
    try:
        return (await _get(port, path))[0] == want
    except OSError:
        return False


def test_the_edge_is_not_ready_at_max_calls(fake_redis: aioredis.Redis) -> None:
    from services.twilio_edge.service import Edge

    edge = Edge(load_settings(max_calls=2), fake_redis)
    assert edge.unready() is None and edge.calls_held() == 0
    edge.started.update([object(), object()])  # type: ignore[list-item]  # two admitted calls
    assert edge.unready() == "max_calls" and edge.calls_held() == 2
