"""The agent acts, through every stage as real processes over a real redis-server, in both
dialects: an HTTP tool called and answered, failing, slow and invalid calls, the model hanging
up and transferring after its last words were heard, and a tool runner or a worker SIGKILLed
while a tool runs."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pytest
import redis.asyncio as aioredis
from twilio.request_validator import RequestValidator

from shared.audio import mulaw_decode, mulaw_encode
from shared.streams import CallKeys, decode_event
from sim.openai_realtime import EmulatedSession, RealtimeEmulator
from sim.realtime_tools import ScriptedToolCall
from sim.speech import speech
from sim.tool_server import ToolServer
from sim.twilio_call import CallResult, place_call
from tests.audio_checks import pcm24_to_8k, similarity
from tests.conftest import RedisServer, free_port, port_open, wait_for
from tests.stack import ProcessStack, process_env

pytestmark = pytest.mark.slow

SECRET = "tool-signing-canary-7f3a9c"
TOKEN = "0123456789abcdef0123456789abcdef"
PUBLIC = "https://gw.example.com"
DIALECTS = {
    "ga": {"REALTIME_SCHEMA": "audio"},
    "beta": {"REALTIME_SCHEMA": "flat", "REALTIME_BETA_HEADER": "1"},
}


def agent_file(path: Path, tools_url: str) -> Path:
    path.write_text(
        f"""
instructions = "You are a shop's phone agent."
[[tools]]
name = "lookup_order"
description = "Look up an order."
url = "{tools_url}/order"
[tools.parameters]
type = "object"
required = ["order_id"]
[tools.parameters.properties.order_id]
type = "string"
pattern = "^[0-9]+$"

[[tools]]
name = "broken"
description = "A tool whose server fails."
url = "{tools_url}/fail"

[[tools]]
name = "slow"
description = "A tool that takes its time."
url = "{tools_url}/slow?ms=3000"
timeout_ms = 600

[[tools]]
name = "patient"
description = "A tool that takes 2.5 s."
url = "{tools_url}/slow?ms=2500"

[[tools]]
name = "hang_up"
description = "End the call."
action = "hang_up"

