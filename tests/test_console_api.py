"""The console's API over the real stack: a real redis-server, edge, transcoder and worker, the
emulator, the Twilio REST stand-in on loopback, and simulated calls."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from shared.streams import CallEvent, CallKeys, decode_lifecycle, lifecycle_streams
from sim.speech import speech
from sim.twilio_call import place_call
from tests.conftest import RedisServer, wait_for
from tests.console_stack import AUTH_TOKEN, FROM_NUMBER, console_stack, sse_events

pytestmark = [pytest.mark.slow, pytest.mark.redis_server]


@pytest.fixture
async def redis_url(redis_server: RedisServer) -> str:
    client = aioredis.from_url(redis_server.url)
    await client.flushall()
    await client.aclose()
    return redis_server.url


async def inbound_call(stack, text: str, **kwargs):  # type: ignore[no-untyped-def]
    """A simulated inbound call through the edge's webhook, as a task."""
    return asyncio.create_task(
        place_call(
            stack.stack.media_url,
            speech(text),
            twiml_url=f"{stack.stack.base_url}/twiml",
            auth_token=AUTH_TOKEN,
            hold_after_s=kwargs.pop("hold_after_s", 1.0),
            **kwargs,
        )
    )


async def call_state(client, call_sid: str) -> dict:  # type: ignore[no-untyped-def]
    response = await client.get(f"/api/calls/{call_sid}")
    return response.json() if response.status_code == 200 else {}


async def test_every_api_route_needs_the_token_and_the_page_does_not(redis_url: str) -> None:
    async with console_stack(redis_url) as stack:
        async with stack.client(token=None) as anon, stack.client("wrong-token") as wrong:
            for path in ("/api/calls", "/api/calls/CA0123/events", "/api/calls/CA1/recording"):
                for client in (anon, wrong):
                    response = await client.get(path)
                    assert response.status_code == 401, path
                    assert response.headers["www-authenticate"] == "Bearer"
            assert (await anon.post("/api/calls", json={"to": "+15551230000"})).status_code == 401
            assert (await anon.post("/api/calls/CA1/hangup")).status_code == 401
            assert (await anon.get("/healthz")).json() == {"ok": True}
            page = await anon.get("/")
            assert page.status_code == 200 and "<html" in page.text
            for asset in ("/static/console.js", "/static/console.css"):
                assert (await anon.get(asset)).status_code == 200
            docs = await anon.get("/docs")
            assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
            assert "cdn" not in docs.text
            assert (await anon.get("/docs-assets/swagger-ui-bundle.js")).status_code == 200
            spec = (await anon.get("/openapi.json")).json()
            assert "/api/calls/{call_sid}/events" in spec["paths"]
        async with stack.client() as client:
            assert (await client.get("/api/calls")).json() == {"calls": [], "next_before": None}


async def test_an_inbound_call_listed_live_with_its_events_and_then_ended(redis_url: str) -> None:
    async with console_stack(redis_url) as stack, stack.client() as client:
        call = await inbound_call(stack, "Hello, I would like to book a table for two tonight.")

        async def listed() -> list:  # type: ignore[type-arg]
            return (await client.get("/api/calls")).json()["calls"]

        calls = await wait_for(listed, timeout=10)
        (line,) = calls
        sid = line["call_sid"]
        assert line["direction"] == "inbound" and line["state"] == "in_progress"
        assert line["from"] == "+15550001111" and line["to"] == "+15550002222"
        # Live: the stream follows the call as it happens, to its end.
        live = await sse_events(client, sid, timeout=40)
        result = await call
        kinds = [e["event"] for e in live]
        assert kinds[0] == "session" and kinds[-1] == "ended"
        assert {"caller", "assistant"} <= {e["data"].get("role") for e in live}
        assert all(e["id"] and e["data"]["kind"] == e["event"] for e in live)

        # Resumed with Last-Event-ID: exactly the entries after it, none twice, none lost.
        resumed = await sse_events(client, sid, last_event_id=live[1]["id"])
        assert [e["id"] for e in resumed] == [e["id"] for e in live[2:]]
        # After the end, from the start: the same entries again, and the stream closes.
        again = await sse_events(client, sid)
        assert [e["id"] for e in again] == [e["id"] for e in live]

        detail = await call_state(client, sid)
        assert detail["state"] == "ended"
        assert detail["outcome"] == "caller_hung_up" and detail["dialect"] == "GA"
        assert detail["ended_at"] >= detail["started_at"]
        roles = [t["role"] for t in detail["transcript"]]
        assert "caller" in roles and "assistant" in roles
        assert all(t["text"] and t["at"] >= detail["started_at"] for t in detail["transcript"])
        latency = detail["latency"]
        assert latency["first_reply_ms"] is not None
        # The simulator's own measure of the same delay (end of speech to first reply audio).
        assert result.reply_delay_ms is not None
        assert abs(latency["first_reply_ms"] - result.reply_delay_ms) < 400
        assert detail["recording"] is False
        assert (await client.get(f"/api/calls/{sid}/recording")).status_code == 404


