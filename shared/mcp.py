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
