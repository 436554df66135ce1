"""Remote MCP servers in the emulator: a scripted server list stands for the servers a session
declares (``{"type": "mcp", "server_label", "server_url", ...}``), and scripted calls say which
of the caller's turns makes which call.

What the live API does, as the GA types model it: on ``session.update`` the server lists each
declared server's tools (``mcp_list_tools.in_progress`` / ``completed``, or ``failed`` for a
server it cannot reach, around an ``mcp_list_tools`` item); a response that calls a tool runs it
server-side (``response.output_item.added`` of an ``mcp_call`` item,
``response.mcp_call_arguments.delta`` / ``done``, ``response.mcp_call.in_progress``, then
``completed`` or ``failed``, ``response.output_item.done``) and speaks its result. Under
``require_approval = "always"`` the response carries an ``mcp_approval_request`` item instead,
and the call runs in the next response once the client answered it with an
``mcp_approval_response`` item that approves it (a refusal: the next response says so).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Send = Callable[[dict[str, Any]], Awaitable[None]]
_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}_mcp{next(_ids):06d}"


@dataclass(frozen=True, slots=True)
class ScriptedMcpTool:
    name: str
    output: str | None = None  # what the tool answers
    error: str | None = None  # or how it fails (response.mcp_call.failed)


@dataclass(frozen=True, slots=True)
class ScriptedMcpServer:
    """A server the emulator answers for, found by its ``server_url``."""

    url: str
    tools: tuple[ScriptedMcpTool, ...] = ()

    def tool(self, name: str) -> ScriptedMcpTool | None:
        return next((t for t in self.tools if t.name == name), None)

    @classmethod
    def parse(cls, spec: str) -> ScriptedMcpServer:
        """The CLI's ``--mcp-server JSON``: ``{"url": URL, "tools": [{"name": NAME, "output":
        TEXT} | {"name": NAME, "error": TEXT}, ...]}``; ValueError naming what is wrong."""
        want = '--mcp-server wants {"url": URL, "tools": [{"name": NAME, "output": TEXT}]}'
        try:
            value = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{want}, got {spec!r} (not JSON: {exc.msg})") from None
        if not isinstance(value, dict) or not isinstance(value.get("url"), str):
            raise ValueError(f"{want}, got {spec!r}")
        if set(value) - {"url", "tools"}:
            raise ValueError(f"--mcp-server: unknown keys {sorted(set(value) - {'url', 'tools'})}")
        tools = value.get("tools", [])
        if not isinstance(tools, list):
            raise ValueError(f"{want}, got {spec!r}")
        parsed: list[ScriptedMcpTool] = []
        for tool in tools:
            if (
                not isinstance(tool, dict)
                or not isinstance(tool.get("name"), str)
                or set(tool) - {"name", "output", "error"}
                or not all(isinstance(tool.get(k, ""), str) for k in ("output", "error"))
                or ("output" in tool and "error" in tool)
            ):
                raise ValueError(f"--mcp-server: bad tool {tool!r} (name, and output or error)")
            parsed.append(ScriptedMcpTool(tool["name"], tool.get("output"), tool.get("error")))
        return cls(value["url"], tuple(parsed))


@dataclass(frozen=True, slots=True)
class ScriptedMcpCall:
    """The caller's turn (as :class:`ScriptedToolCall` counts them) whose answer calls ``name``
    on the server declared with ``server_label``."""

    turn: int
    server_label: str
    name: str
    arguments: dict[str, Any]

    @classmethod
    def parse(cls, spec: str) -> ScriptedMcpCall:
        """The CLI's ``--mcp-call N:LABEL:NAME:JSON``; ValueError naming what is wrong."""
        turn, _, rest = spec.partition(":")
        label, _, rest = rest.partition(":")
        name, sep, args = rest.partition(":")
        if not (sep and turn.isdigit() and int(turn) > 0 and label and name):
            raise ValueError(f"--mcp-call wants N:LABEL:NAME:JSON (N >= 1), got {spec!r}")
        try:
            value = json.loads(args or "{}")
        except json.JSONDecodeError as exc:
            raise ValueError(f"--mcp-call's arguments are not JSON ({exc.msg}): {spec!r}") from None
        if not isinstance(value, dict):
            raise ValueError(f"--mcp-call's arguments must be a JSON object, got {spec!r}")
        return cls(int(turn), label, name, value)


