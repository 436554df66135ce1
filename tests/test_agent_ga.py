"""The agent file's GA keys (model, reasoning, parallel tool calls, truncation, remote MCP
servers, semantic VAD's eagerness, the idle timeout): each one's happy path and a bad value, and
every session.update / response.create they shape validating against the official GA types with
nothing left in model_extra."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from shared.agent import AgentFileError, is_reasoning_model, parse_agent
from shared.realtime_dialect import Combo, RealtimeDialect
from shared.runtime.settings import ConfigError, load_settings
from tests.test_realtime_dialect import unknown_keys

openai_types = pytest.importorskip("openai.types.realtime")
GA_CLIENT = TypeAdapter(openai_types.RealtimeClientEvent)

SRC = "AGENT_FILE=agent.toml"
CRM = {
    "label": "crm",
    "url": "https://crm.example.com/mcp",
    "allowed_tools": ["find_customer", "create_ticket"],
    "require_approval": "always",
    "approve": ["find_customer"],
    "headers": {"Authorization": "env:CRM_TOKEN"},
}
ENV = {"CRM_TOKEN": "Bearer s3cret-token"}


def parse(data: dict[str, Any], environ: dict[str, str] | None = None) -> Any:
    return parse_agent(data, SRC, ENV if environ is None else environ)


def refused(data: dict[str, Any], needle: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(AgentFileError) as err:
        parse(data, environ)
    message = str(err.value)
    assert needle in message and SRC in message and "\n" not in message, message
    return message


# --- each key: its happy path and a bad value -------------------------------------------------


def test_model_any_gpt_realtime_name() -> None:
    assert parse({"model": "gpt-realtime-mini"}).model == "gpt-realtime-mini"
    assert parse({"model": "gpt-realtime-2.1"}).model == "gpt-realtime-2.1"
    refused({"model": "gpt-4o"}, "model: must be a gpt-realtime model name")
    refused({"model": 2}, "model: must be a gpt-realtime model name")


def test_reasoning_models_are_told_apart() -> None:
    for name in ("gpt-realtime-1.5", "gpt-realtime-2", "gpt-realtime-2.1", "gpt-realtime-2.1-mini"):
        assert is_reasoning_model(name)
    assert is_reasoning_model("gpt-realtime-2-2026-03-01")  # a dated snapshot
    for name in ("gpt-realtime", "gpt-realtime-mini", "gpt-realtime-2025-08-28", "gpt-realtime-20"):
        assert not is_reasoning_model(name)


def test_reasoning_effort_only_with_a_reasoning_model() -> None:
    agent = parse({"model": "gpt-realtime-2", "reasoning_effort": "low"})
    assert agent.reasoning_effort == "low"
    refused({"model": "gpt-realtime-2", "reasoning_effort": "max"}, "reasoning_effort: must be")
    message = refused(
        {"model": "gpt-realtime", "reasoning_effort": "low"}, "reasoning_effort: only with"
    )
    assert "the model is gpt-realtime" in message


def test_reasoning_effort_checked_against_realtime_model_when_the_file_has_no_model(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('reasoning_effort = "high"\n')
    with pytest.raises(ConfigError, match=r"reasoning_effort: only with.*REALTIME_MODEL"):
        load_settings(agent_file=str(path), realtime_model="gpt-realtime")
    config = load_settings(agent_file=str(path), realtime_model="gpt-realtime-2.1").session_config()
    assert config.reasoning_effort == "high" and config.model is None


def test_parallel_tool_calls() -> None:
    assert (
        parse({"model": "gpt-realtime-2", "parallel_tool_calls": False}).parallel_tool_calls
        is False
    )
    refused({"model": "gpt-realtime-2", "parallel_tool_calls": "yes"}, "must be true or false")
    refused({"model": "gpt-realtime-mini", "parallel_tool_calls": True}, "only with a reasoning")


@pytest.mark.parametrize("value", ["auto", "disabled", 0.8])
def test_truncation(value: Any) -> None:
    assert parse({"truncation": value}).truncation == value


@pytest.mark.parametrize("value", ["sometimes", 0.0, 1.0, 1, -0.5, True])
def test_a_bad_truncation(value: Any) -> None:
    refused({"truncation": value}, "truncation: must be auto, disabled or a retention ratio")


def test_mcp_server_resolves_its_headers_from_the_environment() -> None:
    (server,) = parse({"mcp_servers": [CRM]}).mcp_servers
    assert server.headers == {"Authorization": "Bearer s3cret-token"}
    assert "s3cret" not in repr(server)  # a credential never shows in a repr (or a log line)
    assert server.approves("find_customer") and not server.approves("create_ticket")
    assert server.declaration() == {
        "type": "mcp",
        "server_label": "crm",
        "server_url": "https://crm.example.com/mcp",
        "require_approval": "always",
        "allowed_tools": ["find_customer", "create_ticket"],
        "headers": {"Authorization": "Bearer s3cret-token"},
    }
    loopback = {"label": "local", "url": "http://127.0.0.1:9000/mcp", "require_approval": "never"}
    (local,) = parse({"mcp_servers": [loopback]}).mcp_servers
    assert local.approves("anything") and "headers" not in local.declaration()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"label": "no spaces"}, "mcp_servers[0].label: must match"),
        ({"url": "http://crm.example.com/mcp"}, "mcp_servers.crm.url: must be https://"),
        ({"url": "ftp://crm.example.com"}, "mcp_servers.crm.url: must be an https:// URL"),
        ({"require_approval": "sometimes"}, "require_approval: must be never or always"),
        ({"require_approval": "never"}, 'approve: only with require_approval = "always"'),
        ({"approve": ["delete_everything"]}, "delete_everything not in allowed_tools"),
        ({"allowed_tools": "find_customer"}, "allowed_tools: must be an array"),
        ({"colour": "red"}, "mcp_servers[0].colour: unknown key"),
        ({"headers": {"Authorization": "Bearer literal"}}, "must name an environment variable"),
        ({"headers": {"Authorization": "env:NOT_SET_HERE"}}, "NOT_SET_HERE is not set"),
    ],
)
def test_a_bad_mcp_server(change: dict[str, Any], needle: str) -> None:
    message = refused({"mcp_servers": [{**CRM, **change}]}, needle)
    assert "literal" not in message  # a header's value is never echoed


def test_mcp_labels_are_unique_and_apart_from_tool_names() -> None:
    refused({"mcp_servers": [CRM, CRM]}, "declared twice")
    tool = {"name": "crm", "action": "hang_up"}
    refused({"tools": [tool], "mcp_servers": [CRM]}, "crm: also a tool's name")


def test_eagerness_and_idle_timeout() -> None:
    semantic = parse({"turn_detection": {"type": "semantic_vad", "eagerness": "low"}})
    assert semantic.turn_detection.knobs == {"eagerness": "low"}
    idle = parse({"turn_detection": {"type": "server_vad", "idle_timeout_ms": 8000}})
    assert idle.turn_detection.knobs == {"idle_timeout_ms": 8000}
    refused({"turn_detection": {"type": "server_vad", "eagerness": "low"}}, "not a knob")
    refused({"turn_detection": {"type": "server_vad", "idle_timeout_ms": -1}}, "idle_timeout_ms")


def test_the_ga_keys_are_refused_with_the_flat_dialect(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('truncation = "auto"\n')
    with pytest.raises(ConfigError, match="truncation: only in the GA dialect"):
        load_settings(agent_file=str(path), realtime_schema="flat", realtime_beta_header=True)
    with pytest.raises(ConfigError, match="not with REALTIME_SCHEMA=live"):
        load_settings(agent_file=str(path), realtime_schema="live")


# --- what the gateway sends ----------------------------------------------------------------------

FULL = """
model = "gpt-realtime-2.1"
reasoning_effort = "low"
parallel_tool_calls = true
truncation = 0.75

