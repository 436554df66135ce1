"""The agent file: every key checked, one line naming the file, the key and what is allowed, and
every service that reads it refusing to start on a bad one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.agent import AgentFileError, load_agent_file, parse_agent
from shared.runtime.settings import load_settings
from tests.conftest import ROOT

EXAMPLE = ROOT / "agents" / "example.toml"


def test_the_example_file_is_good_and_layers_over_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = load_agent_file(str(EXAMPLE))
    assert [t.name for t in agent.tools] == ["lookup_order", "hang_up", "transfer_to_human"]
    monkeypatch.setenv("REALTIME_VOICE", "verse")
    monkeypatch.setenv("REALTIME_GREETING", "from the environment")
    monkeypatch.setenv("REALTIME_TRANSCRIPTION_MODEL", "gpt-4o-transcribe")
    settings = load_settings(agent_file=str(EXAMPLE))
    config = settings.session_config()
    assert config.voice == "alloy"  # the file over the environment
    assert settings.greeting.startswith("Hello, this is Example Shop")
    assert config.transcription_model == "whisper-1"
    assert config.turn_knobs == {
        "silence_duration_ms": 500,
        "prefix_padding_ms": 300,
        "threshold": 0.5,
    }
    # ... and a call's <Parameter>s over the file.
    assert config.with_overrides({"voice": "marin"}).voice == "marin"
    # Without a file, the environment as before.
    plain = load_settings().session_config()
    assert plain.voice == "verse" and plain.tools == ()


def test_a_transfer_with_destinations_declares_the_names_as_an_enum() -> None:
    agent = load_agent_file(str(EXAMPLE))
    transfer = agent.tool("transfer_to_human")
    assert transfer is not None
    assert transfer.parameters["properties"]["destination"]["enum"] == ["sales", "support"]
    assert transfer.parameters["required"] == ["destination"]
    assert transfer.destination({"destination": "sales"}) == "+15550100"
    assert transfer.destination({"destination": "nobody"}) is None


GOOD_TOOL = {"name": "t", "description": "d", "url": "https://tools.example.com/t"}


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"vioce": "alloy"}, "vioce: unknown key"),
        ({"voice": "Robert'); drop"}, "voice: must be a voice name"),
        ({"noise_reduction": "loud"}, "noise_reduction: must be near_field, far_field or off"),
        ({"turn_detection": {"type": "maybe"}}, "turn_detection.type"),
        ({"turn_detection": {"type": "semantic_vad", "threshold": 0.5}}, "not a knob"),
        ({"turn_detection": {"eagerness": "wild", "type": "semantic_vad"}}, "eagerness"),
        ({"tools": [{**GOOD_TOOL, "name": "bad name!"}]}, "tools[0].name: must match"),
        ({"tools": [GOOD_TOOL, GOOD_TOOL]}, "declared twice"),
        ({"tools": [{"name": "t", "description": "d"}]}, "exactly one of url"),
        (
            {"tools": [{**GOOD_TOOL, "action": "hang_up"}]},
            "exactly one of url",
        ),
        ({"tools": [{**GOOD_TOOL, "url": "ftp://x.example.com"}]}, "tools.t.url: must be an http"),
        (
            {"tools": [{**GOOD_TOOL, "parameters": {"type": "object", "properties": 3}}]},
            "tools.t.parameters: not a valid JSON Schema",
        ),
        ({"tools": [{**GOOD_TOOL, "parameters": {"type": "string"}}]}, "of an object"),
        ({"tools": [{**GOOD_TOOL, "timeout_ms": 0}]}, "timeout_ms"),
        ({"tools": [{**GOOD_TOOL, "colour": "red"}]}, "tools[0].colour: unknown key"),
        ({"tools": [{"name": "x", "action": "transfer", "to": "555-0100"}]}, "E.164"),
        (
            {"tools": [{"name": "x", "action": "transfer", "destinations": {"a": "nope"}}]},
            "destinations.a",
        ),
        ({"tools": [{"name": "x", "action": "transfer"}]}, "exactly one of to or destinations"),
        ({"tools": [{"name": "x", "action": "dance"}]}, "must be hang_up or transfer"),
        ({"tools": [{"name": "x", "action": "hang_up", "to": "+15550100"}]}, "takes no to"),
    ],
)
def test_a_bad_agent_file_is_refused_naming_the_key(data: dict, needle: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(AgentFileError) as err:
        parse_agent(data, "AGENT_FILE=agent.toml")
    assert needle in str(err.value) and "AGENT_FILE=agent.toml" in str(err.value)


@pytest.mark.parametrize(
    "module",
    [
        "services.twilio_edge",
        "services.transcoder",
        "services.realtime_worker",
        "services.tool_runner",
    ],
)
def test_every_service_refuses_to_start_on_a_bad_agent_file(module: str, tmp_path: Path) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text(
        '[[tools]]\nname = "lookup"\nurl = "https://x.example.com"\naction = "hang_up"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REALTIME_", "OPENAI_"))}
    env.update(AGENT_FILE=str(bad), REDIS_URL="redis://127.0.0.1:1/0")
    proc = subprocess.run(
        [sys.executable, "-m", module],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert str(bad) in lines[0] and "tools.lookup" in lines[0] and "exactly one of url" in lines[0]


def test_not_toml_and_missing_files_are_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("voice = \n")
    with pytest.raises(AgentFileError, match="not valid TOML"):
        load_agent_file(str(broken))
    with pytest.raises(AgentFileError, match="cannot be read"):
        load_agent_file(str(tmp_path / "missing.toml"))