@dataclass
class SessionMcp:
    """One session's MCP state: the servers it declared, the approvals asked and answered."""

    servers: list[ScriptedMcpServer]
    script: list[ScriptedMcpCall]
    declared: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> tool
    pending: dict[str, ScriptedMcpCall] = field(default_factory=dict)  # approval id -> call
    approved: list[ScriptedMcpCall] = field(default_factory=list)  # to run in the next response
    refused: list[ScriptedMcpCall] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)  # every mcp_call item run

    def server_for(self, label: str) -> ScriptedMcpServer | None:
        tool = self.declared.get(label)
        url = tool.get("server_url") if tool else None
        return next((s for s in self.servers if s.url == url), None)

    async def declare(self, tools: list[dict[str, Any]], send: Send) -> None:
        """A session.update's tools: list the tools of each newly declared MCP server."""
        for tool in tools:
            if tool.get("type") != "mcp" or tool.get("server_label") in self.declared:
                continue
            label = str(tool.get("server_label"))
            self.declared[label] = tool
            server = self.server_for(label)
            item_id = _id("mcpl")
            await send({"type": "mcp_list_tools.in_progress", "item_id": item_id})
            if server is None:
                await send({"type": "mcp_list_tools.failed", "item_id": item_id})
                continue
            allowed = tool.get("allowed_tools")
            listed = [
                {"name": t.name, "input_schema": {"type": "object"}}
                for t in server.tools
                if not isinstance(allowed, list) or t.name in allowed
            ]
            item = {"id": item_id, "type": "mcp_list_tools", "server_label": label}
            await send({"type": "mcp_list_tools.completed", "item_id": item_id})
            await send(
                {
                    "type": "conversation.item.done",
                    "previous_item_id": None,
                    "item": {**item, "tools": listed},
                }
            )

    def answer(self, item: dict[str, Any]) -> bool:
        """A client's ``mcp_approval_response`` item; ``False`` when it answers nothing asked."""
        call = self.pending.pop(str(item.get("approval_request_id")), None)
        if call is None:
            return False
        (self.approved if item.get("approve") is True else self.refused).append(call)
        return True

    def plan(self, turn: int) -> tuple[list[ScriptedMcpCall], list[ScriptedMcpCall]]:
        """What a response answering ``turn`` (0: no caller turn) does: the calls it runs now
        (approved earlier, or needing no approval) and those it asks approval for."""
        run, ask = self.approved, list[ScriptedMcpCall]()
        self.approved = []
        for call in self.script:
            if not turn or call.turn != turn or call.server_label not in self.declared:
                continue
            tool = self.declared[call.server_label]
            allowed = tool.get("allowed_tools")
            if isinstance(allowed, list) and call.name not in allowed:
                continue
            (ask if tool.get("require_approval", "always") == "always" else run).append(call)
        return run, ask

    def take_refusals(self) -> list[ScriptedMcpCall]:
        refused, self.refused = self.refused, []
        return refused

    async def ask(self, call: ScriptedMcpCall, response_id: str, send: Send) -> dict[str, Any]:
        """An ``mcp_approval_request`` output item, sent; returns it for response.done."""
        item = {
            "id": _id("mcpr"),
            "type": "mcp_approval_request",
            "server_label": call.server_label,
            "name": call.name,
            "arguments": json.dumps(call.arguments),
        }
        self.pending[item["id"]] = call
        base = {"response_id": response_id, "output_index": 0}
        await send({"type": "response.output_item.added", **base, "item": item})
        await send({"type": "response.output_item.done", **base, "item": item})
        await send({"type": "conversation.item.done", "previous_item_id": None, "item": item})
        return item

    async def run(
        self,
        call: ScriptedMcpCall,
        response_id: str,
        send: Send,
        pause: Callable[[], Awaitable[None]],
    ) -> dict[str, Any]:
        """Run one call on its scripted server, streaming its events; returns the finished
        ``mcp_call`` item."""
        server = self.server_for(call.server_label)
        tool = server.tool(call.name) if server else None
        arguments = json.dumps(call.arguments)
        item: dict[str, Any] = {
            "id": _id("mcpc"),
            "type": "mcp_call",
            "server_label": call.server_label,
            "name": call.name,
            "arguments": "",
        }
        ids = {"item_id": item["id"], "output_index": 0}
        await send(
            {"type": "response.output_item.added", "response_id": response_id, **ids, "item": item}
        )
        await send(
            {
                "type": "response.mcp_call_arguments.delta",
                "response_id": response_id,
                **ids,
                "delta": arguments,
            }
        )
        await send(
            {
                "type": "response.mcp_call_arguments.done",
                "response_id": response_id,
                **ids,
                "arguments": arguments,
            }
        )
        await send({"type": "response.mcp_call.in_progress", **ids})
        await pause()  # the server's round trip to the MCP server
        item["arguments"] = arguments
        if tool is None or tool.error is not None:
            message = tool.error if tool is not None and tool.error else f"no tool {call.name}"
            item["error"] = {"type": "tool_execution_error", "message": message}
            await send({"type": "response.mcp_call.failed", **ids})
        else:
            item["output"] = tool.output or ""
            await send({"type": "response.mcp_call.completed", **ids})
        await send(
            {"type": "response.output_item.done", "response_id": response_id, **ids, "item": item}
        )
        self.calls.append(item)
        return item
