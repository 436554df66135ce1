"""Remote MCP servers the model may call server-side (the agent file's ``[[mcp_servers]]``).

Pure: a parsed table in, a checked :class:`McpServer` out (or the agent file's error naming the
key), and the server as the GA ``session.tools`` declares it (``{"type": "mcp", ...}``). The
file names each header's value as ``env:NAME``: the value is read from the environment at start
and never written in the file, a log line or a repr.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

LABEL_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ENV_REF_RE = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]*)$")
HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")  # an HTTP token
_KEYS = {"label", "url", "description", "allowed_tools", "require_approval", "approve", "headers"}
Approval = Literal["never", "always"]
Fail = Callable[[str, str], Exception]


@dataclass(frozen=True, slots=True)
class McpServer:
    """One remote MCP server. With ``require_approval = "always"`` the model asks before each
    call; the gateway approves the tools named in ``approve`` and refuses the rest."""

    label: str
    url: str
    description: str = ""
    allowed_tools: tuple[str, ...] | None = None  # None: every tool the server lists
    require_approval: Approval = "always"
    approve: frozenset[str] = frozenset()
    # Resolved from the environment at start; kept out of repr (they are credentials).
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    def declaration(self) -> dict[str, Any]:
        """The server as GA ``session.tools`` declares it."""
        tool: dict[str, Any] = {
            "type": "mcp",
            "server_label": self.label,
            "server_url": self.url,
            "require_approval": self.require_approval,
        }
        if self.description:
            tool["server_description"] = self.description
        if self.allowed_tools is not None:
            tool["allowed_tools"] = list(self.allowed_tools)
        if self.headers:
            tool["headers"] = dict(self.headers)
        return tool

    def approves(self, tool_name: str) -> bool:
        """Whether the gateway answers the model's request to call ``tool_name`` with yes."""
        return self.require_approval == "never" or tool_name in self.approve


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_mcp_server(raw: Any, where: str, fail: Fail, environ: Mapping[str, str]) -> McpServer:
    """One ``[[mcp_servers]]`` table; raises what ``fail(key, allowed)`` makes."""
    if not isinstance(raw, dict):
        raise fail(where, "must be a table")
    for key in raw:
        if key not in _KEYS:
            raise fail(f"{where}.{key}", f"unknown key; allowed: {', '.join(sorted(_KEYS))}")
    label = raw.get("label")
    if not isinstance(label, str) or not LABEL_RE.fullmatch(label):
        raise fail(f"{where}.label", "must match ^[A-Za-z0-9_-]{1,64}$")
    where = f"mcp_servers.{label}"
    url = raw.get("url")
    if not isinstance(url, str):
        raise fail(f"{where}.url", "must be an https:// URL with a host")
    parts = urlsplit(url)
    host = parts.hostname
    if not host or parts.scheme not in ("https", "http"):
        raise fail(f"{where}.url", "must be an https:// URL with a host")
    if parts.scheme == "http" and not is_loopback(host):
        raise fail(f"{where}.url", "must be https:// (http:// only for a loopback host)")
    description = raw.get("description", "")
    if not isinstance(description, str) or len(description) > 1024:
        raise fail(f"{where}.description", "must be a string of at most 1024 characters")
    allowed = raw.get("allowed_tools")
    if allowed is not None and not _names(allowed):
        raise fail(f"{where}.allowed_tools", "must be an array of tool names")
    approval = raw.get("require_approval", "always")
    if approval not in ("never", "always"):
        raise fail(f"{where}.require_approval", "must be never or always")
    approve = raw.get("approve", [])
    if not _names(approve):
        raise fail(f"{where}.approve", "must be an array of tool names")
    if approve and approval != "always":
        raise fail(f"{where}.approve", 'only with require_approval = "always"')
    if allowed is not None and (stray := sorted(set(approve) - set(allowed))):
        raise fail(f"{where}.approve", f"{', '.join(stray)} not in allowed_tools")
    return McpServer(
        label,
        url,
        description,
        tuple(allowed) if allowed is not None else None,
        approval,
        frozenset(approve),
        _headers(raw.get("headers", {}), f"{where}.headers", fail, environ),
    )


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, str) and LABEL_RE.fullmatch(v) for v in value
    )