[[tools]]
name = "transfer"
description = "To a person."
action = "transfer"
destinations = {{ sales = "+15550100", support = "sip:support@pbx.example.com" }}
"""
    )
    return path


class Rig:
    def __init__(
        self,
        stack: ProcessStack,
        emulator: RealtimeEmulator,
        tools: ToolServer,
        redis: aioredis.Redis,
    ) -> None:
        self.stack, self.emulator, self.tools, self.redis = stack, emulator, tools, redis

    def start(self, name: str) -> None:
        module = {
            "t": "services.transcoder",
            "w": "services.realtime_worker",
            "e": "services.twilio_edge",
            "r": "services.tool_runner",
        }[name[0]]
        self.stack.start(name, module, {"CONSUMER_NAME": name})

    async def events(self, call_sid: str) -> list[Any]:
        entries: Any = await self.redis.xrange(CallKeys.for_call(call_sid).events)
        return [decode_event(fields) for _, fields in entries]

    def alive(self) -> None:
        for name, proc in self.stack.procs.items():
            assert proc.poll() is None, f"{name} died:\n{self.stack.logs[name].read_text()[-3000:]}"


@pytest.fixture(params=sorted(DIALECTS))
def dialect(request: pytest.FixtureRequest) -> str:
    """Both dialects, unless a test names one (the suite's time: the dialect layer is the same
    code for every tool, and each dialect's shapes are covered by the tests that run in both)."""
    return str(request.param)


@pytest.fixture
async def rig(dialect: str, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Rig]:
    redis = aioredis.from_url(redis_server.url)
    await redis.flushall()
    emulator = RealtimeEmulator(beta="accept" if dialect == "beta" else "refuse")
    await emulator.start()
    tools = await ToolServer(secret=SECRET).start()
    edge_port = free_port()
    env = process_env(
        redis_server.url,
        edge_port,
        emulator.port,
        AGENT_FILE=str(agent_file(tmp_path / "agent.toml", tools.url)),
        TOOLS_SIGNING_SECRET=SECRET,
        TWILIO_AUTH_TOKEN=TOKEN,
        PUBLIC_URL=PUBLIC,
        TOOL_STILL_WORKING_MS="60000",
        **DIALECTS[dialect],
    )
    rig = Rig(ProcessStack(env, edge_port, emulator.port, tmp_path), emulator, tools, redis)
    for name in ("t0", "w0", "r0", "e0"):
        rig.start(name)
    try:
        await wait_for(lambda: port_open(edge_port), timeout=20)
        yield rig
    finally:
        rig.stack.stop_all()
        await tools.stop()
        await emulator.stop()
        await redis.aclose()


def caller(text: str) -> np.ndarray:
    return mulaw_decode(mulaw_encode(speech(text)))


async def call(rig: Rig, text: str, **kwargs: Any) -> CallResult:
    kwargs.setdefault("hold_after_s", 2.5)
    kwargs.setdefault("auth_token", TOKEN)  # signed as Twilio signs the stream
    kwargs.setdefault("signed_url", PUBLIC.replace("https", "wss") + "/media")
    kwargs.setdefault("max_duration_s", 40)
    return await asyncio.wait_for(place_call(rig.stack.media_url, caller(text), **kwargs), 60)


def outputs(session: EmulatedSession) -> dict[str, str]:
    """function_call_output items the model got, by the name of the call they answer."""
    return {session.function_calls[o["call_id"]]: o["output"] for o in session.tool_outputs}


async def test_an_http_tool_is_called_and_its_answer_is_spoken(rig: Rig) -> None:
    rig.emulator.tool_calls = [ScriptedToolCall(1, "lookup_order", {"order_id": "123"})]
    result = await call(rig, "Where is my order one two three?")
    session = rig.emulator.sessions[0]
    [request] = rig.tools.requests
    body = request.json
    assert request.path == "/order" and request.method == "POST"
    assert body["call_sid"] == result.call_sid and body["stream_sid"] == result.stream_sid
    assert body["name"] == "lookup_order" and body["arguments"] == {"order_id": "123"}
    [call_id] = list(session.function_calls)
    assert body["call_id"] == call_id == request.headers["idempotency-key"]
    assert request.headers["content-type"] == "application/json"
    assert "x-gateway-signature" in request.headers  # and the server verified it (else 401)
    assert json.loads(outputs(session)["lookup_order"]) == {
        "order": "123",
        "status": "shipped",
        "eta": "tomorrow",
    }
    # The model answered with what the tool said, and the caller heard that answer.
    answer = session.responses[-1]
    assert answer.instructions is None and len(session.responses) >= 2
    spoken = pcm24_to_8k(bytes(answer.audio))
    assert similarity(spoken, mulaw_decode(result.received_audio)) >= 0.9
    kinds = [e.kind for e in await rig.events(result.call_sid)]
    assert "tool_call" in kinds and "tool_result" in kinds
    [done] = [e for e in await rig.events(result.call_sid) if e.kind == "tool_result"]
    assert done.data["outcome"] == "ok" and done.data["call_id"] == call_id
    rig.alive()


@pytest.mark.parametrize("dialect", ["ga"])
async def test_failing_slow_and_invalid_calls_each_tell_the_model_what_went_wrong(
    rig: Rig,
) -> None:
    rig.emulator.tool_calls = [
        ScriptedToolCall(1, "broken", {}),
        ScriptedToolCall(1, "slow", {}),
        ScriptedToolCall(1, "lookup_order", {"order_id": "not digits"}),
    ]
    result = await call(rig, "Please check everything for me.", hold_after_s=3.0)
    session = rig.emulator.sessions[0]
    got = outputs(session)
    assert json.loads(got["broken"]) == {"error": "the tool answered HTTP 500", "status": 500}
    assert "did not answer within 600 ms" in json.loads(got["slow"])["error"]
    assert "invalid arguments" in json.loads(got["lookup_order"])["error"]
    # The invalid call was never sent to the tool.
    assert sorted(r.path.split("?")[0] for r in rig.tools.requests) == ["/fail", "/slow"]
    outcomes = {
        e.data["name"]: e.data["outcome"]
        for e in await rig.events(result.call_sid)
        if e.kind == "tool_result"
    }
    assert outcomes == {"broken": "error", "slow": "timeout", "lookup_order": "invalid_arguments"}
    rig.alive()


async def _after_stream(rig: Rig, result: CallResult) -> tuple[int, str]:
    """Twilio's <Connect action> request once the stream ended, signed as Twilio signs it."""
    form = {
        "CallSid": result.call_sid,
        "AccountSid": result.account_sid,
        "From": "+15550001111",
        "To": "+15550002222",
        "CallStatus": "in-progress",
    }
    url = f"{PUBLIC}/connect-action"
    signature = RequestValidator(TOKEN).compute_signature(url, form)
    body = urlencode(form).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.stack.edge_port)
    writer.write(
        b"POST /connect-action HTTP/1.1\r\nHost: gw.example.com\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        + f"X-Twilio-Signature: {signature}\r\nContent-Length: {len(body)}\r\n".encode()
        + b"Connection: close\r\n\r\n"
        + body
    )
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return int(raw.split(b" ", 2)[1]), raw.partition(b"\r\n\r\n")[2].decode()


