"""The three services, the emulator and Redis, started in-process or as real processes for tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis

from services.realtime_worker.service import run_worker
from services.tool_runner.service import run_tool_runner
from services.transcoder.service import run_transcoder
from services.twilio_edge.service import run_edge
from shared.runtime.settings import Settings, load_settings
from shared.stream_token import TOKEN_PARAMETER, derive_key, mint
from sim.openai_realtime import RealtimeEmulator
from tests.conftest import ROOT, free_port


@dataclass
class InProcessStack:
    settings: Settings
    emulator: RealtimeEmulator
    redis: aioredis.Redis
    edge_port: int

    @property
    def media_url(self) -> str:
        return f"ws://127.0.0.1:{self.edge_port}/media"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.edge_port}"


@contextlib.asynccontextmanager
async def in_process_stack(
    redis_factory,
    *,
    emulator_kwargs: dict | None = None,
    **overrides: object,  # type: ignore[no-untyped-def]
) -> AsyncIterator[InProcessStack]:
    """Edge, transcoder and worker as tasks of this event loop, each with its own Redis client."""
    emulator = RealtimeEmulator(host="127.0.0.1", port=0, **(emulator_kwargs or {}))
    await emulator.start()
    settings = load_settings(
        **{
            # GPT-Live is served at its own path (REALTIME_SCHEMA=live).
            "realtime_url": emulator.live_url
            if overrides.get("realtime_schema") == "live"
            else emulator.url,
            "edge_host": "127.0.0.1",
            "edge_port": 0,
            "owner_idle_ms": 1000,
            # The stack stops with calls still up at a test's end: no drain (docs/deploy.md),
            # which would hold the stop for WORKER_DRAIN_SECONDS with no peer to hand them to.
            "worker_drain_seconds": 0,
            **overrides,
        }
    )
    stop = asyncio.Event()
    clients = [redis_factory() for _ in range(5)]
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    tasks = [
        asyncio.create_task(run_edge(settings, stop, port.set_result, redis=clients[0])),
        asyncio.create_task(run_transcoder(settings, stop, redis=clients[1])),
        asyncio.create_task(run_worker(settings, stop, redis=clients[2])),
        asyncio.create_task(run_tool_runner(settings, stop, redis=clients[4])),
    ]
    try:
        edge_port = await asyncio.wait_for(port, 10)
        yield InProcessStack(settings, emulator, clients[3], edge_port)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 15)
        for client in clients:
            await client.aclose()
        await emulator.stop()


@contextlib.asynccontextmanager
async def running_edge(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[int]:
    """The edge alone, as a task of this event loop over ``redis``, on a free loopback port
    (``settings.edge_port`` 0); yields the port and stops it after."""
    stop = asyncio.Event()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_edge(settings, stop, port.set_result, redis=redis))
    try:
        yield await asyncio.wait_for(port, 10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@dataclass
class ProcessStack:
    """Real processes over a real redis-server, as supervisord runs them."""

    env: dict[str, str]
    edge_port: int
    emulator_port: int
    record_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    # The edge serves /metrics on METRICS_PORT, not on the public port Twilio reaches.
    edge_metrics_port: int = field(default_factory=free_port)

    @property
    def media_url(self) -> str:
        return f"ws://127.0.0.1:{self.edge_port}/media"

    def start(self, name: str, module: str, extra_env: dict[str, str] | None = None) -> None:
        log = self.record_dir / f"{name}.log"
        self.logs[name] = log
        env = {**self.env, **(extra_env or {})}
        if module == "services.twilio_edge":
            env.setdefault("METRICS_PORT", str(self.edge_metrics_port))
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=ROOT,
            env=env,
            stdout=open(log, "ab"),
            stderr=subprocess.STDOUT,  # noqa: SIM115
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        proc = self.procs[name]
        proc.send_signal(sig)
        return proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(8)
            except subprocess.TimeoutExpired:
                proc.kill()


def process_env(redis_url: str, edge_port: int, emulator_port: int, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REALTIME_", "OPENAI_", "TWILIO_", "REDIS_", "EDGE_"))
    }
    env.update(
        REDIS_URL=redis_url,
        EDGE_HOST="127.0.0.1",
        EDGE_PORT=str(edge_port),
        METRICS_HOST="127.0.0.1",
        REALTIME_URL=f"ws://127.0.0.1:{emulator_port}"
        + ("/v1/live/sessions" if extra.get("REALTIME_SCHEMA") == "live" else "/v1/realtime"),
        OWNER_IDLE_MS="1000",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


__all__ = ["InProcessStack", "ProcessStack", "free_port", "in_process_stack", "process_env"]


def token_parameters(
    auth_token: str, call_sid: str, parameters: dict[str, str] | None = None
) -> dict[str, str]:
    """``parameters`` with the stream token a TwiML server of one's own mints (see
    docs/security.md): what a stream dialled straight to ``/media`` carries when the edge checks
    signatures."""
    params = dict(parameters or {})
    token = mint(derive_key(auth_token), call_sid, params, int(time.time()))
    return params | {TOKEN_PARAMETER: token}