async def test_tool_calls_barge_ins_and_errors_in_a_call_view(redis_url: str) -> None:
    """The tools issue's entries, written here as the worker will write them."""
    async with console_stack(redis_url) as stack, stack.client() as client:
        call = await inbound_call(stack, "What is the weather like in Paris today?")
        sid = await wait_for(lambda: _first_sid(client), timeout=10)
        keys = CallKeys.for_call(sid)
        written = [
            CallEvent(
                "tool_call", {"call_id": "c1", "name": "weather", "arguments": '{"city":"Paris"}'}
            ),
            CallEvent(
                "tool_result",
                {
                    "call_id": "c1",
                    "name": "weather",
                    "outcome": "ok",
                    "duration_ms": "412",
                    "output": "18 C, sunny",
                },
            ),
            CallEvent("tool_call", {"call_id": "c2", "name": "book", "arguments": "not json"}),
            CallEvent(
                "tool_result",
                {
                    "call_id": "c2",
                    "name": "book",
                    "outcome": "timeout",
                    "duration_ms": "5000",
                    "output": "",
                },
            ),
            CallEvent("barge_in", {"item_id": "item_7", "heard_ms": "1340"}),
            CallEvent("error", {"code": "rate_limit", "message": "slow down"}),
        ]
        for event in written:
            await stack.redis.xadd(keys.events, event.encode())
        seen = await sse_events(client, sid, until_kind="error")
        assert [e["event"] for e in seen if e["event"].startswith("tool")] == [
            "tool_call",
            "tool_result",
            "tool_call",
            "tool_result",
        ]
        await call
        detail = await call_state(client, sid)
        weather, book = detail["tools"]
        assert weather["name"] == "weather" and weather["arguments"] == {"city": "Paris"}
        assert weather["output"] == "18 C, sunny" and weather["outcome"] == "ok"
        assert weather["duration_ms"] == 412 and weather["ended_at"] >= weather["started_at"]
        assert book["arguments"] == "not json" and book["outcome"] == "timeout"
        assert detail["barge_ins"][0]["item_id"] == "item_7"
        assert detail["barge_ins"][0]["heard_ms"] == 1340
        assert detail["errors"] == [
            {"at": detail["errors"][0]["at"], "code": "rate_limit", "message": "slow down"}
        ]


async def _first_sid(client) -> str | None:  # type: ignore[no-untyped-def]
    calls = (await client.get("/api/calls")).json()["calls"]
    return calls[0]["call_sid"] if calls else None


async def test_a_supervisor_hangs_up_a_live_call(redis_url: str) -> None:
    async with console_stack(redis_url) as stack, stack.client() as client:
        long_speech = "This caller keeps talking. " * 6
        call = await inbound_call(stack, long_speech, max_duration_s=25.0)
        sid = await wait_for(lambda: _first_sid(client), timeout=10)
        response = await client.post(f"/api/calls/{sid}/hangup")
        assert response.status_code == 202
        result = await asyncio.wait_for(call, 10)  # the edge closed the stream, not the caller
        assert result.closed_by_gateway and result.duration_s < 10

        async def ended() -> dict | None:  # type: ignore[type-arg]
            detail = await call_state(client, sid)
            return detail if detail.get("state") == "ended" else None

        detail = await wait_for(ended, timeout=10)
        assert detail["outcome"] == "supervisor_hung_up"
        assert (await client.post(f"/api/calls/{sid}/hangup")).status_code == 409


