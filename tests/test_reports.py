"""End-of-call reports: built from the call's events, signed like the tool requests with one
Idempotency-Key, and delivered at least once through a consumer group, even when the sender is
killed mid-delivery (its restart sends the pending report again)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from services.tool_runner.reports import ReportSender
from shared.call_report import (
    ReportRequest,
    build_report,
    decode_report_request,
    delivered,
    report_body,
    report_headers,
)
from shared.call_view import Origin, TimedEvent
from shared.runtime.settings import load_settings
from shared.streams import (
    META_PARAMS,
    META_STARTED_US,
    REPORTS_GROUP,
    REPORTS_STREAM,
    CallEvent,
    CallKeys,
    StreamEntryError,
)
from shared.usage import DEFAULT_PRICES
from sim.tool_server import signature_ok
from tests.conftest import RedisServer, wait_for

SID = "CA" + "1" * 32
SECRET = "report-secret"
EVENTS = [
    CallEvent("session", {"combo": "GA"}),
    CallEvent("transcript", {"role": "caller", "text": "Where is my order?", "item_id": "u1"}),
    CallEvent("tool_call", {"call_id": "c1", "name": "lookup_order", "arguments": '{"id":"7"}'}),
    CallEvent("dtmf", {"digit": "5"}),
    CallEvent("barge_in", {"item_id": "a1", "heard_ms": "800"}),
    CallEvent("mcp_call", {"server": "crm", "name": "find", "outcome": "ok", "output": "Ada"}),
    CallEvent("usage", {"model": "gpt-realtime", "response_id": "r1", "audio_out": "1000"}),
    CallEvent("ended", {"reason": "caller_hung_up"}),
]
META = {
    META_STARTED_US: b"1700000000000000",
    META_PARAMS: b'{"From": "+15550001111", "To": "+15550002222"}',
}


def test_the_report_says_what_happened_on_the_call() -> None:
    origin = Origin.from_meta(SID, META)
    assert origin is not None
    timed = [TimedEvent(f"{1700000000000 + i}-0".encode(), e) for i, e in enumerate(EVENTS)]
    analysis = {"resolved": True, "reason": "order found"}
    report = build_report(origin, META, timed, ReportRequest(SID, analysis), DEFAULT_PRICES)
    assert report["call_sid"] == SID and report["direction"] == "inbound"
    assert report["from"] == "+15550001111" and report["to"] == "+15550002222"
    assert report["outcome"] == "caller_hung_up" and report["end"] >= report["start"]
    assert report["transcript"][0]["text"] == "Where is my order?"
    assert report["tool_calls"][0]["name"] == "lookup_order"
    assert report["mcp_calls"][0]["output"] == "Ada"
    assert report["dtmf"][0]["digit"] == "5" and report["barge_ins"][0]["heard_ms"] == 800
    assert report["usage"]["tokens"] == {"audio_out": 1000}
    assert report["estimated_cost_usd"] == pytest.approx(1000 * 64 / 1e6)
    assert report["analysis"] == analysis and "analysis_missing" not in report
    without = build_report(origin, META, timed, ReportRequest(SID, None, "the caller hung up"), {})
    assert without["analysis"] is None and without["analysis_missing"] == "the caller hung up"
    json.loads(report_body(report))


def test_the_request_entry_round_trips_and_garbage_is_refused() -> None:
    request = ReportRequest(SID, {"resolved": False}, "")
    assert decode_report_request(request.encode()) == request
    missing = ReportRequest(SID, None, "no session")
    assert decode_report_request(missing.encode()) == missing
    for fields in ({b"call_sid": b"no {braces}"}, {b"call_sid": SID.encode(), b"analysis": b"[1]"}):
        with pytest.raises(StreamEntryError):
            decode_report_request(fields)


def test_signed_like_the_tool_requests_with_one_idempotency_key() -> None:
    body = b'{"call_sid": "x"}'
    now = int(time.time())
    headers = report_headers(SID, body, SECRET, now)
    assert headers["Idempotency-Key"] == f"report-{SID}"
    assert signature_ok(SECRET, headers["X-Gateway-Signature"], body, now)
    assert not signature_ok(SECRET, headers["X-Gateway-Signature"], body + b" ", now)
    assert "X-Gateway-Signature" not in report_headers(SID, body, None, now)
    assert [delivered(s) for s in (200, 204, 408, 429, 500, 503, 400, 404, 301)] == [
        True, True, None, None, None, None, False, False, False,
    ]  # fmt: skip


@dataclass
class Receiver:
    """A webhook receiver on loopback: records each request; the first ``hang`` ones are never
    answered (the sender is killed while it waits)."""

    hang: int = 0
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")[1:]
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines if x)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append((headers, body))
        if len(self.requests) <= self.hang:
            # A receiver that never answers: held until the server closes and cancels it.
            await asyncio.get_running_loop().create_future()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver(hang=1)
    server = await asyncio.start_server(rx.handle, "127.0.0.1", 0)
    rx.port = server.sockets[0].getsockname()[1]
    yield rx
    server.close()


async def _sender(redis_url: str, url: str) -> tuple[list[asyncio.Task[None]], ReportSender]:
    settings = load_settings(
        redis_url=redis_url,
        post_call_webhook_url=url,
        tools_signing_secret=SECRET,
        consumer_name="runner-1",
        owner_idle_ms=1000,
    )
    http = httpx.AsyncClient(trust_env=False)
    sender = ReportSender(settings, aioredis.from_url(redis_url), http)
    return [asyncio.create_task(loop) for loop in sender.loops()], sender


@pytest.mark.redis_server
async def test_a_report_is_delivered_again_after_its_sender_is_killed_mid_delivery(
    redis_server: RedisServer, receiver: Receiver
) -> None:
    redis = aioredis.from_url(redis_server.url)
    await redis.flushall()
    keys = CallKeys.for_call(SID)
    await redis.hset(keys.meta, mapping=META)
    for event in EVENTS:
        await redis.xadd(keys.events, event.encode())  # type: ignore[arg-type]
    await redis.xadd(REPORTS_STREAM, ReportRequest(SID, {"resolved": True}).encode())  # type: ignore[arg-type]
    url = f"http://127.0.0.1:{receiver.port}/reports"

    first, sender = await _sender(redis_server.url, url)
    await wait_for(lambda: len(receiver.requests) == 1 or None, timeout=10)
    for task in first:  # killed mid-delivery: nothing acknowledged
        task.cancel()
    await sender.stop()
    await asyncio.gather(*first, return_exceptions=True)
    pending: Any = await redis.xpending(REPORTS_STREAM, REPORTS_GROUP)
    assert pending["pending"] == 1

    again, sender = await _sender(redis_server.url, url)  # the restarted stage
    try:
        await wait_for(lambda: len(receiver.requests) == 2 or None, timeout=10)

        async def acknowledged() -> bool | None:
            info: Any = await redis.xpending(REPORTS_STREAM, REPORTS_GROUP)
            return info["pending"] == 0 or None

        await wait_for(acknowledged, timeout=10)
    finally:
        for task in again:
            task.cancel()
        await sender.stop()
        await asyncio.gather(*again, return_exceptions=True)
    keys_seen = {h["idempotency-key"] for h, _ in receiver.requests}
    assert keys_seen == {f"report-{SID}"}  # the same on every try
    now = int(time.time())
    for headers, body in receiver.requests:
        assert signature_ok(SECRET, headers["x-gateway-signature"], body, now)
    report = json.loads(receiver.requests[-1][1])
    assert report["call_sid"] == SID and report["analysis"] == {"resolved": True}
    assert report["outcome"] == "caller_hung_up"
    await redis.aclose()


# --- the model's analysis ---------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "required": ["resolved", "reason", "follow_up"],
    "additionalProperties": False,
    "properties": {
        "resolved": {"type": "boolean"},
        "reason": {"type": "string", "minLength": 3},
        "follow_up": {"type": "string", "enum": ["none", "call_back", "email"]},
    },
}


def test_the_analysis_key_is_a_json_schema_of_an_object() -> None:
    from shared.agent import AgentFileError, parse_agent

    assert parse_agent({"analysis": SCHEMA}).analysis == SCHEMA
    for bad, needle in (
        ({"type": "string"}, "analysis: must be a JSON Schema of an object"),
        ({"type": "object", "required": "resolved"}, "analysis: not a valid JSON Schema"),
    ):
        with pytest.raises(AgentFileError, match=needle):
            parse_agent({"analysis": bad}, "AGENT_FILE=a.toml")


def test_the_analysis_request_is_an_out_of_band_text_response_valid_in_both_dialects() -> None:
    import openai.types.beta.realtime as beta_types
    import openai.types.realtime as ga_types
    from pydantic import TypeAdapter

    from shared.call_report import analysis_instructions
    from shared.realtime_dialect import Combo, RealtimeDialect, SessionConfig
    from tests.test_realtime_dialect import unknown_keys

    config = SessionConfig("alloy", "Hi.", "server_vad")
    for combo, types in ((Combo.GA, ga_types), (Combo.BETA, beta_types)):
        event = RealtimeDialect.for_combo(combo, config).analysis_request(
            analysis_instructions(SCHEMA)
        )
        assert event["response"]["conversation"] == "none"
        model = TypeAdapter(types.RealtimeClientEvent).validate_python(event)
        assert unknown_keys(model) == [] and model.model_dump(exclude_unset=True) == event
    ga = RealtimeDialect.for_combo(Combo.GA, config).analysis_request("x")
    assert ga["response"]["output_modalities"] == ["text"]


def _done(rid: str, text: str) -> str:
    item = {"type": "message", "content": [{"type": "output_text", "text": text}]}
    return json.dumps({"type": "response.done", "response": {"id": rid, "output": [item]}})


def test_waiting_for_the_analysis() -> None:
    from shared.call_report import AnalysisWait

    good = '{"resolved": true, "reason": "order found", "follow_up": "none"}'
    wait = AnalysisWait(SCHEMA)
    not_active = {"type": "error", "error": {"code": "response_cancel_not_active"}}
    assert not wait.feed(json.dumps(not_active))  # our cancel of nothing
    assert not wait.feed(_done("old", "late words of the last reply"))
    assert not wait.feed(json.dumps({"type": "response.created", "response": {"id": "r9"}}))
    assert not wait.feed(b"\xff not json")
    assert wait.feed("```json\n" + good + "\n```") is False
    assert wait.feed(_done("r9", "```json\n" + good + "\n```"))
    assert wait.result == (json.loads(good), "")
    for text, why in (
        ("Sure! The call went well.", "not JSON"),
        ('{"resolved": "yes", "reason": "x", "follow_up": "none"}', "does not fit the schema"),
        ("[1, 2]", "not a JSON object"),
    ):
        wait = AnalysisWait(SCHEMA)
        wait.feed(json.dumps({"type": "response.created", "response": {"id": "r1"}}))
        assert wait.feed(_done("r1", text))
        assert wait.result is not None and wait.result[0] is None and why in wait.result[1]
    refused = AnalysisWait(SCHEMA)
    assert refused.feed(json.dumps({"type": "error", "error": {"code": "rate_limit_exceeded"}}))
    assert refused.result == (None, "the model refused the analysis request (rate_limit_exceeded)")


def test_the_emulator_answers_with_json_that_fits_the_schema() -> None:
    from jsonschema import Draft202012Validator

    from shared.call_report import analysis_instructions
    from sim.realtime_analysis import analysis_answer

    answer = analysis_answer(analysis_instructions(SCHEMA))
    assert answer is not None
    Draft202012Validator(SCHEMA).validate(json.loads(answer))
    assert analysis_answer("Greet the caller now.") is None


ANALYSED_AGENT = """
instructions = "You are the shop's assistant."
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