def _headers(raw: Any, where: str, fail: Fail, environ: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise fail(where, 'must be a table of Header = "env:NAME"')
    headers: dict[str, str] = {}
    for name, ref in raw.items():
        if not HEADER_NAME_RE.fullmatch(name):
            raise fail(f"{where}.{name}", "is not an HTTP header name")
        match = ENV_REF_RE.fullmatch(ref) if isinstance(ref, str) else None
        if match is None:
            # Never echo the value: it may be the very secret that must not be in the file.
            raise fail(
                f"{where}.{name}",
                'must name an environment variable ("env:NAME"), never hold the value itself',
            )
        value = environ.get(match.group(1))
        if not value:
            raise fail(f"{where}.{name}", f"the environment variable {match.group(1)} is not set")
        headers[name] = value
    return headers


# --- a call's MCP calls: approvals answered, each call recorded ---------------------------------


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """The model asks to call ``name`` on ``server_label`` (an ``mcp_approval_request`` item)."""

    item_id: str
    server_label: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class McpCallItem:
    """An ``mcp_call`` item as ``response.done`` lists it: the server ran it (or failed to)."""

    item_id: str
    server_label: str
    name: str
    arguments: str
    output: str | None
    error: str | None


@dataclass(slots=True)
class CallMcp:
    """One call's MCP calls, across its sessions. Pure: events in, what to do out.

    Approval requests are answered at once from the agent file (:meth:`McpServer.approves`);
    the model goes on only with a new ``response.create``, which waits for the response that
    asked to end (the live API refuses a second active response). Each call is recorded once,
    with its duration from ``response.mcp_call.in_progress`` to the ``response.done`` that
    lists it."""

    servers: Mapping[str, McpServer]
    started_us: dict[str, int] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)
    recorded: set[str] = field(default_factory=set)
    continue_after_response: bool = False

    def approval(self, request: ApprovalRequest) -> tuple[dict[str, Any] | None, dict[str, str]]:
        """The ``mcp_approval_response`` item to send (``None``: already answered) and the event
        recording the decision (an ``mcp_call`` event with outcome ``approved`` or ``refused``)."""
        if request.item_id in self.answered:
            return None, {}
        self.answered.add(request.item_id)
        server = self.servers.get(request.server_label)
        approve = server is not None and server.approves(request.name)
        self.continue_after_response = True
        item: dict[str, Any] = {
            "type": "mcp_approval_response",
            "id": f"apr_{request.item_id}"[:64],
            "approval_request_id": request.item_id,
            "approve": approve,
        }
        if not approve:
            item["reason"] = "not in the agent file's approve list"
        record = {
            "item_id": request.item_id,
            "server": request.server_label,
            "name": request.name,
            "arguments": request.arguments[:2000],
            "outcome": "approved" if approve else "refused",
        }
        return item, record

    def in_progress(self, item_id: str, now_us: int) -> None:
        self.started_us.setdefault(item_id, now_us)

    def done(self, calls: tuple[McpCallItem, ...], now_us: int) -> list[dict[str, str]]:
        """The ``mcp_call`` events of a response's finished calls (each recorded once)."""
        out = []
        for call in calls:
            if call.item_id in self.recorded:
                continue
            self.recorded.add(call.item_id)
            started = self.started_us.pop(call.item_id, None)
            record = {
                "item_id": call.item_id,
                "server": call.server_label,
                "name": call.name,
                "arguments": call.arguments[:2000],
                "outcome": "error" if call.error else "ok",
                "output": (call.output or "")[:2000],
            }
            if call.error:
                record["error"] = call.error[:500]
            if started is not None:
                record["duration_ms"] = str(max(0, now_us - started) // 1000)
            out.append(record)
        return out

    def continue_now(self) -> bool:
        """Whether a ``response.create`` is owed now that no response is active (after an
        approval the model waits for one)."""
        owed, self.continue_after_response = self.continue_after_response, False
        return owed


@dataclass(frozen=True, slots=True)
class McpCallStarted:
    """``response.mcp_call.in_progress``: the server began running an MCP call."""

    item_id: str