@pytest.mark.parametrize("answer", ["human", "machine_end_beep"])
async def test_an_outbound_call_with_answering_machine_detection(
    redis_url: str, tmp_path: Path, answer: str
) -> None:
    agent = tmp_path / "agent.toml"
    message = "Hello, this is the clinic calling to confirm your appointment. Goodbye."
    agent.write_text(f'voicemail_message = "{message}"\n')
    rest = {"answer": answer, "callee_audio": speech("Hello? Who is calling please?")}
    async with console_stack(redis_url, agent_file=str(agent), rest=rest) as stack:
        async with stack.client() as client:
            body = {
                "to": "+15551230000",
                "instructions": "You call to confirm an appointment.",
                "greeting": "Hi, this is the clinic.",
                "voice": "verse",
                "parameters": {"campaign": "reminders"},
            }
            response = await client.post("/api/calls", json=body)
            assert response.status_code == 201, response.text
            sid = response.json()["call_sid"]
            simulated = stack.rest.calls[sid]
            # What Twilio was asked: our TwiML inline, AMD asynchronous, callbacks on the edge.
            form = simulated.form
            assert form["To"] == "+15551230000" and form["From"] == FROM_NUMBER
            assert form["MachineDetection"] == "DetectMessageEnd" and form["AsyncAmd"] == "true"
            edge = stack.stack.settings.public_url
            assert form["AsyncAmdStatusCallback"] == f"{edge}/amd"
            assert form["StatusCallback"] == f"{edge}/call-status"
            await asyncio.wait_for(simulated.done.wait(), 40)
            assert simulated.error == ""
            assert simulated.amd_answer == 204  # the edge verified the signed callback
            assert all(code == 204 for _, code in simulated.statuses), simulated.statuses
            # The overrides reached the pipeline as the stream's custom parameters.
            entries = await stack.redis.xrange(lifecycle_streams(1)[0])
            (started,) = [decode_lifecycle(f) for _, f in entries]
            assert started.call_sid == sid
            params = started.custom_parameters
            assert params["direction"] == "outbound" and params["voice"] == "verse"
            assert params["instructions"] == body["instructions"]
            assert params["greeting"] == body["greeting"] and params["campaign"] == "reminders"

            async def ended() -> dict | None:  # type: ignore[type-arg]
                detail = await call_state(client, sid)
                return detail if detail.get("state") == "ended" else None

            detail = await wait_for(ended, timeout=15)
            assert detail["direction"] == "outbound" and detail["to"] == "+15551230000"
            assert detail["answered_by"] == answer
            assert simulated.result is not None
            if answer == "human":
                assert simulated.said == [] and len(simulated.updates) == 0
                assert detail["outcome"] == "caller_hung_up"
                assert simulated.result.frames_received > 0  # the agent spoke to the person
            else:
                assert simulated.said == [message]  # after the beep, then the hang-up
                assert "<Hangup/>" in simulated.updates[0]["Twiml"]
                assert detail["outcome"] == "voicemail"
                # The stream ended when the voicemail took over, not at the simulator's limit.
                assert simulated.result.duration_s < 10
            listed = (await client.get("/api/calls")).json()["calls"]
            assert [c["call_sid"] for c in listed] == [sid]  # once, though dialed and started