@pytest.mark.slow
@pytest.mark.redis_server
async def test_a_call_ends_with_a_signed_report_and_a_schema_valid_analysis(
    redis_server: RedisServer, receiver: Receiver, tmp_path: Any
) -> None:
    from jsonschema import Draft202012Validator

    from sim.speech import speech
    from sim.twilio_call import place_call
    from tests.console_stack import AUTH_TOKEN, console_stack

    receiver.hang = 0
    redis = aioredis.from_url(redis_server.url)
    await redis.flushall()
    await redis.aclose()
    path = tmp_path / "agent.toml"
    path.write_text(ANALYSED_AGENT)
    async with console_stack(
        redis_server.url,
        agent_file=str(path),
        post_call_webhook_url=f"http://127.0.0.1:{receiver.port}/reports",
        tools_signing_secret=SECRET,
    ) as stack:
        result = await place_call(
            stack.stack.media_url,
            speech("Hello, where is my order?"),
            twiml_url=f"{stack.stack.base_url}/twiml",
            auth_token=AUTH_TOKEN,
            hold_after_s=1.0,
        )
        await wait_for(lambda: receiver.requests or None, timeout=20)
    (headers, body), *_ = receiver.requests
    assert signature_ok(SECRET, headers["x-gateway-signature"], body, int(time.time()))
    assert headers["idempotency-key"] == f"report-{result.call_sid}"
    report = json.loads(body)
    assert report["call_sid"] == result.call_sid and report["outcome"] == "caller_hung_up"
    assert [t["role"] for t in report["transcript"]][:2] == ["caller", "assistant"]
    Draft202012Validator(SCHEMA).validate(report["analysis"])
    assert report["usage"]["tokens"]["audio_out"] > 0 and report["estimated_cost_usd"] > 0
    # The analysis never reached the caller, nor the conversation's transcript.
    assert not any("{" in t["text"] for t in report["transcript"])