[turn_detection]
type = "server_vad"
idle_timeout_ms = 6000

[[tools]]
name = "hang_up"
action = "hang_up"

[[mcp_servers]]
label = "crm"
url = "https://crm.example.com/mcp"
description = "The shop's customer records"
allowed_tools = ["find_customer"]
require_approval = "always"
approve = ["find_customer"]
headers = { Authorization = "env:CRM_TOKEN" }

[[mcp_servers]]
label = "docs"
url = "http://localhost:9000/mcp"
require_approval = "never"
"""


def test_every_ga_event_carries_the_keys_and_validates_with_nothing_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(FULL)
    monkeypatch.setenv("CRM_TOKEN", "Bearer s3cret-token")
    config = load_settings(agent_file=str(path)).session_config()
    d = RealtimeDialect.for_combo(Combo.GA, config)
    session = d.session_update()["session"]
    assert session["reasoning"] == {"effort": "low"}
    assert session["parallel_tool_calls"] is True
    assert session["truncation"] == {"type": "retention_ratio", "retention_ratio": 0.75}
    assert session["audio"]["input"]["turn_detection"]["idle_timeout_ms"] == 6000
    mcp = [t for t in session["tools"] if t["type"] == "mcp"]
    assert [t["server_label"] for t in mcp] == ["crm", "docs"]
    assert mcp[0]["headers"] == {"Authorization": "Bearer s3cret-token"}
    assert mcp[0]["server_description"] == "The shop's customer records"
    request = d.connect_request("wss://api.openai.com/v1/realtime", "gpt-realtime", "sk")
    assert request.url.endswith("?model=gpt-realtime-2.1")  # the file's model over REALTIME_MODEL
    events = [
        d.session_update(),
        d.response_create(),
        d.response_create("Say you are still on it.", out_of_band=True),
    ]
    for truncation in ("auto", "disabled"):
        other = dataclasses.replace(config, truncation=truncation, turn_knobs={"eagerness": "high"})
        other = dataclasses.replace(other, turn_detection="semantic_vad")
        update = RealtimeDialect.for_combo(Combo.GA, other).session_update()
        assert update["session"]["truncation"] == truncation
        assert update["session"]["audio"]["input"]["turn_detection"]["eagerness"] == "high"
        events.append(update)
    for event in events:
        model = GA_CLIENT.validate_python(event)
        assert unknown_keys(model) == [], (event["type"], unknown_keys(model))
        assert model.model_dump(exclude_unset=True) == event


def test_the_beta_dialect_leaves_the_ga_keys_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under REALTIME_SCHEMA=auto a session may fall back to the beta dialect, which has none of
    them: it must still be a valid beta session.update."""
    path = tmp_path / "agent.toml"
    path.write_text(FULL)
    monkeypatch.setenv("CRM_TOKEN", "x")
    config = load_settings(agent_file=str(path)).session_config()
    session = RealtimeDialect.for_combo(Combo.BETA, config).session_update()["session"]
    for key in ("reasoning", "parallel_tool_calls", "truncation"):
        assert key not in session
    assert [t["type"] for t in session["tools"]] == ["function"]