async def test_an_outbound_call_nobody_answers(redis_url: str) -> None:
    async with console_stack(redis_url, rest={"answer": None}) as stack, stack.client() as client:
        response = await client.post("/api/calls", json={"to": "+15551230001"})
        assert response.status_code == 201
        sid = response.json()["call_sid"]
        await asyncio.wait_for(stack.rest.calls[sid].done.wait(), 10)
        (line,) = (await client.get("/api/calls")).json()["calls"]
        assert line["call_sid"] == sid and line["state"] == "ended"
        assert line["outcome"] == "no_answer" and line["direction"] == "outbound"
        ttl = await stack.redis.ttl(CallKeys.for_call(sid).meta)
        assert 0 < ttl <= stack.stack.settings.call_retention_seconds


async def test_bad_input_gets_clear_errors(redis_url: str) -> None:
    async with console_stack(redis_url) as stack, stack.client() as client:
        bad = await client.post("/api/calls", json={"to": "555-1234"})
        assert bad.status_code == 422 and "E.164" in bad.text
        bad = await client.post("/api/calls", json={"to": "+15551230000", "colour": "red"})
        assert bad.status_code == 422 and "colour" in bad.text
        bad = await client.post(
            "/api/calls", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert bad.status_code == 422
        # Twilio's refusal, passed on with its own message and code.
        refused = await client.post("/api/calls", json={"to": "+15005550001"})
        assert refused.status_code == 400
        detail = refused.json()["detail"]
        assert detail["twilio_code"] == 21211 and "not a valid phone number" in detail["message"]
        assert detail["more_info"].endswith("/21211")
        unreachable = await client.post("/api/calls", json={"to": "+15005550002"})
        assert (
            unreachable.status_code == 400 and unreachable.json()["detail"]["twilio_code"] == 21612
        )
        huge = await client.post(
            "/api/calls", json={"to": "+15551230000", "instructions": "x" * 200_000}
        )
        assert huge.status_code == 413 and "larger than" in huge.json()["detail"]
        long = await client.post(
            "/api/calls", json={"to": "+15551230000", "instructions": "x" * 2000}
        )
        assert long.status_code == 422
        reserved = await client.post(
            "/api/calls", json={"to": "+15551230000", "parameters": {"direction": "inbound"}}
        )
        assert reserved.status_code == 422 and "direction" in reserved.text
        for path in ("/api/calls/CAffff", "/api/calls/CAffff/events", "/api/calls/bad%7Bsid%7D"):
            missing = await client.get(path)
            assert missing.status_code == 404 and "no call" in missing.json()["detail"]
        assert (await client.post("/api/calls/CAffff/hangup")).status_code == 404
        assert (await client.get("/api/calls", params={"before": "yesterday"})).status_code == 422
        assert (await client.get("/api/calls", params={"limit": 0})).status_code == 422
        assert stack.rest.calls == {}  # nothing refused here placed a call
    # Wrong Twilio credentials are the gateway's fault: a 5xx naming Twilio's word.
    async with console_stack(redis_url, twilio_account_sid="AC" + "9" * 32) as stack:
        async with stack.client() as client:
            response = await client.post("/api/calls", json={"to": "+15551230000"})
            assert response.status_code == 502
            assert response.json()["detail"]["message"].endswith("Authenticate")


async def test_the_list_pages_newest_first(redis_url: str) -> None:
    async with console_stack(redis_url) as stack, stack.client() as client:
        from shared.streams import CallStarted, call_meta

        sids = [f"CA{i:032x}" for i in range(7)]
        for i, sid in enumerate(sids):
            started = CallStarted(
                sid, f"MZ{i:032x}", "AC1", {"From": f"+1555000{i:04d}"}, 10**15 + i
            )
            await stack.redis.hset(CallKeys.for_call(sid).meta, mapping=call_meta(started))
            await stack.redis.xadd(lifecycle_streams(1)[0], started.encode())
        page = (await client.get("/api/calls", params={"limit": 3})).json()
        got = [c["call_sid"] for c in page["calls"]]
        while page["next_before"]:
            page = (
                await client.get("/api/calls", params={"limit": 3, "before": page["next_before"]})
            ).json()
            got += [c["call_sid"] for c in page["calls"]]
        assert got == sids[::-1]
        assert json.loads(json.dumps(got)) == got
