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
    async with RealtimeEmulator() as emu:
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
    async with RealtimeEmulator(beta_disabled=True) as emu:
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
