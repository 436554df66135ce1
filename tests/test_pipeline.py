"""A phone call through all three services: in-process over fakeredis, in both dialect combos."""

from __future__ import annotations

import asyncio

import fakeredis
import numpy as np
import pytest
from redis.crc import key_slot

from shared.audio import mulaw_decode, mulaw_encode
from sim.speech import speech
from sim.twilio_call import place_call
from tests.audio_checks import pcm24_to_8k, similarity
from tests.stack import in_process_stack

COMBOS = [
    pytest.param({"realtime_schema": "audio", "realtime_beta_header": False}, id="comboA-audio"),
    pytest.param(
        {
            "realtime_schema": "flat",
            "realtime_beta_header": True,
            "emulator_kwargs": {"beta": "accept"},  # the retired beta, opted into
        },
        id="comboB-flat",
    ),
    # The report's REALTIME_AUDIO_RATE: the transcoder and the session both at 48 kHz.
    pytest.param(
        {"realtime_schema": "audio", "realtime_beta_header": False, "realtime_audio_rate": 48000},
        id="comboA-48k",
    ),
]


def fake_factory():  # type: ignore[no-untyped-def]
    server = fakeredis.FakeServer()
    return lambda: fakeredis.FakeAsyncRedis(server=server)


def caller_audio(text: str = "Hello there, I would like to know the opening hours.") -> np.ndarray:
    # What Twilio carries is mu-law: compare against the codec's own reconstruction.
    return mulaw_decode(mulaw_encode(speech(text)))


@pytest.mark.parametrize("combo", COMBOS)
async def test_a_call_through_the_three_services(combo: dict) -> None:  # type: ignore[type-arg]
    audio = caller_audio()
    async with in_process_stack(fake_factory(), **combo) as stack:
        result = await asyncio.wait_for(place_call(stack.media_url, audio, hold_after_s=1.0), 40)
        session = await stack.emulator.wait_for_session(1)
        await session.wait_closed(timeout=10)
    expected_dialect = "ga" if combo["realtime_schema"] == "audio" else "beta"
    assert session.dialect == expected_dialect
    rate = combo.get("realtime_audio_rate", 24000)
    assert session.rate == rate  # what the session was told, and what it was sent
    # The caller's audio reached the model, resampled back to 8 kHz it matches what was said.
    heard_by_model = pcm24_to_8k(bytes(session.input_audio), rate)
    assert similarity(audio, heard_by_model) >= 0.95
    # The model's reply reached the caller.
    assert session.responses, "the emulator never answered"
    reply = pcm24_to_8k(bytes(session.responses[0].audio), rate)
    got = mulaw_decode(result.received_audio)
    assert similarity(reply[: reply.size // 2], got, max_lag=2000) >= 0.9
    assert result.violations == []
    assert result.reply_delay_ms is not None


async def test_two_concurrent_calls_never_cross() -> None:
    a = caller_audio("One two three four five, this is the first caller speaking now.")
    b = caller_audio("Zebra yellow quiet morning, the second caller has another voice.")
    async with in_process_stack(fake_factory()) as stack:
        ra, rb = await asyncio.wait_for(
            asyncio.gather(
                place_call(stack.media_url, a, hold_after_s=1.0),
                place_call(stack.media_url, b, hold_after_s=1.0),
            ),
            40,
        )
        s1 = await stack.emulator.wait_for_session(1)
        s2 = await stack.emulator.wait_for_session(2)
        await s1.wait_closed(timeout=10)
        await s2.wait_closed(timeout=10)
    by_call = {}
    for s in (s1, s2):
        heard = pcm24_to_8k(bytes(s.input_audio))
        by_call[s] = (similarity(a, heard), similarity(b, heard))
    scores = sorted(by_call.values())
    # Each session heard exactly one caller, and not the other.
    for sa, sb in scores:
        assert max(sa, sb) >= 0.95 and min(sa, sb) < 0.5
    assert {round(x[0]) for x in scores} == {0, 1}
    for r in (ra, rb):
        assert r.frames_received > 0 and r.violations == []


class SlotOrderedPipeline:
    """A pipeline as a cluster runs it: in order within a hash slot, in no order across slots.

    Commands for other slots go to other nodes concurrently; here the slots run last-first, with
    a node's round trip between them, which is one order a real cluster may produce.
    """

    def __init__(self, client: fakeredis.FakeAsyncRedis) -> None:
        self._client = client
        self._queued: list[tuple[str, tuple, dict]] = []  # type: ignore[type-arg]

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        def queue(*args, **kwargs):  # type: ignore[no-untyped-def]
            self._queued.append((name, args, kwargs))
            return self

        return queue

    async def execute(self, raise_on_error: bool = True) -> list:  # type: ignore[type-arg]
        by_slot: dict[int, list[int]] = {}
        for i, (_, args, _) in enumerate(self._queued):
            by_slot.setdefault(key_slot(_as_bytes(args[0])), []).append(i)
        results: list = [None] * len(self._queued)  # type: ignore[type-arg]
        for n, indices in enumerate(reversed(list(by_slot.values()))):
            if n:
                await asyncio.sleep(0.3)  # the next node's round trip
            pipe = fakeredis.FakeAsyncRedis.pipeline(self._client, transaction=False)
            for i in indices:
                name, args, kwargs = self._queued[i]
                getattr(pipe, name)(*args, **kwargs)
            replies = await pipe.execute(raise_on_error=raise_on_error)
            for i, result in zip(indices, replies, strict=True):
                results[i] = result
        self._queued.clear()
        return results


def _as_bytes(key: object) -> bytes:
    return key if isinstance(key, bytes) else str(key).encode()


class ClusterLikeRedis(fakeredis.FakeAsyncRedis):
    def pipeline(self, transaction: bool = True, shard_hint: object = None):  # type: ignore[no-untyped-def,override]
        return SlotOrderedPipeline(self)


async def test_a_call_is_served_when_pipelines_keep_no_order_across_slots() -> None:
    # On a cluster the call's keys and its lifecycle entry live on different nodes: a stage must
    # never see the call before its keys exist (it would dismiss it as expired).
    server = fakeredis.FakeServer()
    async with in_process_stack(lambda: ClusterLikeRedis(server=server)) as stack:
        result = await asyncio.wait_for(
            place_call(stack.media_url, caller_audio(), hold_after_s=1.0), 40
        )
    assert result.frames_received > 0 and result.violations == []
