"""The agent file (``AGENT_FILE``): one TOML file that says who the agent is and what it can do.

Pure: text in, a checked :class:`Agent` out, or :class:`AgentFileError` naming the file, the key
and what is allowed (every service that reads the file refuses to start on it). Read with the
standard library's ``tomllib``; a tool's ``parameters`` are checked against JSON Schema's own
meta-schema with ``jsonschema``.

Precedence, lowest first: built-in defaults < environment (``REALTIME_*``) < the agent file <
a call's ``<Parameter>``s. This module knows the file alone; the settings layer them.

A tool is an HTTP tool (``url``, ``parameters``, ``timeout_ms``) or an action the gateway itself
carries out (``action = "hang_up"`` or ``action = "transfer"`` with ``to`` or ``destinations``).
The GA dialect's session keys (``model``, ``reasoning_effort``, ``parallel_tool_calls``,
``truncation``) and remote MCP servers (:mod:`shared.mcp`) are checked here too.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from shared.mcp import McpServer, parse_mcp_server

TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
E164_RE = re.compile(r"^\+[1-9][0-9]{1,14}$")  # a phone number as Twilio takes it (E.164)
SIP_RE = re.compile(r"^sips?:[^\s@]+@[^\s@]+$")
DEFAULT_TOOL_TIMEOUT_MS = 8000
TurnDetectionType = Literal["server_vad", "semantic_vad", "none"]
NoiseReduction = Literal["near_field", "far_field", "off"]
MODEL_RE = re.compile(r"^gpt-realtime[a-z0-9.-]{0,48}$")
# The reasoning models (openai.types.realtime, openai 3.60), and their dated snapshots: only
# these take session.reasoning and parallel_tool_calls.
REASONING_MODELS = (
    "gpt-realtime-1.5",
    "gpt-realtime-2",
    "gpt-realtime-2.1",
    "gpt-realtime-2.1-mini",
)
_SNAPSHOT_RE = re.compile(r"^-\d{4}-\d{2}-\d{2}$")
ReasoningEffort = Literal["minimal", "low", "medium", "high", "xhigh"]
REASONING_EFFORTS = ("minimal", "low", "medium", "high", "xhigh")

_TOP_KEYS = {
    "instructions",
    "voice",
    "greeting",
    "turn_detection",
    "noise_reduction",
    "transcription_model",
    "voicemail_message",
    "tools",
    "model",
    "reasoning_effort",
    "parallel_tool_calls",
    "truncation",
    "mcp_servers",
    "analysis",
}
_TURN_KEYS = {
    "type",
    "eagerness",
    "threshold",
    "prefix_padding_ms",
    "silence_duration_ms",
    "idle_timeout_ms",
    "create_response",
    "interrupt_response",
    "idle_prompts",
    "idle_action",
}
_TOOL_KEYS = {"name", "description", "url", "parameters", "timeout_ms", "action", "to"}
_TOOL_KEYS_ALL = _TOOL_KEYS | {"destinations"}
_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


class AgentFileError(ValueError):
    """An agent file that cannot be used: the message names the file, the key and what is
    allowed."""


@dataclass(frozen=True, slots=True)
class TurnDetectionConfig:
    type: TurnDetectionType = "server_vad"
    # Only the knobs the file sets; each dialect takes the ones it has.
    knobs: Mapping[str, Any] = field(default_factory=dict)
    # The gateway's own (never sent): after idle_timeout_ms of silence the model may ask this
    # many times, then idle_action ("hang_up") ends the call after a goodbye.
    idle_prompts: int = 0
    idle_action: Literal["hang_up"] | None = None


@dataclass(frozen=True, slots=True)
class Tool:
    """One function the model may call.

    ``kind`` says who runs it: ``http`` (the tool runner POSTs to ``url``), ``hang_up`` or
    ``transfer`` (the gateway itself ends the call, or hands the caller to ``to`` or to one of
    ``destinations``, whose names the model picks as its required ``destination``).
    """

    name: str
    description: str
    kind: Literal["http", "hang_up", "transfer"]
    parameters: Mapping[str, Any]
    url: str = ""
    timeout_ms: int = DEFAULT_TOOL_TIMEOUT_MS
    to: str = ""
    destinations: Mapping[str, str] = field(default_factory=dict)

    def declaration(self) -> dict[str, Any]:
        """The tool as ``session.tools`` declares it (the same flat shape in both dialects)."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": dict(self.parameters),
        }

    def destination(self, arguments: Mapping[str, Any]) -> str | None:
        """Where a transfer goes for these arguments (``None``: not a destination we know)."""
        if self.kind != "transfer":
            return None
        if self.to:
            return self.to
        chosen = arguments.get("destination")
        return self.destinations.get(chosen) if isinstance(chosen, str) else None


