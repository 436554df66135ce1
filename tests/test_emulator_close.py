"""Issue 25, part 8: the official client's close completes at once while the emulator speaks.

The official ``openai`` client stops reading when the application stops iterating (here: after
the first audio delta, as the stand-in tester's client did) and closes when its ``async with``
ends. Its websockets stops reading the socket once 16 messages are queued, and a client that
stopped reading never sees the close frame that answers its own: the close then takes its whole
10 s close timeout. The emulator keeps what a reply has sent ahead of real time short (a
Realtime reply: ``reply_lead_ms``; GPT-Live: one delta per ``live_chunk_ms``, as the live API
streams), so the close completes within milliseconds. The bound below only catches the hang.
"""

from __future__ import annotations

import asyncio
import base64
import time

import openai

from sim.openai_realtime import RealtimeEmulator
from sim.speech import speech

HANG_BOUND_S = 3.0  # the hang is websockets' 10 s close timeout; a close takes milliseconds
LONG = speech("This is a long sentence for the emulator to say back. " * 8, 24000).tobytes()


def _client(emulator: RealtimeEmulator) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{emulator.port}/v1", api_key="sk-x")


async def test_the_official_realtime_client_closes_at_once_after_the_first_audio_delta() -> None:
    async with RealtimeEmulator() as emulator:
        async with _client(emulator).realtime.connect(model="gpt-realtime") as conn:
            await conn.session.update(
                session={"type": "realtime", "audio": {"input": {"turn_detection": None}}}
            )
            await conn.input_audio_buffer.append(audio=base64.b64encode(LONG).decode())
            await conn.input_audio_buffer.commit()
            await conn.response.create()
            async for event in conn:
                if event.type == "response.output_audio.delta":
                    break
            await asyncio.sleep(0.3)  # the application works on what it got; the reply goes on
            began = time.monotonic()
        took = time.monotonic() - began
        session = emulator.sessions[0]
        await session.wait_closed()
    assert took < HANG_BOUND_S, f"the close took {took:.1f} s"
    assert session.responses[0].audio  # it was speaking when the client closed


async def test_the_official_live_client_closes_at_once_after_the_first_speech_delta() -> None:
    async with RealtimeEmulator() as emulator:
        async with _client(emulator).live.connect() as conn:
            await conn.session.start(session={"model": "gpt-live-1.1"})
            async for event in conn:
                if event.type == "session.started":
                    await conn.session.commentary.append(
                        content="Hello and welcome. " * 10, delegation_id=None
                    )
                if event.type == "session.output_audio.delta" and base64.b64decode(
                    event.delta
                ).strip(b"\0"):
                    break  # the first delta that carries speech
            await asyncio.sleep(0.3)
            began = time.monotonic()
        took = time.monotonic() - began
        session = emulator.live_sessions[0]
        await session.wait_closed()
    assert took < HANG_BOUND_S, f"the close took {took:.1f} s"
    assert session.stream is not None and session.stream.speaking  # it was mid-greeting
