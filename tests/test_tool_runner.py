"""The tool runner in-process, over fakeredis, against the test tool server on 127.0.0.1: one
deadline bounds a tool call whole (a tool that trickles its answer is cut at ``timeout_ms``), and
an answer past 64 KiB is not read whole, nor used."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from services.tool_runner.service import ToolRunner
from shared.runtime.observability import REJECTED
from shared.runtime.settings import load_settings
from shared.streams import (
    MAX_TOOL_OUTPUT_BYTES,
    TOOL_CALLS_STREAM,
    CallKeys,
    ToolCall,
    ToolResult,
    decode_control,
)
from sim.tool_server import ToolServer

CALL_SID = "CA" + "7" * 32


def agent(path: Path, url: str) -> Path:
    path.write_text(
        f"""
instructions = "Be brief."
[[tools]]
name = "trickle"
description = "Answers one byte a second."
url = "{url}/trickle?ms=1000"
timeout_ms = 1500

[[tools]]
name = "huge"
description = "Answers 100 MiB."
url = "{url}/huge?mb=100"
timeout_ms = 20000

[[tools]]
name = "big"
description = "Answers 100 KiB at once."
url = "{url}/big"
"""
    )
    return path


@pytest.fixture
async def tools() -> AsyncIterator[ToolServer]:
    server = await ToolServer().start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def runner(
    fake_redis: aioredis.Redis, tools: ToolServer, tmp_path: Path
) -> AsyncIterator[ToolRunner]:
    settings = load_settings(agent_file=str(agent(tmp_path / "agent.toml", tools.url)))
    runner = ToolRunner(settings, fake_redis)
    loops = [asyncio.create_task(loop) for loop in runner.loops()]
    try:
        yield runner
    finally:
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await runner.stop()


async def run_tool(redis: aioredis.Redis, name: str, timeout: float) -> ToolResult:
    """Ask the runner for ``name`` as a worker does, and wait for its answer on the call's ctl."""
    keys = CallKeys.for_call(CALL_SID)
    await redis.hset(keys.meta, "started", "1")
    call = ToolCall(CALL_SID, "MZ1", f"call_{name}", name, "{}", "+1", "+2", {})
    await redis.xadd(TOOL_CALLS_STREAM, call.encode())  # type: ignore[arg-type]
    async with asyncio.timeout(timeout):
        while True:
            reply: Any = await redis.xread({keys.ctl: "0-0"}, block=100)
            if reply:
                result = decode_control(reply[0][1][0][1])
                assert isinstance(result, ToolResult)
                return result


def rejected(reason: str) -> float:
    return REJECTED.labels(reason)._value.get()  # type: ignore[no-any-return]


async def test_a_tool_that_trickles_its_answer_is_cut_at_its_deadline(
    runner: ToolRunner, fake_redis: aioredis.Redis, tools: ToolServer
) -> None:
    started = time.monotonic()
    result = await run_tool(fake_redis, "trickle", timeout=20)
    elapsed = time.monotonic() - started
    assert result.outcome == "timeout", result
    assert "did not answer within 1500 ms" in json.loads(result.output)["error"]
    # The headers came at once and a byte a second after them: each read was quick, the whole
    # was not. Cut at 1.5 s (loosely bounded: a loaded machine), never the 60 s the body takes.
    assert 1.4 <= elapsed < 6.0, elapsed
    assert result.duration_ms < 6000


async def test_a_huge_answer_is_not_read_whole_and_not_used(
    runner: ToolRunner, fake_redis: aioredis.Redis, tools: ToolServer
) -> None:
    before = rejected("tool_answer_too_large")
    result = await run_tool(fake_redis, "huge", timeout=30)
    assert result.outcome == "error"
    error = json.loads(result.output)
    assert error["status"] == 200 and "longer than 65536 bytes" in error["error"], error
    assert rejected("tool_answer_too_large") == before + 1
    # The runner dropped the connection after 64 KiB: the server could write no more than what
    # the loopback socket buffers hold (a few MiB) of its 100 MiB.
    [sent] = await tools.wait_sent(1, timeout=20)
    assert sent < 16 * 1024 * 1024, sent


async def test_an_answer_just_past_the_cap_is_an_error_that_says_so(
    runner: ToolRunner, fake_redis: aioredis.Redis
) -> None:
    result = await run_tool(fake_redis, "big", timeout=10)  # 100 KiB
    assert result.outcome == "error"
    assert len(result.output) < 200 and str(MAX_TOOL_OUTPUT_BYTES) in result.output
