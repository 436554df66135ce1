"""What a caller expects, through the three services (in-process, fakeredis) with the emulator's
VAD and the simulator's playback clock: barge-in, greeting, DTMF, transcripts, hang-up."""

from __future__ import annotations

import asyncio

import fakeredis
import numpy as np
import pytest

from shared.streams import CallKeys, decode_event
from sim.speech import silence, speech
from sim.twilio_call import BargeIn, place_call
from tests.stack import in_process_stack

COMBOS = [
    pytest.param({"realtime_schema": "audio", "realtime_beta_header": False}, id="comboA"),
    pytest.param(
        {
            "realtime_schema": "flat",
            "realtime_beta_header": True,
            "emulator_kwargs": {"beta": "accept"},  # the retired beta, opted into
        },
        id="comboB",
    ),
]


def fake_factory():  # type: ignore[no-untyped-def]
    server = fakeredis.FakeServer()
    return lambda: fakeredis.FakeAsyncRedis(server=server)


@pytest.mark.parametrize("combo", COMBOS)
async def test_barge_in_clears_truncates_at_what_was_heard_and_drops_the_rest(combo: dict) -> None:  # type: ignore[type-arg]
    question = speech(
        "Could you please tell me everything about the different plans you offer today?"
    )
    interruption = speech("Wait, stop, I have another question.")
    async with in_process_stack(fake_factory(), **combo) as stack:
        result = await asyncio.wait_for(
            place_call(
                stack.media_url,
                question,
                hold_after_s=1.0,
                barge_in=BargeIn(after_s=1.0, audio=interruption),
            ),
            60,
        )
        session = await stack.emulator.wait_for_session(1)
        truncate = await session.wait_for_client_event("conversation.item.truncate", timeout=5)
    assert result.barge_in_at is not None and result.clears, "no clear reached the caller"
    # Clear within 400 ms of the caller starting to speak (VAD needs a window to notice speech).
    assert result.clear_after_barge_ms is not None and result.clear_after_barge_ms <= 400
    # The truncation names what the caller had actually heard, within 250 ms of the truth.
    assert result.reply_heard_at_clear_ms is not None
    assert abs(truncate["audio_end_ms"] - result.reply_heard_at_clear_ms) <= 250
    assert truncate["item_id"] == session.responses[0].item_id
    # Nothing of the interrupted reply plays after the clear: the next second is silence.
    start = int(result.clears[0] * 8000)
    after = np.frombuffer(result.heard[start : start + 8000], dtype=np.uint8)
    assert np.count_nonzero(after != 0xFF) <= 160  # at most one frame in flight at the clear


async def test_greeting_comes_first_within_3_seconds() -> None:
    async with in_process_stack(
        fake_factory(), realtime_greeting="Thanks for calling Acme."
    ) as stack:
        result = await asyncio.wait_for(
            place_call(stack.media_url, silence(2500), hold_after_s=0.5), 40
        )
        session = await stack.emulator.wait_for_session(1)
    first = session.responses[0]
    assert "Thanks for calling Acme." in (first.instructions or "")
    heard = np.frombuffer(result.heard, dtype=np.uint8)
    first_sound = int(np.argmax(heard != 0xFF)) / 8000
    assert heard.any() and first_sound <= 3.0


@pytest.mark.parametrize("combo", COMBOS)
async def test_dtmf_reaches_the_model_as_an_item_naming_the_digit(combo: dict) -> None:  # type: ignore[type-arg]
    async with in_process_stack(fake_factory(), **combo) as stack:
        await asyncio.wait_for(
            place_call(stack.media_url, silence(1500), dtmf=[(0.5, "7")], hold_after_s=0.5), 40
        )
        session = await stack.emulator.wait_for_session(1)
        item = await session.wait_for_client_event(
            "conversation.item.create", predicate=lambda e: "7" in str(e["item"]["content"])
        )
    assert item["item"]["role"] == "user"


async def test_transcripts_of_both_sides_can_be_read_back_and_keys_expire() -> None:
    factory = fake_factory()
    async with in_process_stack(factory) as stack:
        result = await asyncio.wait_for(
            place_call(
                stack.media_url, speech("Hello, what are your opening hours?"), hold_after_s=0.8
            ),
            40,
        )
        session = await stack.emulator.wait_for_session(1)
        await session.wait_closed(timeout=10)  # hang-up closes the Realtime socket
        keys = CallKeys.for_call(result.call_sid)
        redis = stack.redis

        async def ended() -> bool:
            events = [decode_event(f) for _, f in await redis.xrange(keys.events)]
            return any(e.kind == "ended" for e in events)

        from tests.conftest import wait_for

        await wait_for(ended, timeout=10)
        events = [decode_event(f) for _, f in await redis.xrange(keys.events)]
        roles = {e.data.get("role") for e in events if e.kind == "transcript"}
        assert roles == {"caller", "assistant"}
        for key in await redis.keys(f"call:{{{result.call_sid}}}:*"):
            assert await redis.ttl(key) > 0, key


