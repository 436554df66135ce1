"""``make smoke`` against the emulator: passes in the report's combos, fails with the server's
own message in the wrong ones."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from shared.runtime.settings import load_settings
from sim.openai_realtime import RealtimeEmulator
from tools.run_settings import RunSettings
from tools.smoke import smoke

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    ("schema", "header", "ok", "needle"),
    [
        ("audio", False, True, "PASS"),
        ("flat", True, True, "PASS"),
        ("flat", False, False, "Unknown parameter: 'session."),
        ("audio", True, False, "Unknown parameter: 'session."),
        ("auto", False, True, "PASS"),
    ],
)
async def test_smoke_verdicts(
    schema: str, header: bool, ok: bool, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The header's rows test the beta shape itself (combo B), which the emulator must be told
    # to accept: by default it refuses it as the live API does.
    async with RealtimeEmulator(beta="accept") as emu:
        settings = load_settings(
            realtime_url=emu.url, realtime_schema=schema, realtime_beta_header=header
        )
        code = await smoke(settings, RunSettings(runs=2), "sk-test")
    out = capsys.readouterr().out
    assert (code == 0) is ok
    assert needle in out
    assert len([line for line in out.splitlines() if line.startswith("run ")]) == (2 if ok else 1)


async def test_a_retired_beta_fails_combo_b_in_one_line_and_auto_still_works(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The live API since May 2026: combo B gets one line quoting the API's own message, and a
    non-zero exit; ``auto`` goes on in GA."""
    async with RealtimeEmulator() as emu:  # refuses the beta shape, as the live API does
        settings = load_settings(
            realtime_url=emu.url, realtime_schema="flat", realtime_beta_header=True
        )
        assert await smoke(settings, RunSettings(runs=3), "sk-test") == 1
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 1, lines
        assert "retired the beta shape" in lines[0] and "beta_api_shape_disabled" in lines[0]
        said = emu.sessions[0].errors_sent[0]["message"]
        assert said in lines[0]  # the API's own words
        assert len(emu.sessions) == 1  # no GA attempt: the verdict is about combo B
        auto = load_settings(realtime_url=emu.url, realtime_schema="auto")
        assert await smoke(auto, RunSettings(runs=1), "sk-test") == 0
        assert "PASS" in capsys.readouterr().out


def test_make_smoke_with_combo_b_exits_non_zero_with_one_line() -> None:
    """Through ``python -m tools.smoke``: the emulator it starts refuses the beta as the live
    API does (its default)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REALTIME_", "OPENAI_"))}
    env.update(RUNS="2", REALTIME_SCHEMA="flat", REALTIME_BETA_HEADER="1")
    proc = subprocess.run(
        [sys.executable, "-m", "tools.smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "local emulator" in lines[0]  # the preamble, then the verdict
    assert len(lines) == 2 and "retired the beta shape" in lines[1], lines
    assert "The Realtime Beta API is no longer supported" in lines[1]
    assert "Traceback" not in proc.stderr


def test_make_smoke_without_a_key_starts_the_emulator() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REALTIME_", "OPENAI_"))}
    env["RUNS"] = "2"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "local emulator" in proc.stdout.splitlines()[0]
    assert "2/2 consecutive runs returned audio -> PASS" in proc.stdout


def test_unreachable_endpoint_fails_with_a_line_not_a_traceback() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REALTIME_", "OPENAI_"))}
    env.update(
        RUNS="1",
        OPENAI_API_KEY="sk-test",
        REALTIME_URL="ws://127.0.0.1:9/v1/realtime",
        TIMEOUT_MS="2000",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "tools.smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "cannot connect" in proc.stdout and "Traceback" not in proc.stderr


# --- combo C (GPT-Live) ------------------------------------------------------------------------


def _extras(model: object, path: str = "") -> list[str]:
    """Every key the SDK's models kept in ``model_extra`` (unknown to the types), by path."""
    from pydantic import BaseModel

    found: list[str] = []
    if isinstance(model, BaseModel):
        found += [f"{path}.{k}".lstrip(".") for k in (model.model_extra or {})]
        for name in type(model).model_fields:
            found += _extras(getattr(model, name), f"{path}.{name}")
    elif isinstance(model, list):
        for i, item in enumerate(model):
            found += _extras(item, f"{path}[{i}]")
    return found


@pytest.mark.parametrize("rate", [24000, 16000])
def test_the_live_smokes_events_are_the_sdks_client_events(rate: int) -> None:
    import base64
    import json

    from openai.types.live import ClientEvent
    from pydantic import TypeAdapter

    from shared import live_dialect as live
    from tools.smoke_live import live_config

    settings = load_settings()  # REALTIME_SCHEMA=live's own settings come with live-worker
    opening = live.LiveOpening(live_config(settings, rate))
    adapter = TypeAdapter(ClientEvent)
    start = adapter.validate_python(json.loads(opening.first))
    assert start.type == "session.start" and _extras(start) == []
    assert start.session.audio is not None and start.session.audio.format is not None
    assert start.session.audio.format.rate == rate
    assert start.session.model == settings.realtime_model
    frame = adapter.validate_python(json.loads(live.append_audio(b"\x01\x00" * 160)))
    assert frame.type == "session.input_audio.append" and _extras(frame) == []
    assert base64.b64decode(frame.audio) == b"\x01\x00" * 160


def test_silence_in_the_live_output_stream_is_not_a_reply() -> None:
    from tools.smoke_live import has_sound

    assert not has_sound(bytes(960))
    assert has_sound(b"\x00\x10" * 480)


@pytest.mark.parametrize("rate", [24000, 16000])
async def test_smoke_passes_in_combo_c_against_the_emulator(
    rate: int, capsys: pytest.CaptureFixture[str]
) -> None:
    async with RealtimeEmulator() as emu:
        url = emu.live_url
        settings = load_settings(realtime_url=url, realtime_schema="live", realtime_audio_rate=rate)
        code = await smoke(settings, RunSettings(runs=2, timeout_ms=8000), "sk-test")
        sessions = list(emu.live_sessions)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2/2 consecutive runs returned audio -> PASS" in out
    assert out.count("session.started") == 2  # GPT-Live's opening, not Realtime's
    assert len(sessions) == 2


def test_make_smoke_in_combo_c_without_a_key_starts_the_emulator() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REALTIME_", "OPENAI_"))}
    env.update(RUNS="1", REALTIME_SCHEMA="live")
    proc = subprocess.run(
        [sys.executable, "-m", "tools.smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = proc.stdout.splitlines()[0]
    assert "local emulator" in first and first.endswith("/v1/live/sessions")
    assert "1/1 consecutive runs returned audio -> PASS" in proc.stdout