def heard_ms(result: CallResult, item_id: str) -> int:
    """How far into the reply item the caller had heard, by the marks Twilio returned (a mark
    comes back only once the audio before it has played)."""
    ends = [int(n.rpartition(":")[2]) for n, _ in result.marks_returned if n.startswith(item_id)]
    return max(ends, default=0)


async def test_the_model_hangs_up_after_the_goodbye_was_heard(rig: Rig) -> None:
    rig.emulator.tool_calls = [ScriptedToolCall(1, "hang_up", {})]
    result = await call(rig, "Thank you, that is all, goodbye.", hold_after_s=6.0)
    session = rig.emulator.sessions[0]
    goodbye = session.responses[0]
    assert result.closed_by_gateway
    # The whole goodbye played before the stream ended (the caller heard every word).
    assert heard_ms(result, goodbye.item_id) >= len(goodbye.audio) / 48 - 5  # PCM16 at 24 kHz
    status, twiml = await _after_stream(rig, result)
    assert status == 200 and "<Hangup/>" in twiml
    ended = [e for e in await rig.events(result.call_sid) if e.kind == "ended"]
    assert ended and ended[-1].data["reason"] == "model_hung_up"
    rig.alive()


async def test_a_transfer_dials_the_chosen_destination_after_the_hand_off(rig: Rig) -> None:
    rig.emulator.tool_calls = [ScriptedToolCall(1, "transfer", {"destination": "sales"})]
    result = await call(rig, "Can I talk to someone in sales please?", hold_after_s=6.0)
    session = rig.emulator.sessions[0]
    assert result.closed_by_gateway
    hand_off = session.responses[0]
    assert heard_ms(result, hand_off.item_id) >= len(hand_off.audio) / 48 - 5
    status, twiml = await _after_stream(rig, result)
    assert status == 200
    assert '<Dial callerId="+15550002222"><Number>+15550100</Number></Dial>' in twiml
    # Unsigned, the action request is refused.
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.stack.edge_port)
    writer.write(
        b"POST /connect-action HTTP/1.1\r\nHost: gw.example.com\r\nContent-Length: 0\r\n"
        b"Connection: close\r\n\r\n"
    )
    assert b" 403 " in (await asyncio.wait_for(reader.read(), 10)).split(b"\r\n")[0]
    writer.close()
    rig.alive()


@pytest.mark.parametrize(("victim", "dialect"), [("r0", "ga"), ("w0", "beta")])
async def test_a_stage_killed_while_a_tool_runs_still_gets_the_caller_the_answer(
    rig: Rig, victim: str
) -> None:
    rig.emulator.tool_calls = [ScriptedToolCall(1, "patient", {})]
    placed = asyncio.create_task(call(rig, "Could you look that up for me?", hold_after_s=5.0))
    await rig.tools.wait_for(1, timeout=20)
    rig.stack.kill(victim, signal.SIGKILL)
    rig.start(victim)  # as supervisord does, same consumer name
    result = await placed
    if victim == "r0":
        # Run again from the start, with the same Idempotency-Key; the model got one answer.
        first, again = await rig.tools.wait_for(2, timeout=20)
        assert first.headers["idempotency-key"] == again.headers["idempotency-key"]
        session = rig.emulator.sessions[0]
        assert len(session.tool_outputs) == 1
        assert len(session.responses) >= 2
    else:
        # The function call went with the old session: the answer reaches the new one as text.
        assert len(rig.emulator.sessions) >= 2
        new = rig.emulator.sessions[-1]
        notes = [
            e
            for e in new.client_events
            if e["type"] == "conversation.item.create"
            and e["item"].get("role") == "system"
            and "patient" in e["item"]["content"][0]["text"]
        ]
        assert notes and '"status": "shipped"' in notes[0]["item"]["content"][0]["text"]
        assert new.responses, "the caller got no answer in the new session"
    assert result.frames_received > 0
    rig.alive()
