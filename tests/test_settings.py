"""Configuration: defaults from the dialect report, bad values stop a service with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from shared.runtime.settings import ConfigError, load_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("REALTIME_", "OPENAI_", "REDIS_", "EDGE_", "TWILIO_")) or name in {
            "RUNS",
            "AUDIO_MS",
            "TIMEOUT_MS",
            "PUBLIC_URL",
            "METRICS_PORT",
        }:
            monkeypatch.delenv(name, raising=False)


def test_defaults_are_the_reports() -> None:
    s = load_settings()
    assert s.realtime_model == "gpt-realtime"
    assert s.realtime_url == "wss://api.openai.com/v1/realtime"
    assert s.realtime_audio_rate == 24000
    assert s.realtime_commit_frames == 50
    assert s.realtime_open_timeout_ms == 8000
    from tools.run_settings import RunSettings

    runs = RunSettings()  # the report's own variables, for its tools
    assert (runs.runs, runs.audio_ms, runs.timeout_ms) == (10, 600, 8000)
    assert s.realtime_voice == "alloy"
    assert s.realtime_turn_detection == "server_vad"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert (s.edge_host, s.edge_port) == ("0.0.0.0", 8080)
    assert s.openai_api_key is None


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REALTIME_BETA_HEADER", "1")
    monkeypatch.setenv("REALTIME_SCHEMA", "flat")
    monkeypatch.setenv("REALTIME_TURN_DETECTION", "none")
    monkeypatch.setenv("PUBLIC_URL", "https://gw.example.com/")
    s = load_settings()
    assert s.realtime_beta_header is True and s.realtime_schema == "flat"
    assert s.public_media_url() == "wss://gw.example.com/media"
    assert s.public_twiml_url() == "https://gw.example.com/twiml"


def test_secret_is_never_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-canary-123456")
    s = load_settings()
    assert "sk-canary" not in repr(s) and "sk-canary" not in str(s.model_dump())


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"REALTIME_SCHEMA": "bogus"}, "REALTIME_SCHEMA='bogus'"),
        ({"REALTIME_COMMIT_FRAMES": "-3"}, "REALTIME_COMMIT_FRAMES='-3'"),
        ({"REALTIME_AUDIO_RATE": "16000"}, "REALTIME_AUDIO_RATE=16000"),
        ({"REALTIME_AUDIO_RATE": "16000", "REALTIME_SCHEMA": "auto"}, ">= 24000"),
        ({"REALTIME_AUDIO_RATE": "48000", "REALTIME_SCHEMA": "auto"}, "falls back"),
        ({"REALTIME_AUDIO_RATE": "44100"}, "whole multiples"),
        ({"REDIS_URL": "http://nope"}, "REDIS_URL='http://nope'"),
        ({"REDIS_URL": "redis://host:port/0"}, "REDIS_URL="),
        ({"REALTIME_BETA_HEADER": "yes please"}, "REALTIME_BETA_HEADER"),
        ({"REALTIME_URL": "https://api.openai.com"}, "REALTIME_URL"),
        ({"EDGE_PORT": "70000"}, "EDGE_PORT"),
        ({"PUBLIC_URL": "https://gw.example.com/?a=1"}, "without a query"),
        ({"REALTIME_TURN_DETECTION": "maybe"}, "REALTIME_TURN_DETECTION"),
        ({"REALTIME_SCHEMA": "live", "REALTIME_AUDIO_RATE": "48000"}, "16000 or 24000"),
        ({"REALTIME_SCHEMA": "live", "REALTIME_AUDIO_RATE": "8000"}, "REALTIME_AUDIO_RATE=8000"),
        (
            {"REALTIME_SCHEMA": "live", "REALTIME_URL": "wss://x.test/v1/live/sessions?model=m"},
            "never in the URL",
        ),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert needle in str(err.value)


def test_the_rate_is_the_audio_schemas_and_flat_pcm16_is_always_24k(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REALTIME_AUDIO_RATE", "48000")
    assert load_settings().pcm_rate == 48000
    monkeypatch.setenv("REALTIME_SCHEMA", "flat")  # the report: the rate is for the audio schema
    monkeypatch.setenv("REALTIME_AUDIO_RATE", "16000")
    assert load_settings().pcm_rate == 24000


def test_the_header_follows_the_schema_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().realtime_beta_header is False
    monkeypatch.setenv("REALTIME_SCHEMA", "flat")
    s = load_settings()
    assert s.realtime_beta_header is True and s.unverified_combo() is None
    monkeypatch.setenv("REALTIME_BETA_HEADER", "")
    assert load_settings().realtime_beta_header is True
    monkeypatch.setenv("REALTIME_BETA_HEADER", "0")
    assert "REALTIME_BETA_HEADER=1" in (load_settings().unverified_combo() or "")
    monkeypatch.setenv("REALTIME_SCHEMA", "audio")
    monkeypatch.setenv("REALTIME_BETA_HEADER", "1")
    assert "REALTIME_BETA_HEADER=0" in (load_settings().unverified_combo() or "")
    monkeypatch.setenv("REALTIME_SCHEMA", "auto")
    assert load_settings().unverified_combo() is None  # auto negotiates either combo


def test_a_service_refuses_a_pair_outside_the_reports_combos() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
    env.update(REALTIME_SCHEMA="flat", REALTIME_BETA_HEADER="0")
    proc = subprocess.run(
        [sys.executable, "-m", "services.realtime_worker"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "REALTIME_SCHEMA=flat needs REALTIME_BETA_HEADER=1" in proc.stderr


@pytest.mark.parametrize(
    "module", ["services.twilio_edge", "services.transcoder", "services.realtime_worker"]
)
def test_every_service_exits_2_with_one_line_and_no_traceback(module: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
    env["REALTIME_SCHEMA"] = "bogus"
    proc = subprocess.run(
        [sys.executable, "-m", module],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "REALTIME_SCHEMA='bogus'" in lines[0] and "Traceback" not in proc.stderr
    assert "'audio', 'flat', 'auto' or 'live'" in lines[0]


# --- secure by default: the edge and Twilio's signatures ----------------------------------------

LIVE_KEY = "sk-canary-live-123456"


@pytest.mark.parametrize(
    ("env", "refused"),
    [
        ({"OPENAI_API_KEY": LIVE_KEY}, True),  # the live API, no secret: anyone could talk to it
        ({"OPENAI_API_KEY": LIVE_KEY, "TWILIO_AUTH_TOKEN": "0123456789abcdef"}, False),
        ({"OPENAI_API_KEY": LIVE_KEY, "TWILIO_SHARED_KEY_SECRET": "0123456789abcdef"}, False),
        ({"OPENAI_API_KEY": LIVE_KEY, "TWILIO_SIGNATURES": "off"}, False),  # said explicitly
        ({}, False),  # no key: the emulator, open as make run has it
        (
            {"OPENAI_API_KEY": LIVE_KEY, "REALTIME_URL": "ws://127.0.0.1:8765/v1/realtime"},
            False,
        ),  # a key with the local emulator
        ({"TWILIO_SIGNATURES": "on"}, True),  # a secret asked for whatever the model
    ],
)
def test_the_edge_refuses_to_start_open_to_the_live_api(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], refused: bool
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    problem = load_settings().unsigned_edge()
    assert (problem is not None) == refused, problem
    if problem:
        assert "TWILIO_AUTH_TOKEN" in problem and "TWILIO_SHARED_KEY_SECRET" in problem


def test_signatures_off_disables_verification_even_with_a_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "0123456789abcdef")
    assert load_settings().verifies_signatures
    monkeypatch.setenv("TWILIO_SIGNATURES", "off")
    assert not load_settings().verifies_signatures
    monkeypatch.setenv("TWILIO_SIGNATURES", "sometimes")
    with pytest.raises(ConfigError, match="TWILIO_SIGNATURES"):
        load_settings()


def test_the_edge_process_exits_2_naming_the_variables_when_open_to_the_live_api() -> None:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("REALTIME_", "OPENAI_", "TWILIO_"))
    }
    env.update(OPENAI_API_KEY=LIVE_KEY, REDIS_URL="redis://127.0.0.1:1/0", EDGE_PORT="0")
    proc = subprocess.run(
        [sys.executable, "-m", "services.twilio_edge"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for name in ("OPENAI_API_KEY", "TWILIO_AUTH_TOKEN", "TWILIO_SHARED_KEY_SECRET"):
        assert name in lines[0]
    assert "TWILIO_SIGNATURES=off" in lines[0] and LIVE_KEY not in proc.stderr + proc.stdout


def test_live_defaults_its_own_endpoint_and_model_and_takes_16_or_24_khz(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REALTIME_SCHEMA", "live")
    s = load_settings()
    assert s.realtime_url == "wss://api.openai.com/v1/live/sessions"
    assert s.realtime_model == "gpt-live-1.1"
    assert s.realtime_beta_header is False and s.unverified_combo() is None
    assert s.pcm_rate == 24000
    monkeypatch.setenv("REALTIME_AUDIO_RATE", "16000")
    monkeypatch.setenv("REALTIME_MODEL", "gpt-live-1")
    monkeypatch.setenv("REALTIME_URL", "ws://127.0.0.1:9/v1/live/sessions")
    s = load_settings()
    assert (s.pcm_rate, s.realtime_model, s.realtime_url) == (
        16000,
        "gpt-live-1",
        "ws://127.0.0.1:9/v1/live/sessions",
    )
    config = s.live_config()
    assert (config.model, config.rate, config.delegation_model) == (
        "gpt-live-1",
        16000,
        "gpt-5.4-mini",
    )
    monkeypatch.setenv("REALTIME_BETA_HEADER", "1")
    assert "REALTIME_BETA_HEADER=0" in (load_settings().unverified_combo() or "")


def test_a_bad_live_rate_stops_the_worker_with_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
    env.update(REALTIME_SCHEMA="live", REALTIME_AUDIO_RATE="22050")
    proc = subprocess.run(
        [sys.executable, "-m", "services.realtime_worker"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "16000 or 24000" in lines[0], proc.stderr
