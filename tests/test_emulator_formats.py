"""The emulator's audio formats: G.711 mu-law and A-law beside PCM16, per direction, in both
dialects: what it echoes, what its VAD hears, what it sends, and how long that lasts."""

from __future__ import annotations

import base64
import shutil
from typing import Any

import numpy as np
import pytest

from shared.audio import mulaw_decode, mulaw_encode
from sim.openai_realtime import RealtimeEmulator
from sim.speech import silence, speech
from sim.wire_audio import VAD_THRESHOLD_DBFS, VAD_WINDOW_MS, alaw_decode, alaw_encode, dbfs
from tests.test_emulator import BETA_SERVER, GA_SERVER, Raw, error_for, raw

audioop = pytest.importorskip("audioop")  # audioop-lts on 3.13+

CODECS = {"ulaw": (mulaw_encode, mulaw_decode), "alaw": (alaw_encode, alaw_decode)}
GA_NAMES = {"ulaw": "audio/pcmu", "alaw": "audio/pcma"}
BETA_NAMES = {"ulaw": "g711_ulaw", "alaw": "g711_alaw"}
PCM24 = {"type": "audio/pcm", "rate": 24000}


def ga_session(inp: dict[str, Any], out: dict[str, Any], vad: bool = False) -> dict[str, Any]:
    turn = {"type": "server_vad"} if vad else None
    return {
        "type": "realtime",
        "audio": {
            "input": {"format": inp, "turn_detection": turn},
            "output": {"format": out, "voice": "alloy"},
        },
    }


def beta_session(inp: str, out: str, vad: bool = False) -> dict[str, Any]:
    turn = {"type": "server_vad"} if vad else None
    return {
        "modalities": ["audio", "text"],
        "input_audio_format": inp,
        "output_audio_format": out,
        "turn_detection": turn,
    }


async def append(r: Raw, data: bytes, frame: int) -> None:
    for i in range(0, len(data), frame):
        chunk = base64.b64encode(data[i : i + frame]).decode()
        await r.send({"type": "input_audio_buffer.append", "audio": chunk})


def reply_audio(events: list[dict[str, Any]], beta: bool) -> bytes:
    name = "response.audio.delta" if beta else "response.output_audio.delta"
    return b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == name)


