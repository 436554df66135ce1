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


async def test_a_disabled_beta_shape_fails_flat_and_auto_still_works(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with RealtimeEmulator() as emu:  # refuses the beta shape, as the live API does
        settings = load_settings(
            realtime_url=emu.url, realtime_schema="flat", realtime_beta_header=True
        )
        assert await smoke(settings, RunSettings(runs=1), "sk-test") == 1
        assert "beta_api_shape_disabled" in capsys.readouterr().out
        auto = load_settings(realtime_url=emu.url, realtime_schema="auto")
        assert await smoke(auto, RunSettings(runs=1), "sk-test") == 0


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