class RefusingRealtime:
    """A Realtime server that refuses every session the way the live API does, and counts how
    many times it was asked: an ``invalid_value`` error (with a null ``param``) answering the
    session.update, and with ``close_4000`` a beta-header connection closed with 4000 first (the
    retired beta shape)."""

    def __init__(self, close_4000: bool) -> None:
        self.close_4000 = close_4000
        self.connections = 0
        self._server: object = None

    async def __aenter__(self) -> str:
        from websockets.asyncio.server import serve

        self._server = server = await serve(self._handle, "127.0.0.1", 0)
        port = next(iter(server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}/v1/realtime"

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()  # type: ignore[attr-defined]
        await self._server.wait_closed()  # type: ignore[attr-defined]

    async def _handle(self, ws) -> None:  # type: ignore[no-untyped-def]
        import json

        self.connections += 1
        beta = ws.request.headers.get("OpenAI-Beta") == "realtime=v1"
        if self.close_4000 and beta:  # the live API: the beta shape is retired
            await ws.close(4000, "beta_api_shape_disabled")
            return
        await ws.send(json.dumps({"type": "session.created", "event_id": "e0", "session": {}}))
        update = json.loads(await ws.recv())
        error = {
            "type": "invalid_request_error",
            "code": "invalid_value",
            "message": "Invalid value: 'nobody'. Supported values are: 'alloy', 'ash'.",
            "param": None,
            "event_id": update.get("event_id"),
        }
        await ws.send(json.dumps({"type": "error", "event_id": "e1", "error": error}))
        await ws.wait_closed()


@pytest.mark.parametrize(
    ("close_4000", "combo"),
    [
        (False, {"realtime_schema": "audio"}),
        (True, {"realtime_schema": "flat"}),
    ],
    ids=["update-refused", "closed-4000"],
)
async def test_a_refused_session_ends_the_call_at_once_and_is_not_retried(
    close_4000: bool,
    combo: dict,  # type: ignore[type-arg]
) -> None:
    """The configured combo refused for good: asking again with the same session would be refused
    again, so the call ends for the caller (outcome realtime_refused) after one attempt, rather
    than retrying for REALTIME_RESTORE_SECONDS. Combo B closed with 4000 (the retired beta) goes
    on in GA once, and GA refused as well ends the call."""
    server = fakeredis.FakeServer()
    refusing = RefusingRealtime(close_4000)
    async with refusing as url:
        async with in_process_stack(
            lambda: fakeredis.FakeAsyncRedis(server=server),
            realtime_url=url,
            realtime_restore_seconds=60,
            **combo,
        ) as stack:
            result = await asyncio.wait_for(
                place_call(stack.media_url, speech("Hello?"), hold_after_s=30, max_duration_s=60),
                30,
            )
            events = await stack.redis.xrange(CallKeys.for_call(result.call_sid).events)
    assert result.closed_by_gateway
    decoded = [decode_event(f) for _, f in events]
    reasons = [e.data.get("reason") for e in decoded if e.kind == "ended"]
    assert reasons == ["realtime_refused"]
    assert refusing.connections == (2 if close_4000 else 1)


async def test_combo_b_meeting_the_retired_beta_goes_on_in_ga_without_losing_audio(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """REALTIME_SCHEMA=flat (combo B, from the dialect report) against an API that refuses the
    beta shape as the live one does since May 2026: the call goes on in GA (combo A), the
    caller's audio reaches the model whole and the reply reaches the caller; the process warns
    once, counts it, and opens its next call in GA directly."""
    import logging

    from shared.audio import mulaw_decode, mulaw_encode
    from shared.runtime.observability import BETA_RETIRED
    from tests.audio_checks import pcm24_to_8k, similarity

    audio = mulaw_decode(mulaw_encode(speech("Hello there, I would like to know the hours.")))
    before = BETA_RETIRED._value.get()
    caplog.set_level(logging.WARNING, logger="gateway.worker")
    async with in_process_stack(
        fake_factory(),
        # The emulator's default: the beta header refused, as the live API does.
        realtime_schema="flat",
        realtime_beta_header=True,
    ) as stack:
        first = await asyncio.wait_for(place_call(stack.media_url, audio, hold_after_s=1.0), 40)
        refused = await stack.emulator.wait_for_session(1)
        ga = await stack.emulator.wait_for_session(2)
        await ga.wait_closed(timeout=10)
        second = await asyncio.wait_for(place_call(stack.media_url, audio, hold_after_s=1.0), 40)
        later = await stack.emulator.wait_for_session(3)
        await later.wait_closed(timeout=10)
        sessions = list(stack.emulator.sessions)
    assert refused.dialect == "beta" and ga.dialect == "ga"
    assert later.dialect == "ga" and len(sessions) == 3  # the second call opened GA directly
    for session, result in ((ga, first), (later, second)):
        # Every frame of the caller reached the GA session, including those sent meanwhile.
        assert similarity(audio, pcm24_to_8k(bytes(session.input_audio))) >= 0.95
        assert session.responses, "the emulator never answered"
        reply = pcm24_to_8k(bytes(session.responses[0].audio))
        got = mulaw_decode(result.received_audio)
        assert similarity(reply[: reply.size // 2], got, max_lag=2000) >= 0.9
    warnings = [r for r in caplog.records if "retired the beta" in r.getMessage()]
    assert len(warnings) == 1
    assert BETA_RETIRED._value.get() == before + 1