@dataclass(frozen=True, slots=True)
class Agent:
    """What the agent file says; ``None`` for what it leaves to the environment."""

    instructions: str | None = None
    voice: str | None = None
    greeting: str | None = None
    turn_detection: TurnDetectionConfig | None = None
    noise_reduction: NoiseReduction | None = None
    transcription_model: str | None = None
    voicemail_message: str | None = None
    tools: tuple[Tool, ...] = ()
    model: str | None = None
    reasoning_effort: ReasoningEffort | None = None
    parallel_tool_calls: bool | None = None
    # "auto", "disabled", or a retention ratio (0 < r < 1).
    truncation: str | float | None = None
    mcp_servers: tuple[McpServer, ...] = ()
    # A JSON Schema of an object: what the model fills at the call's end for the report.
    analysis: Mapping[str, Any] | None = None

    def tool(self, name: str) -> Tool | None:
        return next((t for t in self.tools if t.name == name), None)


def is_reasoning_model(model: str) -> bool:
    """Whether ``model`` is one of :data:`REASONING_MODELS` (or a dated snapshot of one)."""
    return any(
        model == name or _SNAPSHOT_RE.fullmatch(model[len(name) :]) is not None
        for name in REASONING_MODELS
        if model.startswith(name)
    )


def reasoning_mistake(agent: Agent, default_model: str) -> str | None:
    """Why the file's reasoning keys cannot go with the model the session will use (the
    file's ``model``, else ``default_model``, i.e. ``REALTIME_MODEL``); ``None`` when they can."""
    model = agent.model or default_model
    for key, value in (
        ("reasoning_effort", agent.reasoning_effort),
        ("parallel_tool_calls", agent.parallel_tool_calls),
    ):
        if value is not None and not is_reasoning_model(model):
            return (
                f"{key}: only with a reasoning model ({', '.join(REASONING_MODELS)}); "
                f"the model is {model}"
            )
    return None


