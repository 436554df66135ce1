"""The real thing: the three services as processes over a real redis-server, as supervisord runs
them, with the emulator and the Twilio simulator; then faults (issue: reliability)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis

from shared.audio import mulaw_decode, mulaw_encode
from sim.openai_realtime import RealtimeEmulator
from sim.speech import speech
from sim.twilio_call import place_call
from tests.audio_checks import pcm24_to_8k, similarity
from tests.conftest import PROCESS_START_S, RedisServer, free_port, port_open, wait_for
from tests.stack import ProcessStack, process_env

pytestmark = pytest.mark.slow


@pytest.fixture
async def processes(
    redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[tuple[ProcessStack, RealtimeEmulator]]:
    client = aioredis.from_url(redis_server.url)
    await client.flushall()
    await client.aclose()
    emulator = RealtimeEmulator(host="127.0.0.1", port=0)
    await emulator.start()
    edge_port = free_port()
    env = process_env(redis_server.url, edge_port, int(emulator.url.split(":")[2].split("/")[0]))
    stack = ProcessStack(env, edge_port, 0, tmp_path)
    stack.start("transcoder", "services.transcoder", {"CONSUMER_NAME": "t-0"})
    stack.start("worker", "services.realtime_worker", {"CONSUMER_NAME": "w-0"})
    stack.start("edge", "services.twilio_edge")
    try:
        await wait_for(lambda: port_open(edge_port), timeout=PROCESS_START_S)
        yield stack, emulator
    finally:
        stack.stop_all()
        await emulator.stop()


def caller(text: str) -> np.ndarray:
    return mulaw_decode(mulaw_encode(speech(text)))


async def test_a_call_through_real_processes(processes) -> None:  # type: ignore[no-untyped-def]
    stack, emulator = processes
    audio = caller("Good morning, I am calling about the invoice I received last week.")
    result = await asyncio.wait_for(place_call(stack.media_url, audio, hold_after_s=1.0), 40)
    session = await emulator.wait_for_session(1)
    await session.wait_closed(timeout=10)  # the Realtime socket closes after hang-up
    assert similarity(audio, pcm24_to_8k(bytes(session.input_audio))) >= 0.95
    reply = pcm24_to_8k(bytes(session.responses[0].audio))
    assert (
        similarity(reply[: reply.size // 2], mulaw_decode(result.received_audio), max_lag=2000)
        >= 0.9
    )
    for name, proc in stack.procs.items():
        assert proc.poll() is None, f"{name} died: {stack.logs[name].read_text()[-2000:]}"
