"""``make run``'s programs (services/launch.py): what each of supervisord's programs execs, or
why it is not needed, without starting anything (the exec is recorded instead)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from services import launch


@pytest.fixture
def execs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[list[str], dict[str, str]]]]:
    """The execs asked for; ``program`` writes its environment into ``os.environ`` (it is about to
    exec), so that is put back afterwards."""
    saved = dict(os.environ)
    recorded: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(launch, "_exec", lambda argv, env: recorded.append((argv, env)))
    for name in ("OPENAI_API_KEY", "REALTIME_URL", "AGENT_FILE", "RECORDINGS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("METRICS_PORT_BASE", "9100")
    monkeypatch.delenv("METRICS_PORT", raising=False)
    monkeypatch.delenv("CONSUMER_NAME", raising=False)
    yield recorded
    os.environ.clear()
    os.environ.update(saved)


def test_the_edge_and_the_console(execs: list[tuple[list[str], dict[str, str]]]) -> None:
    launch.program("edge", 0)
    launch.program("console", 0)
    (edge_argv, edge_env), (console_argv, _) = execs
    assert edge_argv == [sys.executable, "-m", "services.twilio_edge"]
    assert edge_env["METRICS_PORT"] == "9120"
    assert console_argv == [sys.executable, "-m", "services.console"]


def test_a_stage_instance_gets_its_port_and_name_or_is_not_needed(
    execs: list[tuple[list[str], dict[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_PROCESSES", "2")
    launch.program("worker", 1)
    launch.program("worker", 2)  # beyond WORKER_PROCESSES: nothing
    ((argv, env),) = execs
    assert argv == [sys.executable, "-m", "services.realtime_worker"]
    assert env["METRICS_PORT"] == "9111" and env["CONSUMER_NAME"].endswith("-worker-1")


def test_the_local_demo_starts_the_emulator_and_the_tool_server(
    execs: list[tuple[list[str], dict[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMULATOR_PORT", "8765")
    launch.program("emulator", 0)
    launch.program("tool_server", 0)
    (emulator, _), (tools, _) = execs
    assert emulator[:3] == [sys.executable, "-m", "sim.openai_realtime"]
    assert emulator[emulator.index("--port") + 1] == "8765" and "--tool-call" in emulator
    assert tools[:3] == [sys.executable, "-m", "sim.tool_server"]


def test_programs_not_needed_and_unknown_ones(
    execs: list[tuple[list[str], dict[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    launch.program("recorder", 0)  # RECORDINGS_DIR unset: recording is off
    monkeypatch.setenv("REDIS_URL", "redis://redis.example.invalid:6379/0")
    launch.program("redis", 0)  # a remote Redis: no local redis-server
    assert execs == []
    with pytest.raises(SystemExit) as stopped:
        launch.program("nonsense", 0)
    assert stopped.value.code == 2


@pytest.mark.parametrize(
    ("schema", "path"),
    [("audio", "/v1/realtime"), ("live", "/v1/live/sessions"), ("", "/v1/realtime")],
)
def test_without_a_key_every_program_is_pointed_at_the_emulators_api_for_its_schema(
    schema: str, path: str
) -> None:
    env = launch.default_environment({"REALTIME_SCHEMA": schema, "EMULATOR_PORT": "8765"})
    assert env["REALTIME_URL"] == f"ws://127.0.0.1:8765{path}"