def load_agent_file(path: str) -> Agent:
    """Read and check ``path``; raises :class:`AgentFileError`. Header references
    (``env:NAME``) are resolved from this process's environment."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise AgentFileError(f"AGENT_FILE={path}: cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise AgentFileError(f"AGENT_FILE={path}: not valid TOML ({exc})") from None
    return parse_agent(data, f"AGENT_FILE={path}", os.environ)


def parse_agent(
    data: Mapping[str, Any], source: str = "agent file", environ: Mapping[str, str] | None = None
) -> Agent:
    """Check a parsed agent file; raises :class:`AgentFileError` naming ``source``.
    ``environ`` resolves MCP headers' ``env:NAME`` references (none: an empty environment)."""

    def fail(key: str, allowed: str) -> AgentFileError:
        return AgentFileError(f"{source}: {key}: {allowed}")

    for key in data:
        if key not in _TOP_KEYS:
            raise fail(key, f"unknown key; allowed: {', '.join(sorted(_TOP_KEYS))}")

    def text(key: str, limit: int) -> str | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > limit:
            raise fail(key, f"must be a string of at most {limit} characters")
        return value

    voice = text("voice", 64)
    if voice is not None and not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", voice):
        raise fail("voice", "must be a voice name such as alloy, verse or marin")
    noise = data.get("noise_reduction")
    if noise is not None and noise not in ("near_field", "far_field", "off"):
        raise fail("noise_reduction", "must be near_field, far_field or off")
    tools_raw = data.get("tools", [])
    if not isinstance(tools_raw, list):
        raise fail("tools", "must be an array of tables ([[tools]])")
    tools: list[Tool] = []
    for i, raw in enumerate(tools_raw):
        tool = _tool(raw, f"tools[{i}]", fail)
        if any(t.name == tool.name for t in tools):
            raise fail(f"tools[{i}].name", f"{tool.name!r} is declared twice; names are unique")
        tools.append(tool)
    model = data.get("model")
    if model is not None and not (isinstance(model, str) and MODEL_RE.fullmatch(model)):
        raise fail("model", "must be a gpt-realtime model name, e.g. gpt-realtime-2")
    effort = data.get("reasoning_effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        raise fail("reasoning_effort", f"must be one of {', '.join(REASONING_EFFORTS)}")
    parallel = data.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise fail("parallel_tool_calls", "must be true or false")
    servers = _mcp_servers(data.get("mcp_servers", []), fail, environ or {})
    clash = {t.name for t in tools} & {s.label for s in servers}
    if clash:
        raise fail("mcp_servers", f"{', '.join(sorted(clash))}: also a tool's name")
    agent = Agent(
        instructions=text("instructions", 16_000),
        voice=voice,
        greeting=text("greeting", 2_000),
        turn_detection=_turn_detection(data.get("turn_detection"), fail),
        noise_reduction=noise,
        transcription_model=text("transcription_model", 64),
        voicemail_message=text("voicemail_message", 2_000),
        tools=tuple(tools),
        model=model,
        reasoning_effort=effort,
        parallel_tool_calls=parallel,
        truncation=_truncation(data.get("truncation"), fail),
        mcp_servers=servers,
        analysis=_analysis(data.get("analysis"), fail),
    )
    if model is not None and (mistake := reasoning_mistake(agent, model)):
        raise AgentFileError(f"{source}: {mistake}")
    return agent


def _analysis(raw: Any, fail: Any) -> Mapping[str, Any] | None:
    if raw is None:
        return None
    check_parameters_schema(raw, "analysis", fail)
    return dict(raw)


def _truncation(raw: Any, fail: Any) -> str | float | None:
    if raw is None:
        return None
    if raw in ("auto", "disabled"):
        return str(raw)
    if isinstance(raw, float) and 0 < raw < 1:
        return raw
    raise fail("truncation", "must be auto, disabled or a retention ratio between 0 and 1 (0.8)")


def _mcp_servers(raw: Any, fail: Any, environ: Mapping[str, str]) -> tuple[McpServer, ...]:
    if not isinstance(raw, list):
        raise fail("mcp_servers", "must be an array of tables ([[mcp_servers]])")
    servers: list[McpServer] = []
    for i, table in enumerate(raw):
        server = parse_mcp_server(table, f"mcp_servers[{i}]", fail, environ)
        if any(s.label == server.label for s in servers):
            raise fail(f"mcp_servers[{i}].label", f"{server.label!r} is declared twice")
        servers.append(server)
    return tuple(servers)


def _turn_detection(raw: Any, fail: Any) -> TurnDetectionConfig | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise fail("turn_detection", "must be a table with type = server_vad | semantic_vad | none")
    for key in raw:
        if key not in _TURN_KEYS:
            raise fail(
                f"turn_detection.{key}", f"unknown key; allowed: {', '.join(sorted(_TURN_KEYS))}"
            )
    kind = raw.get("type", "server_vad")
    if kind not in ("server_vad", "semantic_vad", "none"):
        raise fail("turn_detection.type", "must be server_vad, semantic_vad or none")
    idle_prompts = raw.get("idle_prompts", 1 if "idle_action" in raw else None)
    idle_action = raw.get("idle_action")
    if (idle_prompts is not None or idle_action is not None) and "idle_timeout_ms" not in raw:
        raise fail("turn_detection.idle_action", "needs idle_timeout_ms (server_vad)")
    if idle_prompts is not None and idle_action is None:
        raise fail("turn_detection.idle_prompts", 'needs idle_action = "hang_up"')
    if idle_action is not None and idle_action != "hang_up":
        raise fail("turn_detection.idle_action", "must be hang_up")
    if idle_prompts is not None and not (
        isinstance(idle_prompts, int)
        and not isinstance(idle_prompts, bool)
        and 0 <= idle_prompts <= 10
    ):
        raise fail("turn_detection.idle_prompts", "must be a whole number from 0 to 10")
    knobs = {k: v for k, v in raw.items() if k not in ("type", "idle_prompts", "idle_action")}
    allowed = {
        "server_vad": {
            "threshold",
            "prefix_padding_ms",
            "silence_duration_ms",
            "idle_timeout_ms",
            "create_response",
            "interrupt_response",
        },
        "semantic_vad": {"eagerness", "create_response", "interrupt_response"},
        "none": set(),
    }[kind]
    for key, value in knobs.items():
        if key not in allowed:
            raise fail(
                f"turn_detection.{key}",
                f"not a knob of {kind}; allowed: {', '.join(sorted(allowed)) or 'none'}",
            )
        if key == "eagerness" and value not in ("low", "medium", "high", "auto"):
            raise fail("turn_detection.eagerness", "must be low, medium, high or auto")
        if key == "threshold" and not (
            isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1
        ):
            raise fail("turn_detection.threshold", "must be a number from 0 to 1")
        if key.endswith("_ms") and not (
            isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 600_000
        ):
            raise fail(f"turn_detection.{key}", "must be a whole number of ms from 0 to 600000")
        if key in ("create_response", "interrupt_response") and not isinstance(value, bool):
            raise fail(f"turn_detection.{key}", "must be true or false")
    return TurnDetectionConfig(kind, knobs, idle_prompts or 0, idle_action)


def _tool(raw: Any, where: str, fail: Any) -> Tool:
    if not isinstance(raw, dict):
        raise fail(where, "must be a table")
    for key in raw:
        if key not in _TOOL_KEYS_ALL:
            raise fail(
                f"{where}.{key}", f"unknown key; allowed: {', '.join(sorted(_TOOL_KEYS_ALL))}"
            )
    name = raw.get("name")
    if not isinstance(name, str) or not TOOL_NAME_RE.fullmatch(name):
        raise fail(f"{where}.name", "must match ^[A-Za-z0-9_-]{1,64}$")
    where = f"tools.{name}"
    description = raw.get("description", "")
    if not isinstance(description, str) or len(description) > 1024:
        raise fail(f"{where}.description", "must be a string of at most 1024 characters")
    has_url, action = "url" in raw, raw.get("action")
    if has_url == (action is not None):
        raise fail(where, "needs exactly one of url (an HTTP tool) or action (hang_up, transfer)")
    if has_url:
        return _http_tool(raw, name, description, where, fail)
    if action == "hang_up":
        for key in ("parameters", "to", "destinations", "timeout_ms"):
            if key in raw:
                raise fail(f"{where}.{key}", "a hang_up tool takes no " + key)
        return Tool(name, description, "hang_up", _EMPTY_PARAMETERS)
    if action == "transfer":
        return _transfer_tool(raw, name, description, where, fail)
    raise fail(f"{where}.action", "must be hang_up or transfer")


def _http_tool(raw: dict[str, Any], name: str, description: str, where: str, fail: Any) -> Tool:
    url = raw["url"]
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise fail(f"{where}.url", "must be an http:// or https:// URL with a host")
    for key in ("to", "destinations"):
        if key in raw:
            raise fail(f"{where}.{key}", "only a transfer tool has " + key)
    parameters = raw.get("parameters", _EMPTY_PARAMETERS)
    check_parameters_schema(parameters, f"{where}.parameters", fail)
    timeout = raw.get("timeout_ms", DEFAULT_TOOL_TIMEOUT_MS)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or not 100 <= timeout <= 120_000:
        raise fail(f"{where}.timeout_ms", "must be a whole number of ms from 100 to 120000")
    return Tool(name, description, "http", parameters, url=url, timeout_ms=timeout)


def _transfer_tool(raw: dict[str, Any], name: str, description: str, where: str, fail: Any) -> Tool:
    for key in ("parameters", "timeout_ms"):
        if key in raw:
            raise fail(f"{where}.{key}", "a transfer tool takes no " + key)
    to, destinations = raw.get("to"), raw.get("destinations")
    if (to is None) == (destinations is None):
        raise fail(where, "a transfer needs exactly one of to or destinations")
    if to is not None:
        if not isinstance(to, str) or not valid_destination(to):
            raise fail(f"{where}.to", "must be an E.164 number (+15550100) or a sip: URI")
        return Tool(name, description, "transfer", _EMPTY_PARAMETERS, to=to)
    if not isinstance(destinations, dict) or not destinations:
        raise fail(f"{where}.destinations", "must be a table of name = number or sip: URI")
    for label, target in destinations.items():
        if not TOOL_NAME_RE.fullmatch(label):
            raise fail(f"{where}.destinations.{label}", "names must match ^[A-Za-z0-9_-]{1,64}$")
        if not isinstance(target, str) or not valid_destination(target):
            raise fail(f"{where}.destinations.{label}", "must be an E.164 number or a sip: URI")
    parameters = {
        "type": "object",
        "properties": {"destination": {"type": "string", "enum": sorted(destinations)}},
        "required": ["destination"],
        "additionalProperties": False,
    }
    return Tool(name, description, "transfer", parameters, destinations=dict(destinations))


def valid_destination(value: str) -> bool:
    return bool(E164_RE.fullmatch(value) or SIP_RE.fullmatch(value))


def check_parameters_schema(parameters: Any, key: str, fail: Any) -> None:
    """A tool's ``parameters``: a JSON Schema (checked against its meta-schema) of an object."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    if not isinstance(parameters, dict) or parameters.get("type") != "object":
        raise fail(key, 'must be a JSON Schema of an object (type = "object")')
    try:
        Draft202012Validator.check_schema(parameters)
    except SchemaError as exc:
        raise fail(key, f"not a valid JSON Schema: {exc.message}") from None
