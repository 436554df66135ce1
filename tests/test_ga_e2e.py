"""Issue 28 end to end, every piece a real process over a real redis-server: the emulator (scripted
from its command line), the edge, transcoder, worker and tool runner, and the console. One call
makes a remote MCP call, goes silent, is asked "are you still there?" and is hung up on for
idleness; the console's API shows its MCP call, usage and estimated cost; its signed end-of-call
report reaches a receiver here with a schema-valid analysis, and, the tool runner being SIGKILLed
while the receiver holds the first delivery open, arrives again from the restarted tool runner
with the same Idempotency-Key: once past the receiver's dedup, twice on the wire."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis.asyncio as aioredis
from jsonschema import Draft202012Validator

from shared.idle import GOODBYE
from shared.streams import REPORTS_GROUP, REPORTS_STREAM
from sim.realtime_idle import IDLE_PROMPT
from sim.speech import speech
from sim.tool_server import signature_ok
from sim.twilio_call import place_call
from tests.conftest import (
    PROCESS_START_S,
    ROOT,
    RedisServer,
    free_port,
    port_open,
    wait_for,
)
from tests.stack import ProcessStack, process_env

pytestmark = [pytest.mark.slow, pytest.mark.redis_server]

SECRET = "report-signing-canary-3e1d"
AUTH_TOKEN = "twilio-auth-token-ga-e2e-4b7c"
CONSOLE_TOKEN = "console-token-ga-e2e-9d2a"
MCP_URL = "http://127.0.0.1:9/mcp"  # never reached: the emulator answers for it
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["resolved", "reason", "follow_up"],
    "additionalProperties": False,
    "properties": {
        "resolved": {"type": "boolean"},
        "reason": {"type": "string", "minLength": 3},
        "follow_up": {"type": "string", "enum": ["none", "call_back", "email"]},
    },
}
AGENT = f"""
instructions = "You are the shop's assistant."

[turn_detection]
type = "server_vad"
idle_timeout_ms = 1200
idle_prompts = 1
idle_action = "hang_up"

[[mcp_servers]]
label = "crm"
url = "{MCP_URL}"
allowed_tools = ["find_customer"]
require_approval = "never"