def level_dbfs(samples: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
    return 20 * np.log10(max(rms, 1e-9) / 32768)


# --- the A-law codec ------------------------------------------------------------------------------


def test_alaw_is_bit_exact_with_audioop() -> None:
    codes = bytes(range(256))
    assert alaw_decode(codes).tobytes() == audioop.alaw2lin(codes, 2)
    every = np.arange(-32768, 32768, dtype=np.int16)
    assert alaw_encode(every) == audioop.lin2alaw(every.tobytes(), 2)


# --- formats are set and echoed per direction -----------------------------------------------------


@pytest.mark.parametrize("codec", ["ulaw", "alaw"])
@pytest.mark.parametrize("g711_side", ["input", "output"])
async def test_ga_echoes_each_directions_format(
    emulator: RealtimeEmulator, codec: str, g711_side: str
) -> None:
    g711 = {"type": GA_NAMES[codec]}
    inp, out = (g711, PCM24) if g711_side == "input" else (PCM24, g711)
    async with await raw(emulator) as ws:
        session = await Raw(ws).session(ga_session(inp, out))
    assert session["audio"]["input"]["format"] == inp
    assert session["audio"]["output"]["format"] == out
    for event in emulator.sessions[0].server_events:
        GA_SERVER.validate_python(event)


@pytest.mark.parametrize("codec", ["ulaw", "alaw"])
@pytest.mark.parametrize("g711_side", ["input", "output"])
async def test_beta_echoes_each_directions_format(
    emulator: RealtimeEmulator, codec: str, g711_side: str
) -> None:
    g711 = BETA_NAMES[codec]
    inp, out = (g711, "pcm16") if g711_side == "input" else ("pcm16", g711)
    async with await raw(emulator, beta=True) as ws:
        session = await Raw(ws).session(beta_session(inp, out))
    assert (session["input_audio_format"], session["output_audio_format"]) == (inp, out)
    for event in emulator.sessions[0].server_events:
        BETA_SERVER.validate_python(event)


async def test_an_integral_float_rate_is_that_rate(emulator: RealtimeEmulator) -> None:
    fmt = {"type": "audio/pcm", "rate": 24000.0}
    async with await raw(emulator) as ws:
        session = await Raw(ws).session(ga_session(fmt, fmt))
    echoed = session["audio"]["input"]["format"]["rate"]
    assert echoed == 24000 and isinstance(echoed, int)
    assert emulator.sessions[0].rate == 24000


@pytest.mark.parametrize("rate", [24000.5, 16000.0, "24000", True])
async def test_other_rates_are_refused(emulator: RealtimeEmulator, rate: Any) -> None:
    fmt = {"type": "audio/pcm", "rate": rate}
    e = await error_for(emulator, {"type": "session.update", "session": ga_session(fmt, PCM24)})
    assert (e["code"], e["param"]) == ("invalid_value", "session.audio.input.format.rate")


@pytest.mark.parametrize(
    ("fmt", "code"),
    [
        ({"type": "audio/pcm"}, "missing_required_parameter"),  # the report: rate is required
        ({"type": "audio/pcm", "rate": 16000}, "invalid_value"),  # the report: >= 24000
    ],
)
async def test_the_output_format_follows_the_same_rate_rules(
    emulator: RealtimeEmulator, fmt: dict[str, Any], code: str
) -> None:
    update = {"type": "session.update", "session": ga_session(PCM24, fmt)}
    e = await error_for(emulator, update)
    assert (e["code"], e["param"]) == (code, "session.audio.output.format.rate")
    response = {"type": "response.create", "response": {"audio": {"output": {"format": fmt}}}}
    e = await error_for(emulator, response)
    assert (e["code"], e["param"]) == (code, "response.audio.output.format.rate")


# --- G.711 input: VAD, commits --------------------------------------------------------------------


def speech_end_ms(samples: np.ndarray, rate: int = 8000) -> float:
    """Where the speech in a clip ends for an energy VAD: the end of its last window above the
    emulator's threshold. A recorded voice (espeak-ng's) ends in silence, so the clip's length
    is not the speech's."""
    window = rate * VAD_WINDOW_MS // 1000
    loud = [
        i
        for i in range(samples.size // window)
        if dbfs(samples[i * window : (i + 1) * window]) > VAD_THRESHOLD_DBFS
    ]
    return (loud[-1] + 1) * VAD_WINDOW_MS if loud else 0.0


def voice(engine: str) -> np.ndarray:
    if engine == "espeak" and shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (make test installs it)")
    return speech("hello there, can you hear me", engine=engine)  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", ["synthetic", "espeak"])
@pytest.mark.parametrize("codec", ["ulaw", "alaw"])
@pytest.mark.parametrize("beta", [False, True])
async def test_server_vad_hears_g711_input(
    emulator: RealtimeEmulator, codec: str, beta: bool, engine: str
) -> None:
    spoken = voice(engine)
    encode = CODECS[codec][0]
    if beta:
        session = beta_session(BETA_NAMES[codec], "pcm16", vad=True)
    else:
        session = ga_session({"type": GA_NAMES[codec]}, PCM24, vad=True)
    async with await raw(emulator, beta) as ws:
        r = Raw(ws)
        await r.session(session)
        await append(r, encode(spoken) + encode(silence(1000)), frame=160)
        started = await r.next("input_audio_buffer.speech_started")
        stopped = await r.next("input_audio_buffer.speech_stopped")
        committed = await r.next("input_audio_buffer.committed")
        await r.next("response.done")
    assert started["item_id"] == stopped["item_id"] == committed["item_id"]
    # It stops once 500 ms of silence followed the speech.
    speech_ms = speech_end_ms(spoken)
    assert speech_ms + 400 <= stopped["audio_end_ms"] <= speech_ms + 700


@pytest.mark.parametrize("codec", ["ulaw", "alaw"])
async def test_a_g711_commit_counts_one_byte_per_sample_at_8khz(
    emulator: RealtimeEmulator, codec: str
) -> None:
    async with await raw(emulator) as ws:
        r = Raw(ws)
        await r.session(ga_session({"type": GA_NAMES[codec]}, PCM24))
        await append(r, b"\xd5" * 400, frame=400)  # 50 ms
        await r.send({"type": "input_audio_buffer.commit"})
        err = (await r.next("error"))["error"]
        assert err["code"] == "input_audio_buffer_commit_empty" and "50.00ms" in err["message"]
        await append(r, b"\xd5" * 400, frame=400)  # 100 ms in all
        await r.send({"type": "input_audio_buffer.commit"})
        await r.next("input_audio_buffer.committed")


# --- replies in the output format -----------------------------------------------------------------


@pytest.mark.parametrize("codec", ["ulaw", "alaw"])
@pytest.mark.parametrize("beta", [False, True])
async def test_replies_are_encoded_in_the_output_format(
    emulator: RealtimeEmulator, codec: str, beta: bool
) -> None:
    decode = CODECS[codec][1]
    if beta:
        session = beta_session("pcm16", BETA_NAMES[codec])
    else:
        session = ga_session(PCM24, {"type": GA_NAMES[codec]})
    async with await raw(emulator, beta) as ws:
        r = Raw(ws)
        await r.session(session)
        await r.send({"type": "response.create", "response": {"instructions": "Hello."}})
        events = await r.collect("response.done")
        audio = reply_audio(events, beta)
        # The emulator's voice says 1.5 s: 12000 G.711 bytes at 8 kHz, speech-loud once decoded.
        assert len(audio) == 12000
        assert -30 < level_dbfs(decode(audio)) < -10
        done = events[-1]["response"]
        if beta:
            assert done["output_audio_format"] == BETA_NAMES[codec]
        else:
            assert done["audio"]["output"]["format"] == {"type": GA_NAMES[codec]}
        # Truncation bounds follow the format: 1500 ms of audio, not 750 or 4500.
        item_id = done["output"][0]["id"]
        truncate = {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0}
        await r.send({**truncate, "audio_end_ms": 1600})
        assert (await r.next("error"))["error"]["param"] == "audio_end_ms"
        await r.send({**truncate, "audio_end_ms": 1500})
        assert (await r.next("conversation.item.truncated"))["audio_end_ms"] == 1500


@pytest.mark.parametrize("beta", [False, True])
async def test_a_response_may_choose_its_own_format(emulator: RealtimeEmulator, beta: bool) -> None:
    if beta:
        response = {"output_audio_format": "g711_alaw"}
        session = beta_session("pcm16", "pcm16")
    else:
        response = {"audio": {"output": {"format": {"type": "audio/pcma"}}}}
        session = ga_session(PCM24, PCM24)
    async with await raw(emulator, beta) as ws:
        r = Raw(ws)
        await r.session(session)
        await r.send({"type": "response.create", "response": response})
        audio = reply_audio(await r.collect("response.done"), beta)
        assert len(audio) == 12000  # 1.5 s of A-law
        await r.send({"type": "response.create"})
        audio = reply_audio(await r.collect("response.done"), beta)
        assert len(audio) == 72000  # the session's format again: 1.5 s of PCM16 at 24 kHz


@pytest.mark.parametrize(("inp", "out"), [("ulaw", "ulaw"), ("alaw", "pcm"), ("pcm", "ulaw")])
async def test_the_callers_words_are_echoed_across_formats(
    emulator: RealtimeEmulator, inp: str, out: str
) -> None:
    """Committed audio comes back, resampled and re-encoded, in the output format."""
    rate_in, rate_out = (24000 if inp == "pcm" else 8000), (24000 if out == "pcm" else 8000)
    samples = speech("hello there, can you hear me", rate=rate_in)
    data = samples.tobytes() if inp == "pcm" else CODECS[inp][0](samples)
    fmt_in = PCM24 if inp == "pcm" else {"type": GA_NAMES[inp]}
    fmt_out = PCM24 if out == "pcm" else {"type": GA_NAMES[out]}
    async with await raw(emulator) as ws:
        r = Raw(ws)
        await r.session(ga_session(fmt_in, fmt_out))
        await append(r, data, frame=4800)
        await r.send({"type": "input_audio_buffer.commit"})
        await r.next("input_audio_buffer.committed")
        await r.send({"type": "response.create"})
        events = await r.collect("response.done")
    transcript = events[-1]["response"]["output"][0]["content"][0]["transcript"]
    assert transcript == f"echo of {samples.size / rate_in:.2f} s of audio"
    reply = reply_audio(events, beta=False)
    bytes_per_sample = 2 if out == "pcm" else 1
    assert abs(len(reply) / bytes_per_sample - samples.size * rate_out / rate_in) <= 1
    decode = (lambda b: np.frombuffer(b, "<i2")) if out == "pcm" else CODECS[out][1]
    assert abs(level_dbfs(decode(reply)) - level_dbfs(samples)) < 3
