"""A call that survives its edge: real processes over a real redis-server, two edges behind one
address (sim.balancer), Twilio's side played by the simulator, which requests the stream's
``<Connect action>`` (signed) when the stream ends and follows the TwiML it gets."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from shared.audio import mulaw_decode, mulaw_encode
from shared.playback import parse_mark_name
from shared.resumption import RESUME_PARAMETER
from shared.streams import (
    META_ENDED,
    META_RESUMES,
    META_STREAM_SID,
    CallKeys,
    InboundFrame,
    StreamEnd,
    decode_event,
    decode_inbound,
)
from sim.balancer import Balancer
from sim.openai_realtime import RealtimeEmulator
from sim.speech import silence, speech
from sim.twilio_call import CallScript, new_sid, place_call
from tests.audio_checks import pcm24_to_8k, similarity
from tests.conftest import RedisServer, free_port, port_open, wait_for
from tests.stack import ProcessStack, in_process_stack, process_env

pytestmark = pytest.mark.slow

FRAME_24K = 960  # bytes of PCM16 at 24 kHz in one 20 ms frame
TOKEN = "resume-test-auth-token"
DIALECTS = {
    "ga": {"REALTIME_SCHEMA": "audio"},
    "beta": {"REALTIME_SCHEMA": "flat", "REALTIME_BETA_HEADER": "1"},
}


@dataclass
class TwoEdges:
    procs: ProcessStack
    emulator: RealtimeEmulator
    balancer: Balancer
    redis: aioredis.Redis


@pytest.fixture
async def two_edges(
    request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[Any]:
    """``start(dialect)``: a transcoder, a worker and two edges, the edges behind a balancer."""
    started: list[TwoEdges] = []

    async def start(dialect: str) -> TwoEdges:
        redis = aioredis.from_url(redis_server.url)
        await redis.flushall()
        emulator = RealtimeEmulator(beta="accept" if dialect == "beta" else "refuse")
        await emulator.start()
        ports = [free_port(), free_port()]
        env = process_env(
            redis_server.url, ports[0], emulator.port, TWILIO_AUTH_TOKEN=TOKEN, **DIALECTS[dialect]
        )
        procs = ProcessStack(env, ports[0], emulator.port, tmp_path)
        procs.start("t0", "services.transcoder", {"CONSUMER_NAME": "t0"})
        procs.start("w0", "services.realtime_worker", {"CONSUMER_NAME": "w0"})
        procs.start("e0", "services.twilio_edge", {"CONSUMER_NAME": "e0"})
        procs.start(
            "e1",
            "services.twilio_edge",
            {"CONSUMER_NAME": "e1", "EDGE_PORT": str(ports[1]), "METRICS_PORT": str(free_port())},
        )
        balancer = await Balancer([("127.0.0.1", p) for p in ports]).start()
        stack = TwoEdges(procs, emulator, balancer, redis)
        started.append(stack)
        for port in ports:
            await wait_for(lambda port=port: port_open(port), timeout=20)
        return stack

    yield start
    for stack in started:
        stack.procs.stop_all()
        await stack.balancer.stop()
        await stack.emulator.stop()
        await stack.redis.aclose()


def _marks(names: list[tuple[str, float]], item: str) -> list[int]:
    out = []
    for name, _ in names:
        parsed = parse_mark_name(name)
        if parsed and parsed[0] == item:
            out.append(parsed[1])
    return out


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
async def test_the_call_resumes_on_the_other_edge_when_its_edge_is_killed_mid_reply(
    two_edges: Any, dialect: str
) -> None:
    stack: TwoEdges = await two_edges(dialect)
    hello = mulaw_decode(mulaw_encode(speech("Hello there.")))
    goodbye = mulaw_decode(mulaw_encode(speech("Goodbye.")))
    call_sid = new_sid("CA")
    keys = CallKeys.for_call(call_sid)
    # The caller says hello and listens; on the new stream they listen on (the rest of the
    # reply), then say goodbye and hang up once it has been answered.
    after = CallScript(np.concatenate([silence(5000), goodbye]), hold_after_s=1.5)
    base = stack.balancer.base_url
    call = asyncio.create_task(
        place_call(
            f"ws://127.0.0.1:{stack.balancer.port}/media",
            hello,
            call_sid=call_sid,
            twiml_url=f"{base}/twiml",
            auth_token=TOKEN,
            hold_after_s=30,
            max_duration_s=40,
            next_script=after,
        )
    )

    async def heard_some_of_the_reply() -> bool:
        return len(await stack.redis.xrange(keys.ctl)) >= 4  # four marks: 400 ms heard

    await wait_for(heard_some_of_the_reply, timeout=30)
    killed_at = time.time()
    stack.procs.kill("e0")  # SIGKILL: no stop, no close frame, nothing flushed
    result = await asyncio.wait_for(call, 60)
    await stack.emulator.sessions[-1].wait_closed(timeout=15)

    # Twilio asked what next, the other edge answered a new stream, and the call went on there.
    assert result.closed_by_gateway and result.close_code in (None, 1006), result.close_code
    assert [status for _, status in result.action_requests] == [200]
    assert len(result.next_streams) == 1
    resumed = result.next_streams[0]
    assert resumed.stream_sid != result.stream_sid and resumed.call_sid == call_sid
    assert not resumed.violations, resumed.violations
    assert stack.balancer.connections[1] >= 2  # the action request and the stream: edge e1
    # The same Realtime session: the worker never saw a new call.
    (session,) = stack.emulator.sessions
    assert not session.expired
    # The caller's audio before and after reached it, in order, none twice; what the killed
    # edge had not yet written is all that may be missing.
    sent = result.frames_sent + resumed.frames_sent
    got = len(session.input_audio) // FRAME_24K
    assert sent - 10 <= got <= sent, (got, result.frames_sent, resumed.frames_sent)
    heard = pcm24_to_8k(bytes(session.input_audio))
    assert similarity(hello, heard[: len(hello) + 4000]) >= 0.9
    assert similarity(goodbye, heard[-resumed.frames_sent * 160 :]) >= 0.9  # the new stream's
    # The reply goes on from the last mark the caller's phone returned, to its end.
    item, heard_ms = parse_mark_name(result.marks_returned[-1][0]) or ("", 0)
    first_reply = session.responses[0]
    assert first_reply.item_id == item and first_reply.status == "completed"
    again = _marks(resumed.marks_received, item)
    assert again and heard_ms < again[0] <= heard_ms + 100, (heard_ms, again[:3])
    reply_ms = len(first_reply.audio) // 48  # PCM16 at 24 kHz: 48 bytes a ms
    assert abs(again[-1] - reply_ms) <= 20, (again[-1], reply_ms)
    assert again[-1] in _marks(resumed.marks_returned, item)  # heard to its end
    # What was sent on the first stream past the mark is what the second one starts with.
    start = heard_ms * 8
    overlap = min(len(result.received_audio) - start, len(resumed.received_audio), 4000)
    assert overlap >= 800, overlap
    assert resumed.received_audio[:overlap] == result.received_audio[start : start + overlap]
    # The call ended once, at the caller's hang-up on the new stream, and says it was resumed.
    meta = await stack.redis.hgetall(keys.meta)
    assert meta[META_ENDED] == b"stop" and meta[META_RESUMES] == b"1"
    kinds = [decode_event(fields).kind for _, fields in await stack.redis.xrange(keys.events)]
    assert kinds.count("stream_resumed") == 1
    # The figures for the note: from the kill to the simulated Twilio seeing the stream end,
    # then its action request and the new stream's start (Twilio's own part on a live call),
    # then the new stream's first frame in Redis and its first reply audio (the gateway's).
    inbound = [decode_inbound(f) for _, f in await stack.redis.xrange(keys.in_pcmu)]
    new_start = resumed.started_wall or 0.0
    first_new = min(
        e.stamp_us / 1e6
        for e in inbound
        if isinstance(e, InboundFrame) and e.stamp_us / 1e6 >= new_start
    )
    closed_at = (result.started_wall or 0.0) + result.duration_s
    first_audio = new_start + resumed.reply_chunks[0].received_at
    print(
        f"\n[{dialect}] kill -> stream seen closed {closed_at - killed_at:.3f} s; -> action and "
        f"new start {new_start - closed_at:.3f} s; -> first new frame in redis "
        f"{first_new - new_start:.3f} s, first reply audio on it {first_audio - new_start:.3f} s; "
        f"reply resumed at {heard_ms} of {reply_ms} ms; {sent - got} of {sent} caller frames lost"
    )


# --- one edge, its stream cut on the network (the edge lives on) -----------------------------


def _resumes(step: str) -> float:
    return REGISTRY.get_sample_value("gateway_stream_resumes_total", {"step": step}) or 0.0


@contextlib.asynccontextmanager
async def behind_balancer(redis_server: RedisServer, **settings: Any) -> AsyncIterator[Any]:
    async with in_process_stack(lambda: aioredis.from_url(redis_server.url), **settings) as stack:
        await stack.redis.flushall()
        balancer = await Balancer([("127.0.0.1", stack.edge_port)]).start()
        try:
            yield stack, balancer
        finally:
            await balancer.stop()


async def _marks_heard(redis: aioredis.Redis, keys: CallKeys, count: int) -> None:
    async def heard() -> bool:
        return len(await redis.xrange(keys.ctl)) >= count

    await wait_for(heard, timeout=30)


async def test_a_stream_cut_on_the_network_resumes_and_its_old_bridge_steps_aside(
    redis_server: RedisServer,
) -> None:
    handed_over = _resumes("handed_over")
    async with behind_balancer(redis_server) as (stack, balancer):
        call_sid = new_sid("CA")
        keys = CallKeys.for_call(call_sid)
        after = CallScript(silence(3000), hold_after_s=1.0, wait_for_reply=False)
        call = asyncio.create_task(
            place_call(
                f"ws://127.0.0.1:{balancer.port}/media",
                mulaw_decode(mulaw_encode(speech("Hello there."))),
                call_sid=call_sid,
                twiml_url=f"{balancer.base_url}/twiml",
                hold_after_s=30,
                max_duration_s=40,
                next_script=after,
            )
        )
        await _marks_heard(stack.redis, keys, 3)
        assert balancer.cut() == 1
        result = await asyncio.wait_for(call, 60)
        await stack.emulator.sessions[-1].wait_closed(timeout=15)
        assert [status for _, status in result.action_requests] == [200]
        (resumed,) = result.next_streams
        assert resumed.frames_received > 0  # the rest of the reply
        assert len(stack.emulator.sessions) == 1
        # The edge saw its first stream break: it waited, saw the call go on on the new
        # stream, and left it without ending it: the call ended once, at the caller's stop.
        ends = [
            e
            for _, f in await stack.redis.xrange(keys.in_pcmu)
            if isinstance(e := decode_inbound(f), StreamEnd)
        ]
        assert [e.reason for e in ends] == ["stop"]
        assert _resumes("handed_over") == handed_over + 1


async def test_a_broken_stream_nobody_resumes_ends_after_the_grace(
    redis_server: RedisServer,
) -> None:
    not_resumed = _resumes("not_resumed")
    async with behind_balancer(redis_server, edge_resume_grace_seconds=0.5) as (stack, balancer):
        call_sid = new_sid("CA")
        keys = CallKeys.for_call(call_sid)
        # Straight to the socket, with no TwiML: nothing asks an action, as with a stream
        # whose <Connect> had none.
        call = asyncio.create_task(
            place_call(
                f"ws://127.0.0.1:{balancer.port}/media",
                mulaw_decode(mulaw_encode(speech("Hello there."))),
                call_sid=call_sid,
                hold_after_s=30,
                max_duration_s=40,
            )
        )
        await _marks_heard(stack.redis, keys, 2)
        balancer.cut()
        result = await asyncio.wait_for(call, 30)
        assert not result.next_streams
        ended = await wait_for(lambda: stack.redis.hget(keys.meta, META_ENDED), timeout=10)
        assert ended == b"socket_closed"
        await stack.emulator.sessions[-1].wait_closed(timeout=15)
        assert _resumes("not_resumed") == not_resumed + 1


async def test_a_resumption_needs_the_grant_its_action_answer_gave(
    redis_server: RedisServer,
) -> None:
    refused = _resumes("refused")
    async with behind_balancer(redis_server) as (stack, balancer):
        call_sid = new_sid("CA")
        keys = CallKeys.for_call(call_sid)
        call = asyncio.create_task(
            place_call(
                f"ws://127.0.0.1:{balancer.port}/media",
                silence(2000),
                call_sid=call_sid,
                hold_after_s=30,
                max_duration_s=40,
                wait_for_reply=False,
            )
        )
        await wait_for(lambda: stack.redis.hget(keys.meta, META_STREAM_SID), timeout=20)
        # A stream that claims to resume the live call with a grant it was never given.
        forged = asyncio.create_task(
            place_call(
                f"ws://127.0.0.1:{balancer.port}/media",
                silence(500),
                call_sid=call_sid,
                custom_parameters={RESUME_PARAMETER: "forged"},
                wait_for_reply=False,
            )
        )
        refusal = await asyncio.wait_for(forged, 20)
        assert refusal.closed_by_gateway and refusal.close_code == 1008
        assert _resumes("refused") == refused + 1
        # The live call is untouched: still its first stream's, not ended.
        meta = await stack.redis.hgetall(keys.meta)
        assert META_ENDED not in meta
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