[analysis]
type = "object"
required = ["resolved", "reason", "follow_up"]
additionalProperties = false
[analysis.properties.resolved]
type = "boolean"
[analysis.properties.reason]
type = "string"
minLength = 3
[analysis.properties.follow_up]
type = "string"
enum = ["none", "call_back", "email"]
"""


@dataclass
class Receiver:
    """The operator's webhook on loopback: it checks each request's signature, keeps the first
    report of each Idempotency-Key (its dedup) and answers 200; it holds the very first request
    open (no answer) until its sender goes away."""

    requests: asyncio.Queue[tuple[dict[str, str], bytes]] = field(default_factory=asyncio.Queue)
    wire: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    kept: dict[str, dict[str, Any]] = field(default_factory=dict)  # Idempotency-Key -> report
    bad_signatures: int = 0
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")[1:]
            headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines if x)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        self.wire.append((headers, body))
        if not signature_ok(SECRET, headers.get("x-gateway-signature", ""), body, int(time.time())):
            self.bad_signatures += 1
            status = b"401 Unauthorized"
        else:
            self.kept.setdefault(headers.get("idempotency-key", ""), json.loads(body))
            status = b"200 OK"
        self.requests.put_nowait((headers, body))
        if len(self.wire) == 1:
            await reader.read()  # held open: returns once the sender's socket is gone
        else:
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        writer.close()

    async def next(self, timeout: float) -> tuple[dict[str, str], bytes]:
        return await asyncio.wait_for(self.requests.get(), timeout)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    server = await asyncio.start_server(rx.handle, "127.0.0.1", 0)
    rx.port = server.sockets[0].getsockname()[1]
    yield rx
    server.close()


def start_emulator(log: Path, port: int) -> subprocess.Popen[bytes]:
    """The emulator as a process, its MCP server and call scripted on its command line."""
    server = {"url": MCP_URL, "tools": [{"name": "find_customer", "output": "Ada Lovelace"}]}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sim.openai_realtime",
            "--port",
            str(port),
            "--mcp-server",
            json.dumps(server),
            "--mcp-call",
            '1:crm:find_customer:{"phone": "+15550100"}',
        ],
        cwd=ROOT,
        stdout=open(log, "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )


async def test_one_call_mcp_idle_hang_up_usage_in_the_api_and_its_report_delivered_once(
    redis_server: RedisServer, receiver: Receiver, tmp_path: Path
) -> None:
    began = time.monotonic()
    redis = aioredis.from_url(redis_server.url)
    await redis.flushall()
    emulator_port = free_port()
    emulator = start_emulator(tmp_path / "emulator.log", emulator_port)
    agent = tmp_path / "agent.toml"
    agent.write_text(AGENT)
    edge_port, console_port = free_port(), free_port()
    env = process_env(
        redis_server.url,
        edge_port,
        emulator_port,
        AGENT_FILE=str(agent),
        POST_CALL_WEBHOOK_URL=f"http://127.0.0.1:{receiver.port}/reports",
        TOOLS_SIGNING_SECRET=SECRET,
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        PUBLIC_URL=f"http://127.0.0.1:{edge_port}",
        CONSOLE_TOKEN=CONSOLE_TOKEN,
        CONSOLE_HOST="127.0.0.1",
        CONSOLE_PORT=str(console_port),
    )
    stack = ProcessStack(env, edge_port, emulator_port, tmp_path)
    modules = {
        "t0": "services.transcoder",
        "w0": "services.realtime_worker",
        "r0": "services.tool_runner",
        "e0": "services.twilio_edge",
        "c0": "services.console",
    }
    for name, module in modules.items():
        stack.start(name, module, {"CONSUMER_NAME": name})

    def logs() -> str:
        files = {**stack.logs, "emulator": tmp_path / "emulator.log"}
        return "\n".join(f"--- {n}\n{p.read_text()[-2500:]}" for n, p in files.items())

    api = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{console_port}",
        headers={"Authorization": f"Bearer {CONSOLE_TOKEN}"},
        timeout=20,
        trust_env=False,
    )
    try:
        for port in (emulator_port, edge_port, console_port):
            await wait_for(lambda port=port: port_open(port), timeout=PROCESS_START_S)
        # The caller asks one thing, then says nothing: the line streams silence until the
        # gateway ends the call (hold_after_s is the caller's patience, far above what it takes).
        result = await place_call(
            stack.media_url,
            np.concatenate([speech("Hello, who am I?"), np.zeros(800, np.int16)]),
            twiml_url=f"http://127.0.0.1:{edge_port}/twiml",
            auth_token=AUTH_TOKEN,
            hold_after_s=30.0,
            max_duration_s=45.0,
        )
        sid = result.call_sid
        assert result.closed_by_gateway and result.duration_s < 30, logs()
        call_s = result.duration_s

        # The report's first delivery arrives and is held open; the tool runner is killed in it.
        first_headers, first_body = await receiver.next(timeout=40)
        stack.kill("r0", signal.SIGKILL)
        pending: Any = await redis.xpending(REPORTS_STREAM, REPORTS_GROUP)
        assert pending["pending"] == 1  # nothing was acknowledged
        stack.start("r0", "services.tool_runner", {"CONSUMER_NAME": "r0"})  # as supervisord
        again_headers, again_body = await receiver.next(timeout=PROCESS_START_S)

        async def acknowledged() -> bool | None:
            info: Any = await redis.xpending(REPORTS_STREAM, REPORTS_GROUP)
            return info["pending"] == 0 or None

        await wait_for(acknowledged, timeout=20)

        async def ended() -> dict[str, Any] | None:
            view = (await api.get(f"/api/calls/{sid}")).json()
            return view if view.get("state") == "ended" else None  # type: ignore[no-any-return]

        view = await wait_for(ended, timeout=20)
    except BaseException:
        print(logs())  # shown with the failure
        raise
    finally:
        stack.stop_all()
        emulator.terminate()
        emulator.wait(10)
        await api.aclose()
        await redis.aclose()

    # --- the console's API: the MCP call, the idle prompt and hang-up, usage and cost
    assert view["outcome"] == "caller_idle", view
    (mcp,) = view["mcp_calls"]
    assert (mcp["server"], mcp["name"], mcp["outcome"]) == ("crm", "find_customer", "ok")
    assert mcp["arguments"] == {"phone": "+15550100"} and mcp["output"] == "Ada Lovelace"
    spoken = [t["text"] for t in view["transcript"] if t["role"] == "assistant"]
    assert any("Ada Lovelace" in text for text in spoken), spoken  # its answer was spoken
    assert spoken.count(IDLE_PROMPT) == 1 and spoken[-1] == GOODBYE, spoken
    usage = view["usage"]
    assert usage["responses"] >= 3  # the answer, the prompt, the goodbye (and the analysis)
    assert usage["tokens"]["audio_out"] > 0 and usage["tokens"]["text_in"] > 0
    assert usage["estimated_cost_usd"] > 0 and usage["unpriced_models"] == []

    # --- the report: signed, one Idempotency-Key, kept once, sent at least twice
    assert receiver.bad_signatures == 0
    assert first_headers["idempotency-key"] == again_headers["idempotency-key"] == f"report-{sid}"
    assert len(receiver.wire) >= 2 and list(receiver.kept) == [f"report-{sid}"]
    assert json.loads(first_body) == json.loads(again_body)  # built again, the same report
    report = receiver.kept[f"report-{sid}"]
    assert report["call_sid"] == sid and report["outcome"] == "caller_idle"
    Draft202012Validator(SCHEMA).validate(report["analysis"])
    assert "analysis_missing" not in report
    assert [(c["name"], c["outcome"]) for c in report["mcp_calls"]] == [("find_customer", "ok")]
    assert report["usage"] == usage and report["estimated_cost_usd"] == usage["estimated_cost_usd"]
    assert report["end"] >= report["start"]
    print(f"call {call_s:.1f} s; whole test {time.monotonic() - began:.1f} s")