class _Socket:
    """A model session's socket as the worker's analysis step uses it (send, recv)."""

    def __init__(self, replies: list[str] | None = None, closed: bool = False) -> None:
        self.sent: list[dict[str, Any]] = []
        self.replies = list(replies or [])
        self.closed = closed

    async def send(self, text: str) -> None:
        from websockets.exceptions import ConnectionClosed

        if self.closed:
            raise ConnectionClosed(None, None)
        self.sent.append(json.loads(text))

    async def recv(self) -> str:
        if self.replies:
            return self.replies.pop(0)
        await asyncio.get_running_loop().create_future()  # a model that never answers
        raise AssertionError


async def _analyse(ws: _Socket, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    from types import SimpleNamespace

    from services.realtime_worker import call as worker_call
    from shared.realtime_dialect import Combo, RealtimeDialect, SessionConfig

    monkeypatch.setattr(worker_call, "ANALYSIS_TIMEOUT_S", 0.2)
    path = tmp_path / "agent.toml"
    path.write_text(ANALYSED_AGENT)
    settings = load_settings(agent_file=str(path), post_call_webhook_url="http://127.0.0.1:9/r")
    dialect = RealtimeDialect.for_combo(Combo.GA, SessionConfig("alloy", "Hi.", "server_vad"))
    call = SimpleNamespace(
        host=SimpleNamespace(settings=settings),
        core=SimpleNamespace(dialect=dialect),
        analysis=(None, "the model session was gone before the analysis could be asked"),
    )
    await worker_call.RealtimeCall._analyse(call, ws)  # type: ignore[arg-type]
    return call.analysis


async def test_the_worker_asks_the_session_and_says_why_when_it_cannot(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = '{"resolved": false, "reason": "no order", "follow_up": "email"}'
    created = json.dumps({"type": "response.created", "response": {"id": "r1"}})
    ws = _Socket([created, _done("r1", good)])
    assert await _analyse(ws, tmp_path, monkeypatch) == (json.loads(good), "")
    cancel, request = ws.sent
    assert cancel == {"type": "response.cancel"}
    assert request["response"]["conversation"] == "none"
    assert request["response"]["output_modalities"] == ["text"]
    silent = await _analyse(_Socket(), tmp_path, monkeypatch)
    assert silent == (None, "the model did not answer within 0.2 s")
    gone = await _analyse(_Socket(closed=True), tmp_path, monkeypatch)
    assert gone == (None, "the model session closed before it answered")
